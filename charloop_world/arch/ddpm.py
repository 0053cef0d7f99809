"""The DDPM objective the UNet world models train with (SD1.5 and SDXL alike)."""

from __future__ import annotations

from typing import Any

import torch

from charloop_world.base_model import build_scheduler
from charloop_world.train_base import autocast

MIN_SNR_GAMMA = 5.0


_ALPHAS: dict[torch.device, torch.Tensor] = {}


def _alphas(device: torch.device) -> torch.Tensor:
    if device not in _ALPHAS:
        _ALPHAS[device] = build_scheduler().alphas_cumprod.float().to(device)
    return _ALPHAS[device]


def epsilon_loss(
    unet: Any, latents: torch.Tensor, cond: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-SNR-5 weighted epsilon loss at uniform timesteps, and the plain MSE.

    ``cond``: the UNet's keyword inputs besides the noisy latents and timesteps.
    """
    alphas = _alphas(latents.device)
    noise = torch.randn_like(latents)
    t = torch.randint(0, len(alphas), (len(latents),), device=latents.device)
    a = alphas[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    with autocast(latents.device):
        pred = unet(noisy, t, **cond).sample.float()
    snr = alphas[t] / (1 - alphas[t])
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_sample).mean(), per_sample.mean().detach()
