"""Build the world base model end to end: render, train VAE, cache latents, train UNet."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charloop_world import base_model, train_base
from charloop_world.attributes import CHARACTER_VALUES, sample_character, sample_context
from charloop_world.captions import caption
from charloop_world.dataset import cached_dataset

logger = logging.getLogger(__name__)


def plot_losses(path: Path, logs: dict[str, train_base.LoopLog]) -> None:
    """A small loss-curve PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(4 * len(logs), 2.6), dpi=80)
    for ax, (name, log) in zip(np.atleast_1d(axes), logs.items(), strict=True):
        ax.plot(log.steps, log.losses)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def full_prompts(n: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """Prompts listing every attribute, with the record they ask for."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        character, context = sample_character(rng), sample_context(rng)
        out.append((caption(character, context), {**character.as_dict(), **context.as_dict()}))
    return out


@torch.no_grad()
def generate(
    pipe: Any, prompts: list[str], seed: int, steps: int = 20, guidance: float = 5.0
) -> list:
    """Generate one 64 px image per prompt."""
    generator = torch.Generator().manual_seed(seed)
    result = pipe(
        prompts,
        height=64,
        width=64,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
    )
    return list(result.images)


def sample_grid(pipe: Any, path: Path, rows: int = 4, cols: int = 6, seed: int = 0) -> list[str]:
    """Save a grid: each row one full prompt, columns different seeds; returns the prompts."""
    from PIL import Image

    prompts = [p for p, _ in full_prompts(rows, seed)]
    grid = Image.new("RGB", (64 * cols, 64 * rows))
    for r, prompt in enumerate(prompts):
        for c, image in enumerate(generate(pipe, [prompt] * cols, seed + r)):
            grid.paste(image, (64 * c, 64 * r))
    grid.save(path)
    return prompts


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name(0)} GPU"
    return f"{torch.get_num_threads()} CPU threads"


def build_base(
    out_dir: str | Path,
    cache_dir: str | Path = ".charloop/world-cache",
    vae_minutes: float = 6.0,
    unet_minutes: float = 33.0,
    n_characters: int = 6000,
    per_character: int = 2,
    seed: int = 0,
    setup: train_base.DiffusionSetup | None = None,
    vae_batch_size: int = 32,
) -> Path:
    """Train and save the world SD1.5 pipeline with a model card; returns the folder.

    ``setup`` says how the UNet is trained, and on which device (the VAE trains on it too);
    its ``workers`` also render the dataset.
    """
    setup = setup or train_base.DiffusionSetup(seed=seed)
    out, cache = Path(out_dir), Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = cached_dataset(cache, n_characters, per_character, seed, max(1, setup.workers))
    held_out = cached_dataset(cache, 128, 1, seed + 1)
    vae, text_encoder, tokenizer, unet = base_model.new_components(seed)
    vae_ckpt = cache / "vae.pt"
    logs: dict[str, train_base.LoopLog] = {}
    if vae_ckpt.exists():
        state = torch.load(vae_ckpt, weights_only=True)
        vae.load_state_dict(state["vae"])
        logs["vae"] = train_base.LoopLog(**state["log"])
    else:
        logs["vae"] = train_base.train_vae(
            vae,
            data.images,
            vae_minutes * 60,
            batch_size=vae_batch_size,
            seed=seed,
            device=setup.device,
        )
        train_base._save_atomic({"vae": vae.state_dict(), "log": logs["vae"].__dict__}, vae_ckpt)
    vae.eval()
    recon = train_base.vae_recon_error(vae, held_out.images)
    logger.info("vae held-out mean abs error %.2f / 255", recon)
    means, stds = train_base.encode_latents(vae, data.images, device=setup.device)
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    logs["unet"] = train_base.train_diffusion(
        unet,
        text_encoder,
        tokenizer,
        (means * scale, stds * scale),
        data.records,
        unet_minutes * 60,
        checkpoint=cache / "diffusion.pt",
        setup=setup,
    )
    pipe = base_model.assemble_pipeline(vae, text_encoder, tokenizer, unet)
    base_model.save_pipeline(pipe, out)
    plot_losses(out / "loss_curve.png", logs)
    train_base.save_log(cache / "base_log.json", **logs)
    pipe = base_model.load_pipeline(out)
    prompts = sample_grid(pipe, out / "samples.png")
    stats = {
        "images": len(data),
        "characters": n_characters,
        "vae_steps": logs["vae"].total_steps,
        "vae_seconds": round(logs["vae"].seconds),
        "vae_recon_mae_255": round(recon, 2),
        "latent_scaling_factor": round(scale, 4),
        "unet_steps": logs["unet"].total_steps,
        "unet_batch": setup.batch_size,
        "device": setup.device,
        "unet_seconds": round(logs["unet"].seconds),
        "unet_final_mse": round(logs["unet"].losses[-1], 4) if logs["unet"].losses else None,
        "total_seconds": round(time.time() - started),
        "device_name": _device_name(setup.device),
        "sample_prompts": prompts,
    }
    (out / "build_stats.json").write_text(json.dumps(stats, indent=1))
    write_card(out, stats)
    return out


def write_card(out: Path, stats: dict[str, Any], quality: str = "") -> None:
    """Write ``MODEL_CARD.md`` from build statistics (and an optional quality section)."""
    prompts = "\n".join(f"{i + 1}. `{p}`" for i, p in enumerate(stats["sample_prompts"]))
    text = f"""# world-sd15

A small Stable Diffusion 1.5-architecture pipeline (diffusers format: AutoencoderKL,
CLIPTextModel + CLIPTokenizer, UNet2DConditionModel, DDIM scheduler config, epsilon
prediction, no safety checker) trained from scratch on the procedural character world
of `charloop_world`. 64x64 images, 16x16x4 latents. Rebuild: `python -m charloop_world.build
base --out models`.

## Data
{stats["images"]} renders of {stats["characters"]} random characters in random contexts
(setting, style, pose, expression). Captions list the attributes
({", ".join(CHARACTER_VALUES)}) and the context; each character attribute is dropped with
probability 0.3 and 10% of captions are empty (classifier-free guidance).

## Training
- VAE: {stats["vae_steps"]} steps in {stats["vae_seconds"]} s (MSE + L1 + 1e-6 KL), held-out
  reconstruction error {stats["vae_recon_mae_255"]} / 255 (mean absolute), latent scaling
  factor {stats["latent_scaling_factor"]}.
- UNet + text encoder jointly: {stats["unet_steps"]} steps (batch {stats.get("unet_batch", 32)})
  in {stats["unet_seconds"]} s, min-SNR-5 weighted epsilon loss, weights averaged (EMA);
  final unweighted epsilon MSE {stats["unet_final_mse"]}.
- Total wall time {stats["total_seconds"]} s on {stats.get("device_name", "2 CPU cores")}.

![loss curve](loss_curve.png)

## Samples
DPM-Solver, 20 steps, guidance 5; each row one prompt, columns different seeds:

![samples](samples.png)

{prompts}
{quality}
"""
    (out / "MODEL_CARD.md").write_text(text)
