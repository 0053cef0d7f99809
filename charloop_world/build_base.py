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
from charloop_world.arch import WorldArch, get_arch
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


def load_pipeline(path: str | Path) -> Any:
    """A saved world pipeline of any family, float32 on CPU; SD1.5/SDXL sample with
    DPM-Solver, FLUX with its own flow-matching Euler scheduler."""
    from diffusers import DPMSolverMultistepScheduler

    arch = arch_of_folder(path)
    pipe = arch.pipeline_type().from_pretrained(str(path), torch_dtype=torch.float32)
    if arch.family != "flux":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def arch_of_folder(path: str | Path) -> WorldArch:
    """The world architecture of a saved pipeline folder (from ``model_index.json``)."""
    from charloop.families import family_of_pipeline_class

    index = json.loads((Path(path) / "model_index.json").read_text())
    family = family_of_pipeline_class(index["_class_name"])
    if family is None:
        raise ValueError(f"{path} holds a {index['_class_name']}, not a world base model")
    return get_arch(family.name)


@torch.no_grad()
def generate(
    pipe: Any, prompts: list[str], seed: int, steps: int = 20, guidance: float = 5.0
) -> list:
    """Generate one 64 px image per prompt, guided against an empty negative prompt as
    the loop's renders are (the family's own guidance arguments)."""
    from charloop.families import family_of_pipe

    generator = torch.Generator().manual_seed(seed)
    result = pipe(
        prompts,
        negative_prompt=[""] * len(prompts),
        height=64,
        width=64,
        num_inference_steps=steps,
        generator=generator,
        **family_of_pipe(pipe).sampling_kwargs(pipe, guidance),
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


def cache_dir_of(cache: Path, arch: WorldArch) -> Path:
    """Where ``arch``'s checkpoints live (SD1.5 at the top: oracle-adapt reads its VAE)."""
    return cache if arch.family == "sd15" else cache / arch.family


def _trained_vae(
    arch: WorldArch, images: np.ndarray, cache: Path, budget_s: float, batch: int, device: str
) -> tuple[Any, train_base.LoopLog]:
    """The family's VAE, trained once (checkpointed: a rerun loads it)."""
    vae, ckpt = arch.build_vae(), cache / "vae.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        vae.load_state_dict(state["vae"])
        return vae.eval(), train_base.LoopLog(**state["log"])
    log = train_base.train_vae(vae, images, budget_s, batch_size=batch, device=device)
    train_base._save_atomic({"vae": vae.state_dict(), "log": log.__dict__}, ckpt)
    return vae.eval(), log


def scaled_latents(arch: WorldArch, vae: Any, images: np.ndarray, device: str) -> tuple:
    """Posterior means and stds, shifted and scaled to unit spread; the factors go into
    the VAE's config (``shift_factor`` only for families that shift)."""
    means, stds = train_base.encode_latents(vae, images, device=device)
    shift = float(means.mean()) if arch.latent_shift else 0.0
    scale = float(1.0 / (means - shift).std())
    vae.register_to_config(scaling_factor=scale)
    if arch.latent_shift:
        vae.register_to_config(shift_factor=shift)
    return ((means - shift) * scale, stds * scale), scale, shift


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
    family: str = "sd15",
) -> Path:
    """Train and save a world base pipeline of ``family`` with a model card; returns the folder.

    ``setup`` says how the denoiser is trained, and on which device (the VAE trains on it
    too); its ``workers`` also render the dataset. Renders are shared by every family;
    checkpoints are per family, so an interrupted build resumes where it stopped.
    """
    arch = get_arch(family)
    setup = setup or train_base.DiffusionSetup(seed=seed)
    out, cache = Path(out_dir), Path(cache_dir)
    ckpts = cache_dir_of(cache, arch)
    ckpts.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = cached_dataset(cache, n_characters, per_character, seed, max(1, setup.workers))
    held_out = cached_dataset(cache, 128, 1, seed + 1)
    components = arch.new_components(seed)
    logs: dict[str, train_base.LoopLog] = {}
    vae, logs["vae"] = _trained_vae(
        arch, data.images, ckpts, vae_minutes * 60, vae_batch_size, setup.device
    )
    components["vae"] = vae
    recon = train_base.vae_recon_error(vae, held_out.images)
    logger.info("vae held-out mean abs error %.2f / 255", recon)
    latents, scale, shift = scaled_latents(arch, vae, data.images, setup.device)
    logs[arch.denoiser] = train_base.train_diffusion(
        arch,
        components,
        latents,
        data.records,
        unet_minutes * 60,
        checkpoint=ckpts / "diffusion.pt",
        setup=setup,
    )
    pipe = arch.assemble(components)
    base_model.save_pipeline(pipe, out)
    plot_losses(out / "loss_curve.png", logs)
    train_base.save_log(ckpts / "base_log.json", **logs)
    pipe = load_pipeline(out)
    prompts = sample_grid(pipe, out / "samples.png")
    denoiser_log = logs[arch.denoiser]
    stats = {
        "family": arch.family,
        "images": len(data),
        "characters": n_characters,
        "vae_steps": logs["vae"].total_steps,
        "vae_seconds": round(logs["vae"].seconds),
        "vae_recon_mae_255": round(recon, 2),
        "latent_scaling_factor": round(scale, 4),
        "latent_shift_factor": round(shift, 4) if arch.latent_shift else None,
        "unet_steps": denoiser_log.total_steps,
        "unet_batch": setup.batch_size,
        "device": setup.device,
        "unet_seconds": round(denoiser_log.seconds),
        "unet_final_mse": round(denoiser_log.losses[-1], 4) if denoiser_log.losses else None,
        "total_seconds": round(time.time() - started),
        "device_name": _device_name(setup.device),
        "sample_prompts": prompts,
    }
    (out / "build_stats.json").write_text(json.dumps(stats, indent=1))
    write_card(out, stats)
    return out


def write_card(out: Path, stats: dict[str, Any], quality: str = "") -> None:
    """Write ``MODEL_CARD.md`` from build statistics (and an optional quality section)."""
    arch = get_arch(stats.get("family", "sd15"))
    prompts = "\n".join(f"{i + 1}. `{p}`" for i, p in enumerate(stats["sample_prompts"]))
    shift = stats.get("latent_shift_factor")
    shift_text = f", shift factor {shift}" if shift is not None else ""
    text = f"""# {arch.folder}

{arch.description} Trained from scratch on the procedural character world of
`charloop_world`. Rebuild: `charloop world build base --family {arch.family}` (see the
GPU command in docs/world.md).

## Data
{stats["images"]} renders of {stats["characters"]} random characters in random contexts
(setting, style, pose, expression). Captions list the attributes
({", ".join(CHARACTER_VALUES)}) and the context; each character attribute is dropped with
probability 0.3 and 10% of captions are empty (classifier-free guidance).

## Training
- VAE: {stats["vae_steps"]} steps in {stats["vae_seconds"]} s (MSE + L1 + 1e-6 KL), held-out
  reconstruction error {stats["vae_recon_mae_255"]} / 255 (mean absolute), latent scaling
  factor {stats["latent_scaling_factor"]}{shift_text}.
- {arch.denoiser} + text encoders jointly: {stats["unet_steps"]} steps (batch
  {stats.get("unet_batch", 32)}) in {stats["unet_seconds"]} s, {arch.objective_text}, weights
  averaged (EMA); final unweighted {arch.target_text} {stats["unet_final_mse"]}.
- Total wall time {stats["total_seconds"]} s on {stats.get("device_name", "2 CPU cores")}.

![loss curve](loss_curve.png)

## Samples
{arch.sampler_text}, 20 steps, guidance 5; each row one prompt, columns different seeds:

![samples](samples.png)

{prompts}
{quality}
"""
    (out / "MODEL_CARD.md").write_text(text)
