"""world-sd15: ``StableDiffusionPipeline`` (one CLIP text encoder, epsilon prediction)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from charloop_world import base_model
from charloop_world.arch.base import Batch, Components, WorldArch
from charloop_world.arch.ddpm import epsilon_loss
from charloop_world.train_base import autocast


class SD15(WorldArch):
    """The world's SD1.5: 64 px, 16x16x4 latents, cross-attention at 16x16 and 8x8."""

    family: ClassVar[str] = "sd15"
    description: ClassVar[str] = (
        "A small Stable Diffusion 1.5-architecture pipeline (diffusers format: AutoencoderKL, "
        "CLIPTextModel + CLIPTokenizer, UNet2DConditionModel, DDIM scheduler config, epsilon "
        "prediction, no safety checker). 64x64 images, 16x16x4 latents."
    )

    def new_components(self, seed: int) -> Components:
        vae, text_encoder, tokenizer, unet = base_model.new_components(seed)
        return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet}

    def loss(
        self, components: Components, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(batch.latents.device):
            hidden = components["text_encoder"](batch.ids[0])[0]
        return epsilon_loss(components["unet"], batch.latents, {"encoder_hidden_states": hidden})

    def scheduler(self) -> Any:
        return base_model.build_scheduler()

    def pipeline_options(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


ARCH = SD15()
