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

from charloop.world.attributes import character_from_dict, context_from_dict
from charloop.world.captions import caption

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


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, h, w, 3)`` -> float ``(n, 3, h, w)`` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


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
) -> LoopLog:
    """Train ``vae`` on reconstruction (MSE + L1) with a small KL term, for ``budget_s`` s.

    The first ``crop_fraction`` of the budget trains on random 32 px crops (cheaper).
    """
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    log, start, step, running = LoopLog(), time.time(), 0, 0.0
    vae.train()
    while time.time() - start < budget_s:
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, time.time() - start, budget_s, 50)
        x = to_tensor(images[rng.integers(0, len(images), batch_size)])
        if time.time() - start < crop_fraction * budget_s:
            # fully convolutional: 32 px crops teach the same filters at a quarter of the cost
            top, left = (int(v) for v in rng.integers(0, 33, 2) // 4 * 4)
            x = x[:, :, top : top + 32, left : left + 32]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running += loss.item()
        step += 1
        if step % log_every == 0:
            log.steps.append(step)
            log.losses.append(running / log_every)
            logger.info(
                "vae step %d loss %.4f (%.0fs)", step, running / log_every, time.time() - start
            )
            running = 0.0
    vae.eval()
    log.seconds, log.total_steps = time.time() - start, step
    return log


@torch.no_grad()
def encode_latents(vae: Any, images: np.ndarray, batch_size: int = 128) -> tuple[Any, Any]:
    """Posterior means and standard deviations of every image, unscaled."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        dist = vae.encode(to_tensor(images[i : i + batch_size])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def vae_recon_error(vae: Any, images: np.ndarray) -> float:
    """Mean absolute reconstruction error in 0..255 pixel units (posterior mean)."""
    x = to_tensor(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return float((recon - x).abs().mean() * 127.5)


def train_diffusion(
    unet: Any,
    text_encoder: Any,
    tokenizer: Any,
    latents: tuple[Any, Any],
    records: list[dict[str, str]],
    budget_s: float,
    checkpoint: Path | None = None,
    batch_size: int = 32,
    lr: float = 4e-4,
    drop_prob: float = 0.3,
    empty_prob: float = 0.1,
    log_every: int = 50,
    checkpoint_every: int = 300,
    seed: int = 0,
) -> LoopLog:
    """Train UNet and text encoder jointly on epsilon prediction (min-SNR-5 weighted).

    Captions are re-drawn every step with attribute dropout ``drop_prob``; a fraction
    ``empty_prob`` of them is empty so classifier-free guidance works.
    """
    from charloop.world.base_model import build_scheduler

    rng = np.random.default_rng(seed)
    means, stds = latents
    alphas = build_scheduler().alphas_cumprod.float()
    snr = alphas / (1 - alphas)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    log, step, offset = LoopLog(), 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        step, offset = state["step"], state["elapsed"]
        log.steps, log.losses = state["log_steps"], state["log_losses"]
        logger.info("resumed diffusion training at step %d", step)
    characters = [character_from_dict(r) for r in records]
    contexts = [context_from_dict(r) for r in records]
    unet.train()
    text_encoder.train()
    start, running = time.time() - offset, 0.0
    while time.time() - start < budget_s:
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(step, time.time() - start, budget_s, 100)
        index = rng.integers(0, len(records), batch_size)
        texts = [
            "" if rng.random() < empty_prob else caption(characters[i], contexts[i], rng, drop_prob)
            for i in index
        ]
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        idx = torch.from_numpy(index)
        z0 = means[idx] + stds[idx] * torch.randn_like(means[idx])
        noise = torch.randn_like(z0)
        t = torch.randint(0, len(alphas), (batch_size,))
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        pred = unet(zt, t, text_encoder(ids)[0]).sample
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += (pred - noise).detach().pow(2).mean().item()
        step += 1
        if step % log_every == 0:
            log.steps.append(step)
            log.losses.append(running / log_every)
            logger.info(
                "unet step %d mse %.4f (%.0fs)", step, running / log_every, time.time() - start
            )
            running = 0.0
        if checkpoint is not None and step % checkpoint_every == 0:
            _save_atomic(
                {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "elapsed": time.time() - start,
                    "log_steps": log.steps,
                    "log_losses": log.losses,
                },
                checkpoint,
            )
    unet.eval()
    text_encoder.eval()
    log.seconds, log.total_steps = time.time() - start, step
    return log


def save_log(path: Path, **logs: LoopLog) -> None:
    """Write loss histories as JSON."""
    path.write_text(json.dumps({k: v.__dict__ for k, v in logs.items()}, indent=1))
