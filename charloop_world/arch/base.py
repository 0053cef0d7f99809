"""What a world base-model architecture provides to the builder (one module per family).

The world base models are the procedural world's stand-ins for SD1.5, SDXL and FLUX:
the real diffusers classes of each family at small widths, trained from scratch on world
renders. The builder (:mod:`charloop_world.build_base`) and the training loop
(:mod:`charloop_world.train_base`) are shared; an architecture says which components
exist, which of them train, how a batch is conditioned and what the loss is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

Components = dict[str, Any]
"""Pipeline components by their diffusers name (``vae``, ``unet`` or ``transformer``,
``text_encoder``, ``tokenizer``, ...)."""


@dataclass
class Batch:
    """One training batch on the device.

    Attributes:
        latents: Clean, scaled (and shifted) latents ``(n, c, h, w)``.
        ids: Token ids per tokenizer of the architecture.
        sizes: ``(n, 6)`` SDXL size facts (original h/w, crop top/left, target h/w) or None.
    """

    latents: torch.Tensor
    ids: list[torch.Tensor]
    sizes: torch.Tensor | None = None


class WorldArch(ABC):
    """A world base-model architecture."""

    family: ClassVar[str]
    """charloop's ``base_model.family`` value of the saved pipeline."""
    denoiser: ClassVar[str] = "unet"
    """Component name of the denoiser."""
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    """Component names of the text encoders (all trained jointly with the denoiser)."""
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    """Component names of the tokenizers, one per text encoder."""
    latent_channels: ClassVar[int] = 4
    quant_conv: ClassVar[bool] = True
    """Whether the VAE has SD's quant convolutions (FLUX's has none)."""
    latent_shift: ClassVar[bool] = False
    """Whether latents are shifted by their mean (FLUX's ``shift_factor``) before scaling."""
    description: ClassVar[str]
    """One paragraph for the model card: the classes and what is family-specific."""
    objective_text: ClassVar[str] = "min-SNR-5 weighted epsilon loss"
    target_text: ClassVar[str] = "epsilon MSE"
    sampler_text: ClassVar[str] = "DPM-Solver"

    @property
    def folder(self) -> str:
        """The model's folder name under ``models/``."""
        return f"world-{self.family}"

    def trainable(self, components: Components) -> dict[str, Any]:
        """Modules trained by the diffusion loop, by component name."""
        return {name: components[name] for name in (self.denoiser, *self.text_encoders)}

    @abstractmethod
    def new_components(self, seed: int) -> Components:
        """Freshly initialised components (VAE, text encoders, tokenizers, denoiser)."""

    def build_vae(self) -> Any:
        """A fresh ``AutoencoderKL`` (also used to load a VAE checkpoint)."""
        from charloop_world.base_model import build_vae

        return build_vae(self.latent_channels, self.quant_conv)

    @abstractmethod
    def loss(
        self, components: Components, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss to optimise, unweighted mean squared error)`` of one batch."""

    @abstractmethod
    def scheduler(self) -> Any:
        """The sampling scheduler the saved pipeline ships with."""

    def pipeline_options(self) -> dict[str, Any]:
        """Pipeline constructor arguments besides the components and the scheduler."""
        return {}

    def assemble(self, components: Components) -> Any:
        """The family's text-to-image pipeline from trained components."""
        return self.pipeline_type()(
            scheduler=self.scheduler(), **components, **self.pipeline_options()
        )

    def pipeline_type(self) -> Any:
        """The diffusers pipeline class (charloop's family says which)."""
        from charloop.families import get_family

        return get_family(self.family).pipeline_type()

    def batch_geometry(
        self, latents: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's latents as trained (crops for a bucket) and their size facts."""
        return latents, None
