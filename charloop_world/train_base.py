"""Training of the world base model: the VAE first, then UNet + text encoder from scratch.

Both loops run against a wall-clock budget (cosine learning rate over the budget), log the
loss every ``log_every`` steps and checkpoint the weights, so a crash loses little.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


@dataclass
class LoopLog:
    """Loss history of one training loop."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    total_steps: int = 0


def _lr_factor(step: int, elapsed: float, budget_s: float, warmup: int) -> float:
    progress = min(1.0, elapsed / budget_s)
    warm = min(1.0, (step + 1) / warmup)
    return warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, h, w, 3)`` -> float ``(n, 3, h, w)`` in [-1, 1]."""
    pixels = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    return pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (the matmuls and convolutions), a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def adamw(params: Any, lr: float, weight_decay: float, device: torch.device) -> Any:
    """AdamW, fused on CUDA."""
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda" or None
    )


def train_vae(
    vae: Any,
    images: np.ndarray,
    budget_s: float,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-6,
    log_every: int = 25,
    crop_fraction: float = 0.7,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> LoopLog:
    """Train ``vae`` on reconstruction (MSE + L1) with a small KL term, for ``budget_s`` s.

    The first ``crop_fraction`` of the budget trains on random 32 px crops (cheaper).
    """
    device = torch.device(device)
    rng = np.random.default_rng(seed)
    pixels = torch.from_numpy(images).to(device)
    opt = adamw(vae.parameters(), lr, 0.0, device)
    log, start, step = LoopLog(), time.time(), 0
    running = torch.zeros((), device=device)
    vae.to(device).train()
    while time.time() - start < budget_s:
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, time.time() - start, budget_s, 50)
        index = torch.from_numpy(rng.integers(0, len(images), batch_size)).to(device)
        x = to_tensor(pixels[index])
        if time.time() - start < crop_fraction * budget_s:
            # fully convolutional: 32 px crops teach the same filters at a quarter of the cost
            top, left = (int(v) for v in rng.integers(0, 33, 2) // 4 * 4)
            x = x[:, :, top : top + 32, left : left + 32]
        with autocast(device):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running += loss.detach()
        step += 1
        if step % log_every == 0:
            mean = float(running) / log_every  # one device sync per log line, not per step
            log.steps.append(step)
            log.losses.append(mean)
            logger.info("vae step %d loss %.4f (%.0fs)", step, mean, time.time() - start)
            running.zero_()
    vae.to("cpu").eval()
    log.seconds, log.total_steps = time.time() - start, step
    return log


@torch.no_grad()
def encode_latents(
    vae: Any, images: np.ndarray, batch_size: int = 128, device: str | torch.device = "cpu"
) -> tuple[Any, Any]:
    """Posterior means and standard deviations of every image, unscaled (on the CPU)."""
    vae.to(device)
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        x = to_tensor(images[i : i + batch_size]).to(device)
        dist = vae.encode(x).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    vae.to("cpu")
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def vae_recon_error(vae: Any, images: np.ndarray) -> float:
    """Mean absolute reconstruction error in 0..255 pixel units (posterior mean)."""
    x = to_tensor(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return float((recon - x).abs().mean() * 127.5)


@dataclass
class DiffusionSetup:
    """How the denoiser + text encoders are trained (see :func:`train_diffusion`)."""

    batch_size: int = 32
    lr: float = 4e-4
    drop_prob: float = 0.3
    empty_prob: float = 0.1
    ema_decay: float = 0.999
    warmup: int = 100
    log_every: int = 50
    checkpoint_every: int = 300
    workers: int = 0
    seed: int = 0
    device: str = "cpu"


def _checkpoint(path: Path, modules: dict[str, Any], opt: Any, ema: list, **extra: Any) -> None:
    state = {"modules": {name: m.state_dict() for name, m in modules.items()}}
    _save_atomic({**state, "opt": opt.state_dict(), "ema": [e.cpu() for e in ema], **extra}, path)


def train_diffusion(
    arch: Any,
    components: dict[str, Any],
    latents: tuple[Any, Any],
    records: list[dict[str, str]],
    budget_s: float,
    checkpoint: Path | None = None,
    setup: DiffusionSetup | None = None,
) -> LoopLog:
    """Train the denoiser and text encoders of ``arch`` jointly for ``budget_s`` seconds.

    Captions are re-drawn every step with attribute dropout; a fraction of them is empty so
    classifier-free guidance works. An exponential moving average of the weights (the usual
    diffusion practice: it smooths the last steps' noise) is what the modules hold at the end.
    The budget counts the time of earlier runs: a resumed build continues from its last
    checkpoint (weights, optimiser, average, step) to the same end.

    Args:
        arch: A :class:`~charloop_world.arch.WorldArch`: which modules train, and the loss.
        components: Its components (trained in place).
        latents: Posterior means and standard deviations, scaled (and shifted).
        records: Attribute record of every render (captions are drawn from them).
        budget_s: Wall-clock budget in seconds.
        checkpoint: Where to checkpoint (and resume from).
        setup: Batch size, learning rate, caption dropout, device.
    """
    from charloop.families import get_family
    from charloop_world.arch import Batch
    from charloop_world.batches import CaptionBatches, caption_batches

    cfg = setup or DiffusionSetup()
    device = torch.device(cfg.device)
    get_family(arch.family).prepare_training_device(device)
    modules = arch.trainable(components)
    for module in modules.values():
        module.to(device)
    means, stds = (t.to(device) for t in latents)
    params = [p for module in modules.values() for p in module.parameters()]
    opt = adamw(params, cfg.lr, 0.01, device)
    ema = [p.detach().clone() for p in params]
    log, step, offset = LoopLog(), 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True, map_location=device)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        opt.load_state_dict(state["opt"])
        ema = [e.to(device) for e in state.get("ema", ema)]
        step, offset = state["step"], state["elapsed"]
        log.steps, log.losses = state["log_steps"], state["log_losses"]
        logger.info("resumed diffusion training at step %d", step)
    tokenizers = [components[name] for name in arch.tokenizers]
    source = CaptionBatches(
        records, tokenizers, cfg.batch_size, cfg.drop_prob, cfg.empty_prob, cfg.seed + step
    )
    batches = caption_batches(source, cfg.workers)
    rng = np.random.default_rng([cfg.seed, step])
    generator = torch.Generator().manual_seed(cfg.seed + step)
    for module in modules.values():
        module.train()
    start, running = time.time() - offset, torch.zeros((), device=device)
    while time.time() - start < budget_s:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, time.time() - start, budget_s, cfg.warmup)
        index, ids = next(batches)
        index = index.to(device, non_blocking=True)
        z0 = means[index] + stds[index] * torch.randn_like(means[index])
        z0, sizes = arch.batch_geometry(z0, rng)
        batch = Batch(z0, [i.to(device, non_blocking=True) for i in ids], sizes)
        loss, mse = arch.loss(components, batch, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            # warm the average up: early on the weights move too fast for a long memory
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
            running += mse
        step += 1
        if step % cfg.log_every == 0:
            mean = float(running) / cfg.log_every
            log.steps.append(step)
            log.losses.append(mean)
            logger.info(
                "%s step %d mse %.4f (%.0fs)", arch.denoiser, step, mean, time.time() - start
            )
            running.zero_()
        if checkpoint is not None and step % cfg.checkpoint_every == 0:
            extra = {"step": step, "elapsed": time.time() - start}
            _checkpoint(
                checkpoint, modules, opt, ema, **extra, log_steps=log.steps, log_losses=log.losses
            )
    if checkpoint is not None:  # a rerun of a finished budget loads this and stops at once
        extra = {"step": step, "elapsed": time.time() - start}
        _checkpoint(
            checkpoint, modules, opt, ema, **extra, log_steps=log.steps, log_losses=log.losses
        )
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    for module in modules.values():
        module.to("cpu").eval()
    log.seconds, log.total_steps = time.time() - start, step
    return log


def save_log(path: Path, **logs: LoopLog) -> None:
    """Write loss histories as JSON."""
    path.write_text(json.dumps({k: v.__dict__ for k, v in logs.items()}, indent=1))
