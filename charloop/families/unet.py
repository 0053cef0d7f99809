"""What the UNet families (SD1.5, SDXL) share: DDPM training on the base's noise schedule."""

from __future__ import annotations

from typing import Any

from charloop.families.base import ModelFamily
from charloop.families.objectives import DiffusionObjective, Objective


class UNetFamily(ModelFamily):
    """A latent-diffusion family with a ``UNet2DConditionModel`` trained by DDPM."""

    def objective(self, ref: str, revision: str | None, base: Any, tp: Any) -> Objective:
        """DDPM on the base's scheduler config, with the resolved prediction type and
        terminal-SNR handling (``base.scheduler_overrides``)."""
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_pretrained(ref, subfolder="scheduler", revision=revision)
        overrides = base.scheduler_overrides(scheduler.config)
        if overrides:
            scheduler = DDPMScheduler.from_config(scheduler.config, **overrides)
        return DiffusionObjective(scheduler)
