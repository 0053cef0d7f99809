"""CUDA check and throughput of charloop's LoRA trainer on an SDXL-sized, random-init UNet.

No pretrained weights are reachable, so the UNet uses SDXL 1.0's configuration (about
2.6 B parameters) with random weights: the speed and memory are a real SDXL's.

1. charloop's ``train_lora`` with the SDXL family's conditioning (cached 2048-wide hidden
   states, 1280-wide pooled embeddings, per-image ``time_ids``) in bf16, with and without
   gradient checkpointing: seconds per step, images per second, peak memory, finite
   losses, LoRA weights moved.
2. The reference: the step of diffusers' ``train_text_to_image_lora_sdxl.py`` (VAE-encode
   the batch, both text encoders, then the UNet with ``added_cond_kwargs``; LoRA on the
   same attention modules, bf16 autocast), same UNet, batch and resolution, in the same
   run, so the ratio is what the caches buy at SDXL size.

3. ``--plan [NAME ...]``: both, once per memory plan (bf16/fp8/nf4 frozen weights x
   adamw/adamw8bit, gradient checkpointing; all six for a bare ``--plan``) at 1024 px,
   batch 1 (``--batch``), rank 16: peak memory and step rate beside the planner's
   estimate and its error (see ``bench/memory_plans.py``).

Usage: ``python bench/gpu_check_sdxl.py [--steps 10] [--batch 2] [--json out.json]
[--plan [bf16/adamw nf4/adamw8bit ...]]``; ``--tiny`` runs small configs on the CPU to
check the script itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import memory_plans  # noqa: E402
from charloop.models.consumers.base_modules import SDXL_UNET  # noqa: E402
from charloop.models.memory_plan import Plan  # noqa: E402

TINY_UNET = dict(
    SDXL_UNET,
    block_out_channels=[32, 64, 64],
    attention_head_dim=[2, 4, 4],
    transformer_layers_per_block=[1, 1, 2],
    cross_attention_dim=64,
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=80,
    norm_num_groups=8,
    sample_size=8,
)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _setup(
    tiny: bool, checkpointing: bool, plan: Plan | None = None
) -> tuple[Any, torch.device, dict[str, int]]:
    from diffusers import UNet2DConditionModel

    from charloop.stages.train.loop import lora_config

    dev = torch.device("cpu" if tiny else "cuda")
    config = TINY_UNET if tiny else SDXL_UNET
    torch.manual_seed(0)
    # CPU autocast leaves bitsandbytes' matmul alone: its float32 output would meet bf16
    # group norms, so the tiny nf4 check keeps the UNet in float32 (CUDA autocast runs
    # group norms in float32 anyway).
    dtype = torch.float32 if tiny and plan is not None and plan.weights == "nf4" else torch.bfloat16
    with dev:
        unet = UNet2DConditionModel.from_config(config).to(dtype)
    unet.requires_grad_(False)
    if plan is not None:
        memory_plans.quantize(unet, plan.weights, dev)
    unet.add_adapter(lora_config(16, 16.0, TARGETS))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    dims = {
        "hidden": int(config["cross_attention_dim"]),
        "side": 8 if tiny else 128,
        "pooled": 32 if tiny else 1280,
    }
    return unet, dev, dims


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def charloop_check(
    steps: int, batch: int, checkpointing: bool, tiny: bool, plan: Plan | None = None
) -> dict[str, Any]:
    """charloop's trainer on the SDXL-sized UNet with the SDXL family's cached inputs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from diffusers import DDPMScheduler

    from charloop.families import get_family
    from charloop.params.train import TrainParams
    from charloop.stages.train.checkpoint import Checkpointer
    from charloop.stages.train.data import EncodedDataset
    from charloop.stages.train.loop import TrainModels, train_lora

    AcceleratorState._reset_state(reset_partial_state=True)
    unet, _, dims = _setup(tiny, checkpointing, plan)
    memory = {"weights": plan.weights, "optimizer": plan.optimizer} if plan else {}
    tp = TrainParams(
        memory=memory,
        max_train_steps=steps,
        batch_size=batch,
        mixed_precision="bf16",
        gradient_checkpointing=checkpointing,
        learning_rate=1e-4,
        checkpoint_every=max(1, steps // 2),
    )
    accelerator = Accelerator(mixed_precision="bf16", cpu=tiny)
    n, side = batch * 4, dims["side"]
    sizes = torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]] * n, dtype=torch.float32)
    data = EncodedDataset(
        ids=[f"img{i}" for i in range(n)],
        latents=torch.randn(n, 4, side, side),
        input_ids=[torch.zeros(n, 77, dtype=torch.long)] * 2,
        text={
            "hidden": torch.randn(n, 77, dims["hidden"]),
            "pooled": torch.randn(n, dims["pooled"]),
        },
        sizes=sizes,
    )
    models = TrainModels(
        denoiser=unet,
        noise_scheduler=DDPMScheduler(num_train_timesteps=1000),
        family=get_family("sdxl"),
    )
    before = [p.detach().clone() for p in unet.parameters() if p.requires_grad]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = sync()
        log = train_lora(
            accelerator, models, data, tp, None, Checkpointer(Path(tmp), tp.checkpoint_every)
        )
        seconds = sync() - start
    moved = sum(
        float((a.detach() - b).abs().sum())
        for a, b in zip([p for p in unet.parameters() if p.requires_grad], before, strict=True)
    )
    return {
        "trainer": "charloop",
        "plan": plan.label() if plan else None,
        "gradient_checkpointing": checkpointing,
        "batch": batch,
        "resolution": side * 8,
        "seconds_per_step": round(seconds / steps, 4),
        "images_per_second": round(steps * batch / seconds, 2),
        "peak_gib": peak_gib(),
        "losses_finite": bool(torch.isfinite(torch.tensor(log.loss)).all()),
        "lora_moved": moved > 0,
    }


def reference_check(
    steps: int, batch: int, checkpointing: bool, tiny: bool, plan: Plan | None = None
) -> dict[str, Any]:
    """The step diffusers' SDXL LoRA script runs: encode images and captions every step."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet, dev, dims = _setup(tiny, checkpointing, plan)
    small = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        projection_dim=32,
    )
    te1_cfg = (
        small
        if tiny
        else dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
        )
    )
    te2_cfg = (
        small
        if tiny
        else dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
        )
    )
    vae_cfg = dict(
        block_out_channels=(8, 8, 16, 16) if tiny else (128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=4 if tiny else 32,
    )
    with dev:
        vae = AutoencoderKL(**vae_cfg).float()  # the script keeps the SDXL VAE in float32
        te1 = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **te1_cfg)).to(torch.bfloat16)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, **te2_cfg)).to(
            torch.bfloat16
        )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = memory_plans.optimizer(params, plan or Plan(), 1e-4)
    side = dims["side"] * 8
    pixels = torch.randn(batch, 3, side, side, device=dev)
    ids = torch.randint(0, 49408, (batch, 77), device=dev)
    time_ids = torch.tensor(
        [[side, side, 0, 0, side, side]] * batch, device=dev, dtype=torch.bfloat16
    )

    def step() -> None:
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * 0.13025
            out1 = te1(ids, output_hidden_states=True)
            out2 = te2(ids, output_hidden_states=True)
            hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            pred = unet(
                latents + noise,
                t,
                hidden,
                added_cond_kwargs={"text_embeds": out2[0], "time_ids": time_ids},
            ).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
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
        "trainer": "diffusers-script step",
        "plan": plan.label() if plan else None,
        "gradient_checkpointing": checkpointing,
        "batch": batch,
        "resolution": side,
        "seconds_per_step": round(seconds / steps, 4),
        "images_per_second": round(steps * batch / seconds, 2),
        "peak_gib": peak_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="small models on the CPU")
    parser.add_argument("--plan", nargs="*", default=None, help="memory plans to measure")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("gpu_check_sdxl needs a CUDA device (or --tiny)")
    if args.plan is not None:
        return plan_loop(args)
    rows = []
    for checkpointing in (False, True):
        rows.append(charloop_check(args.steps, args.batch, checkpointing, args.tiny))
        rows.append(reference_check(args.steps, args.batch, checkpointing, args.tiny))
    for ours, ref in zip(rows[::2], rows[1::2], strict=True):
        ours["speed_vs_reference"] = round(ref["seconds_per_step"] / ours["seconds_per_step"], 3)
    device = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    text = json.dumps({"device": device, "torch": torch.__version__, "sdxl": rows}, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


def plan_loop(args: argparse.Namespace) -> None:
    """Each plan: charloop's step and the reference step, with the planner's estimate."""
    config = TINY_UNET if args.tiny else SDXL_UNET

    def run(trainer: str, plan: Plan) -> dict[str, Any]:
        check = charloop_check if trainer == "charloop" else reference_check
        return check(args.steps, args.batch, True, args.tiny, plan)

    def estimate(row: dict[str, Any], plan: Plan) -> dict[str, Any]:
        return memory_plans.beside_estimate(
            row, "sdxl", config, plan, row["resolution"], targets=tuple(TARGETS)
        )

    memory_plans.run_plans(args.plan, run, estimate, "sdxl_plans", args.tiny, args.json)


if __name__ == "__main__":
    main()
