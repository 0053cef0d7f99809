"""CUDA check and throughput of charloop's LoRA trainer on a FLUX.1-sized, random-init
transformer (12 B parameters in bf16; ``--layers`` trims the blocks if memory or time is
short, and the report says how many were used).

1. charloop's ``train_lora`` with the FLUX family's objective (flow matching on packed
   latents) and cached conditioning (T5 token embeddings, CLIP pooled), bf16, gradient
   checkpointing: seconds per step, peak memory, finite losses, LoRA weights moved.
2. The reference: the step of diffusers' ``train_dreambooth_lora_flux.py`` without
   caches (VAE-encode the batch, CLIP and T5-XXL every step, then the transformer), same
   transformer, LoRA targets, batch and resolution, in the same run: the speed ratio and
   the memory the caches save (T5-XXL alone is 4.7 B parameters).

3. ``--plan [NAME ...]``: both, once per memory plan (bf16/fp8/nf4 frozen weights x
   adamw/adamw8bit, gradient checkpointing; all six for a bare ``--plan``) at 1024 px,
   batch 1, rank 16: peak memory and step rate beside the planner's estimate and its
   error (see ``bench/memory_plans.py``).

Usage: ``python bench/gpu_check_flux.py [--steps 6] [--batch 1] [--layers 19 38]
[--plan [bf16/adamw nf4/adamw8bit ...]]``; ``--tiny`` runs small configs on the CPU to
check the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import memory_plans  # noqa: E402
from bench.gpu_check_sdxl import peak_gib, sync  # noqa: E402
from charloop.models.consumers.base_modules import FLUX_TRANSFORMER  # noqa: E402
from charloop.models.memory_plan import Plan  # noqa: E402

TINY = dict(
    FLUX_TRANSFORMER,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=[4, 6, 6],
)


def _transformer(
    tiny: bool, layers: tuple[int, int], plan: Plan | None = None
) -> tuple[Any, torch.device, dict[str, Any]]:
    from diffusers import FluxTransformer2DModel

    from charloop.families import get_family
    from charloop.stages.train.loop import lora_config

    dev = torch.device("cpu" if tiny else "cuda")
    config = (
        TINY if tiny else dict(FLUX_TRANSFORMER, num_layers=layers[0], num_single_layers=layers[1])
    )
    torch.manual_seed(0)
    with dev:
        model = FluxTransformer2DModel.from_config(config).to(torch.bfloat16)
    model.requires_grad_(False)
    if plan is not None:
        memory_plans.quantize(model, plan.weights, dev)
    model.add_adapter(lora_config(16, 16.0, list(get_family("flux").default_targets)))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.enable_gradient_checkpointing()
    return model, dev, config


def charloop_check(
    steps: int, batch: int, tiny: bool, layers: tuple[int, int], plan: Plan | None = None
) -> dict[str, Any]:
    """charloop's trainer with the FLUX objective and cached conditioning."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from charloop.families import get_family
    from charloop.params.train import TrainParams
    from charloop.stages.train.checkpoint import Checkpointer
    from charloop.stages.train.data import EncodedDataset
    from charloop.stages.train.loop import TrainModels, train_lora

    model, _, config = _transformer(tiny, layers, plan)
    family = get_family("flux")
    memory = {"weights": plan.weights, "optimizer": plan.optimizer} if plan else {}
    tp = TrainParams(
        max_train_steps=steps,
        batch_size=batch,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        learning_rate=1e-4,
        memory=memory,
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision="bf16", cpu=tiny)
    n, side, tokens = batch * 4, 8 if tiny else 128, 64 if tiny else 512
    data = EncodedDataset(
        ids=[f"img{i}" for i in range(n)],
        latents=torch.randn(n, 16, side, side),
        input_ids=[torch.zeros(n, 77, dtype=torch.long)],
        text={
            "hidden": torch.randn(n, tokens, int(config["joint_attention_dim"])),
            "pooled": torch.randn(n, int(config["pooled_projection_dim"])),
        },
    )
    objective = family.objective("", None, None, tp)
    models = TrainModels(denoiser=model, noise_scheduler=None, family=family, objective=objective)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = sync()
        log = train_lora(accelerator, models, data, tp, None, Checkpointer(Path(tmp), None))
        seconds = sync() - start
    moved = sum(float((p.detach() - b).abs().sum()) for p, b in zip(trainable, before, strict=True))
    return {
        "trainer": "charloop",
        "plan": plan.label() if plan else None,
        "layers": list(layers),
        "batch": batch,
        "resolution": side * 8,
        "seconds_per_step": round(seconds / steps, 3),
        "peak_gib": peak_gib(),
        "losses_finite": bool(torch.isfinite(torch.tensor(log.loss)).all()),
        "lora_moved": moved > 0,
    }


def reference_check(
    steps: int, batch: int, tiny: bool, layers: tuple[int, int], plan: Plan | None = None
) -> dict[str, Any]:
    """diffusers' FLUX LoRA step without caches: VAE, CLIP and T5-XXL every step."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from charloop.families import get_family
    from charloop.families.flux import predict

    model, dev, _ = _transformer(tiny, layers, plan)
    get_family("flux").prepare_training_device(dev)  # what charloop's trainer does too
    t5_cfg = (
        dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        if tiny
        else dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
    )
    clip_cfg = (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
        if tiny
        else dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
        )
    )
    with dev:
        vae = AutoencoderKL(
            block_out_channels=(8, 8, 16, 16) if tiny else (128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=16,
            layers_per_block=2,
            norm_num_groups=4 if tiny else 32,
            use_quant_conv=False,
        ).to(torch.bfloat16)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", **t5_cfg))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **clip_cfg))
        t5, clip = t5.to(torch.bfloat16), clip.to(torch.bfloat16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = memory_plans.optimizer(trainable, plan or Plan(), 1e-4)
    side, tokens = (64, 64) if tiny else (1024, 512)
    pixels = torch.randn(batch, 3, side, side, device=dev, dtype=torch.bfloat16)
    t5_ids = torch.randint(0, 32128, (batch, tokens), device=dev)
    clip_ids = torch.randint(0, 49408, (batch, 77), device=dev)

    def step() -> None:
        with torch.no_grad():
            latents = (vae.encode(pixels).latent_dist.sample() - 0.1159) * 0.3611
            hidden = t5(t5_ids)[0]
            pooled = clip(clip_ids).pooler_output
        noise = torch.randn_like(latents)
        sigmas = torch.rand(batch, device=dev)
        noisy = (1 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            cond = {"encoder_hidden_states": hidden, "pooled_projections": pooled}
            pred = predict(model, noisy, sigmas, cond, guidance=1.0)
        loss = torch.nn.functional.mse_loss(pred.float(), (noise - latents).float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = sync()
    for _ in range(steps):
        step()
    seconds = sync() - start
    return {
        "trainer": "diffusers-script step, no caches",
        "plan": plan.label() if plan else None,
        "layers": list(layers),
        "batch": batch,
        "resolution": side,
        "seconds_per_step": round(seconds / steps, 3),
        "peak_gib": peak_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, nargs=2, default=[19, 38])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="small models on the CPU")
    parser.add_argument("--plan", nargs="*", default=None, help="memory plans to measure")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("gpu_check_flux needs a CUDA device (or --tiny)")
    layers = tuple(args.layers)
    if args.plan is not None:
        return plan_loop(args, layers)
    ours = charloop_check(args.steps, args.batch, args.tiny, layers)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    ref = reference_check(args.steps, args.batch, args.tiny, layers)
    ours["speed_vs_reference"] = round(ref["seconds_per_step"] / ours["seconds_per_step"], 3)
    device = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    text = json.dumps({"device": device, "torch": torch.__version__, "flux": [ours, ref]}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


def plan_loop(args: argparse.Namespace, layers: tuple[int, int]) -> None:
    """Each plan: charloop's step and the reference step, with the planner's estimate."""
    config = (
        TINY
        if args.tiny
        else dict(FLUX_TRANSFORMER, num_layers=layers[0], num_single_layers=layers[1])
    )

    def run(trainer: str, plan: Plan) -> dict[str, Any]:
        check = charloop_check if trainer == "charloop" else reference_check
        return check(args.steps, args.batch, args.tiny, layers, plan)

    def estimate(row: dict[str, Any], plan: Plan) -> dict[str, Any]:
        tokens = 64 if args.tiny else 512
        return memory_plans.beside_estimate(row, "flux", config, plan, row["resolution"], tokens)

    memory_plans.run_plans(args.plan, run, estimate, "flux_plans", args.tiny, args.json)


if __name__ == "__main__":
    main()
