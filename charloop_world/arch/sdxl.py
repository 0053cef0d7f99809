"""world-sdxl: ``StableDiffusionXLPipeline`` at the world's scale.

What makes it SDXL and not SD1.5 with another name: two text encoders (``CLIPTextModel``
and ``CLIPTextModelWithProjection``) whose penultimate hidden states, concatenated, feed
cross-attention, the second one's projected pooled output plus the size facts
(``time_ids``: original size, crop top-left, target size) as the UNet's added
conditioning (``addition_embed_type="text_time"``), SDXL's block layout (no attention at
the highest resolution, linear projections, two transformer layers at the lowest) and
multi-aspect training: a share of batches trains on a landscape or portrait crop of the
render with the crop's real offset in ``time_ids``, as SDXL's buckets and random crops do.
Generation asks for crop (0, 0), the uncropped composition.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from charloop.families.sdxl import encode_pair
from charloop_world import base_model
from charloop_world.arch.base import Batch, Components, WorldArch
from charloop_world.arch.ddpm import epsilon_loss
from charloop_world.tokenizer import build_world_tokenizer
from charloop_world.train_base import autocast

TEXT_WIDTH = 64
"""Hidden width of each text encoder (cross-attention sees both: 128)."""
TIME_EMBED = 8
LATENT = 16
"""Latent side of a 64 px render (the VAE downsamples 4x)."""
CROP_SHAPES = ((16, 16), (12, 16), (16, 12))
"""Latent (height, width) a batch trains at: the square, 48x64 landscape, 64x48 portrait."""
CROP_WEIGHTS = (0.6, 0.2, 0.2)


def build_unet() -> Any:
    """SDXL's UNet layout at small widths (cross-attention at 8x8 and 4x4)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH,
        norm_num_groups=16,
    )


class SDXL(WorldArch):
    """The world's SDXL."""

    family: ClassVar[str] = "sdxl"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    description: ClassVar[str] = (
        "A small Stable Diffusion XL-architecture pipeline (diffusers format: AutoencoderKL, "
        "CLIPTextModel + CLIPTextModelWithProjection with their tokenizers, "
        "UNet2DConditionModel with text_time added conditioning, DDIM scheduler config, "
        "epsilon prediction). 64x64 images, 16x16x4 latents; trained on squares and on "
        "48x64 / 64x48 crops with their real offsets in time_ids."
    )

    def new_components(self, seed: int) -> Components:
        torch.manual_seed(seed)
        tokenizer = build_world_tokenizer()
        return {
            "vae": self.build_vae(),
            "text_encoder": base_model.build_text_encoder(len(tokenizer), TEXT_WIDTH),
            "text_encoder_2": base_model.build_text_encoder(len(tokenizer), TEXT_WIDTH, True),
            "tokenizer": tokenizer,
            "tokenizer_2": build_world_tokenizer(),
            "unet": build_unet(),
        }

    def batch_geometry(
        self, latents: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, w = CROP_SHAPES[int(rng.choice(len(CROP_SHAPES), p=CROP_WEIGHTS))]
        top, left = int(rng.integers(0, LATENT - h + 1)), int(rng.integers(0, LATENT - w + 1))
        crop = latents[:, :, top : top + h, left : left + w]
        scale = 64 // LATENT  # pixels per latent cell
        facts = [64, 64, top * scale, left * scale, h * scale, w * scale]
        sizes = torch.tensor([facts] * len(latents), dtype=torch.float32, device=latents.device)
        return crop, sizes

    def loss(
        self, components: Components, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        encoders = [components[name] for name in self.text_encoders]
        with autocast(batch.latents.device):
            text = encode_pair(encoders, batch.ids)
        assert batch.sizes is not None
        cond = {
            "encoder_hidden_states": text["hidden"],
            "added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": batch.sizes},
        }
        return epsilon_loss(components["unet"], batch.latents, cond)

    def scheduler(self) -> Any:
        return base_model.build_scheduler()

    def pipeline_options(self) -> dict[str, Any]:
        # the empty negative prompt is encoded, as the empty captions were in training
        return {"force_zeros_for_empty_prompt": False}


ARCH = SDXL()
