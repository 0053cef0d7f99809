"""CUDA check and throughput of charloop's LoRA trainer on an SD1.5-sized, random-init model.

No pretrained weights are reachable, so the UNet, VAE and text encoder use the SD1.5
configurations (860M-parameter UNet, 4-level VAE, CLIP ViT-L/14 text encoder) with random
weights: the speed is a real SD1.5's; the pictures would be noise.

Two parts, both on one CUDA device:

1. charloop's own ``train_lora`` (accelerate mixed precision, the attention kernel choice,
   min-SNR, checkpoints, the non-finite loss check) for ``--steps`` steps in bf16, fp16 and
   with gradient checkpointing; prints seconds per step and peak memory, and checks every
   loss is finite and the LoRA weights moved.
2. The train-cache ratio of issue 4 at SD1.5 size: a naive step (VAE-encode 512 px images and
   text-encode captions, then the UNet) against a cached step (the UNet alone), same batch.

Usage: ``python bench/gpu_check.py [--steps 20] [--batch 4] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    cross_attention_dim=768,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
)
SD15_VAE: dict[str, Any] = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)
CLIP_L: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
)


def sd15_parts(dtype: torch.dtype, device: torch.device) -> tuple[Any, Any, Any]:
    """Random-init SD1.5-sized UNet, VAE and text encoder (frozen, in ``dtype``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet_cfg, vae_cfg, clip_cfg = dict(SD15_UNET), dict(SD15_VAE), dict(CLIP_L)
    if TINY:
        unet_cfg.update(block_out_channels=(32, 32, 64, 64), sample_size=16)
        vae_cfg.update(block_out_channels=(8, 8, 16, 16), norm_num_groups=4)
        clip_cfg.update(num_hidden_layers=1)
    with device:  # initialise on the device: an 860M-parameter random init is slow on a CPU
        unet: Any = UNet2DConditionModel(**unet_cfg)
        vae: Any = AutoencoderKL(**vae_cfg)
        text: Any = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    unet, vae, text = (m.to(dtype) for m in (unet, vae, text))
    for module in (unet, vae, text):
        module.requires_grad_(False)
    return unet, vae, text


TINY = False  # --tiny: small configs on the CPU, to check the script itself without a GPU


def device() -> torch.device:
    return torch.device("cpu" if TINY else "cuda")


def sync_time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gib() -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else 0


def reset_accelerate() -> None:
    """accelerate keeps one process-wide state; each check asks for another precision."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def trainer_check(precision: str, steps: int, batch: int, checkpointing: bool) -> dict[str, Any]:
    """Run charloop's ``train_lora`` on the SD1.5-sized UNet with cached inputs."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from charloop.params.train import TrainParams
    from charloop.stages.train.checkpoint import Checkpointer
    from charloop.stages.train.data import EncodedDataset
    from charloop.stages.train.loop import TrainModels, lora_config, train_lora
    from charloop.stages.train.models import set_attention

    tp = TrainParams(
        max_train_steps=steps,
        batch_size=batch,
        mixed_precision=precision,
        gradient_checkpointing=checkpointing,
        checkpoint_every=max(1, steps // 2),
        learning_rate=1e-4,
    )
    reset_accelerate()
    accelerator = Accelerator(mixed_precision=precision, cpu=TINY)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    device = accelerator.device
    unet, _, _ = sd15_parts(dtype, device)
    attention = set_attention(unet, "auto", device)
    unet.add_adapter(
        lora_config(tp.rank, tp.alpha, tp.target_modules or ["to_q", "to_k", "to_v", "to_out.0"])
    )
    if checkpointing:
        unet.enable_gradient_checkpointing()
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA weights train in float32, as build_models does
    before = [p.detach().clone() for p in unet.parameters() if p.requires_grad]
    n, side = batch * 4, 16 if TINY else 64
    data = EncodedDataset(
        ids=[f"img{i}" for i in range(n)],
        latents=torch.randn(n, 4, side, side),
        input_ids=[torch.zeros(n, 77, dtype=torch.long)],
        text={"hidden": torch.randn(n, 77, 768)},
    )
    models = TrainModels(denoiser=unet, noise_scheduler=DDPMScheduler(num_train_timesteps=1000))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = sync_time()
        checkpoints = Checkpointer(Path(tmp), tp.checkpoint_every)
        log = train_lora(accelerator, models, data, tp, None, checkpoints)
        seconds = sync_time() - start
        saved = len(list(Path(tmp).glob("step-*.pt")))
    after = [p.detach() for p in unet.parameters() if p.requires_grad]
    moved = sum(float((a - b).abs().sum()) for a, b in zip(after, before, strict=True))
    finite = all(torch.isfinite(torch.tensor(log.loss)).tolist())
    return {
        "precision": precision,
        "gradient_checkpointing": checkpointing,
        "attention": attention,
        "steps": steps,
        "batch": batch,
        "seconds_per_step": round(seconds / steps, 4),
        "images_per_second": round(steps * batch / seconds, 2),
        "peak_gib": peak_gib(),
        "checkpoints_saved": saved,
        "losses_finite": finite,
        "lora_moved": moved > 0,
        "first_last_loss": [round(log.loss[0], 4), round(log.loss[-1], 4)],
    }


def cache_ratio(steps: int, batch: int, dtype: torch.dtype) -> dict[str, Any]:
    """Naive (encode every step) vs cached (UNet only) LoRA steps at SD1.5 size, 512 px."""
    from diffusers import DDPMScheduler

    from charloop.stages.train.loop import TrainModels, denoising_loss, lora_config

    dev = device()
    unet, vae, text = sd15_parts(dtype, dev)
    unet.add_adapter(lora_config(4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"]))
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    models = TrainModels(denoiser=unet, noise_scheduler=DDPMScheduler(num_train_timesteps=1000))
    side = 128 if TINY else 512
    pixels = torch.randn(batch, 3, side, side, device=dev, dtype=dtype)
    ids = torch.randint(0, 49408, (batch, 77), device=dev)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample() * 0.18215
        cond = text(ids)[0]

    def step(naive: bool) -> None:
        if naive:
            with torch.no_grad():
                z = vae.encode(pixels).latent_dist.sample() * 0.18215
                c = text(ids)[0]
        else:
            z, c = latents, cond
        t = torch.randint(0, 1000, (batch,), device=dev)
        with torch.autocast(dev.type, dtype=dtype):
            loss = denoising_loss(
                models, z, {"encoder_hidden_states": c}, torch.randn_like(z), t, 5.0
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timings = {}
    for name, naive in (("naive", True), ("cached", False), ("naive_again", True)):
        for _ in range(3):
            step(naive)  # warm-up: kernels picked, allocator filled
        start = sync_time()
        for _ in range(steps):
            step(naive)
        timings[name] = (sync_time() - start) / steps
    naive_s = (timings["naive"] + timings["naive_again"]) / 2
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,
        "resolution": side,
        "naive_s_per_step": round(naive_s, 4),
        "cached_s_per_step": round(timings["cached"], 4),
        "speedup": round(naive_s / timings["cached"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="small models on the CPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    global TINY
    TINY = args.tiny
    if not TINY and not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA device (or --tiny)")
    name = "cpu" if TINY else torch.cuda.get_device_name(0)
    report: dict[str, Any] = {"device": name, "torch": torch.__version__}
    precisions = ["bf16"] if TINY else ["bf16", "fp16"]
    report["trainer"] = [trainer_check(p, args.steps, args.batch, False) for p in precisions]
    report["trainer"].append(trainer_check("bf16", args.steps, args.batch, True))
    report["cache_ratio"] = [
        cache_ratio(args.steps, args.batch, torch.bfloat16),
        cache_ratio(args.steps, 1, torch.bfloat16),
    ]
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
