"""Training objectives: what a family's denoiser learns to predict, at which noise levels.

- :class:`DiffusionObjective` (SD1.5, SDXL): DDPM noise schedule, epsilon or velocity
  target, optional min-SNR-gamma weighting (Hang et al. 2023); timesteps uniform over the
  schedule's ``num_train_timesteps``.
- :class:`FlowMatchingObjective` (FLUX): rectified flow. ``x_t = (1 - s) x + s e`` at
  sigma ``s``; the target is the velocity ``e - x``; sigmas drawn from a logit-normal
  (SD3 paper, Esser et al. 2024; the default of diffusers' ``train_dreambooth_lora_flux.py``)
  or uniformly, then shifted ``s' = shift s / (1 + (shift - 1) s)`` (SD3 section 5.3.2;
  FLUX.1's own scheduler config uses shift 3).

Both see timesteps as integers in [0, 1000): the validation loss's fixed timesteps mean
the same noise levels for every family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

NUM_TIMESTEPS = 1000


class Objective(ABC):
    """How training noises latents, what the denoiser predicts, and the loss."""

    @abstractmethod
    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` training timesteps (integers in [0, 1000)), drawn from ``generator``."""

    @abstractmethod
    def loss(
        self,
        denoiser: Any,
        latents: torch.Tensor,
        cond: dict[str, Any],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        min_snr_gamma: float | None,
    ) -> torch.Tensor:
        """The batch loss (``cond``: the denoiser's conditioning keyword inputs)."""


def snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023)."""
    alphas = noise_scheduler.alphas_cumprod.to(torch.float32)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


@dataclass
class DiffusionObjective(Objective):
    """DDPM training of a UNet: predict the noise (epsilon) or the velocity."""

    scheduler: Any
    """A ``DDPMScheduler`` with the base's betas, prediction type and terminal SNR."""

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        steps = self.scheduler.config.num_train_timesteps
        return torch.randint(0, steps, (n,), generator=generator)

    def loss(
        self,
        denoiser: Any,
        latents: torch.Tensor,
        cond: dict[str, Any],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        min_snr_gamma: float | None,
    ) -> torch.Tensor:
        scheduler = self.scheduler
        device = latents.device
        noisy = scheduler.add_noise(latents, noise, timesteps.cpu()).to(device)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps.cpu())
        else:
            target = noise
        prediction = denoiser(noisy, timesteps.to(device), **cond).sample
        per_sample = F.mse_loss(prediction.float(), target.to(device).float(), reduction="none")
        per_sample = per_sample.mean(dim=list(range(1, per_sample.ndim)))
        if min_snr_gamma is not None:
            weights = snr_weights(scheduler, timesteps.cpu(), min_snr_gamma)
            per_sample = per_sample * weights.to(device)
        return per_sample.mean()


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift: more training at high noise for larger images."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass
class FlowMatchingObjective(Objective):
    """Rectified-flow training of a FLUX transformer on packed latents.

    The family supplies ``predict``: packed-token bookkeeping (2x2 patches, position ids,
    guidance) lives with the architecture, the noise and target here.
    """

    predict: Any
    """``(denoiser, noisy_latents, sigmas, cond) -> prediction`` in latent layout."""
    sampling: str = "logit_normal"
    """'logit_normal' or 'uniform' sigmas before the shift."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.sampling == "logit_normal":
            normal = torch.randn(n, generator=generator)
            u = torch.sigmoid(self.logit_mean + self.logit_std * normal)
        else:
            u = torch.rand(n, generator=generator)
        sigmas = shift_sigmas(u, self.shift)
        return (sigmas * NUM_TIMESTEPS).long().clamp(0, NUM_TIMESTEPS - 1)

    def loss(
        self,
        denoiser: Any,
        latents: torch.Tensor,
        cond: dict[str, Any],
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        min_snr_gamma: float | None,  # a DDPM weighting: flow matching has none
    ) -> torch.Tensor:
        device = latents.device
        sigmas = (timesteps.float() / NUM_TIMESTEPS).to(device)
        expand = sigmas.view(-1, *([1] * (latents.ndim - 1)))
        noisy = (1.0 - expand) * latents + expand * noise.to(device)
        prediction = self.predict(denoiser, noisy, sigmas, cond)
        target = noise.to(device) - latents
        return F.mse_loss(prediction.float(), target.float())
