"""Stable Diffusion XL and its community bases (Pony, Illustrious, NoobAI, v-prediction).

Two text encoders (CLIP ViT-L and OpenCLIP bigG): the penultimate hidden states of both,
concatenated, condition the UNet's cross-attention; the second one's projected pooled
output plus the image's size and crop facts (``time_ids``) form its added conditioning.
The LoRA names kohya tools use come from the original (ldm) UNet layout: see
:mod:`charloop.families.ldm_names`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from charloop.families.base import TextParts, tokenize
from charloop.families.ldm_names import ldm_unet_name
from charloop.families.unet import UNetFamily


def encode_pair(encoders: list[Any], ids: list[torch.Tensor]) -> TextParts:
    """diffusers' SDXL prompt encoding: penultimate hidden states of both encoders
    concatenated, and the pooled (projected) output of the last one."""
    hidden, pooled = [], None
    for encoder, token_ids in zip(encoders, ids, strict=True):
        device = next(encoder.parameters()).device
        out = encoder(token_ids.to(device), output_hidden_states=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])
    assert pooled is not None
    return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}


class SDXL(UNetFamily):
    """SDXL: ``StableDiffusionXLPipeline``, size-conditioned, trained at many aspect ratios."""

    name: ClassVar[str] = "sdxl"
    pipeline_class: ClassVar[str] = "StableDiffusionXLPipeline"
    controlnet_pipeline_class: ClassVar[str] = "StableDiffusionXLControlNetPipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer", "tokenizer_2")
    kohya_text_prefixes: ClassVar[tuple[str, ...]] = ("lora_te1", "lora_te2")
    architecture: ClassVar[str] = "stable-diffusion-xl-v1-base/lora"
    base_version: ClassVar[str] = "sdxl_base_v1-0"
    invoke_base: ClassVar[str] = "sdxl"
    default_buckets: ClassVar[bool] = True

    def text_encoder_classes(self) -> tuple[str, ...]:
        return ("CLIPTextModel", "CLIPTextModelWithProjection")

    @torch.no_grad()
    def encode_prompts(self, pipe: Any, captions: list[str]) -> TextParts:
        encoders = [pipe.text_encoder, pipe.text_encoder_2]
        ids = [tokenize(pipe.tokenizer, captions), tokenize(pipe.tokenizer_2, captions)]
        return {k: v.float().cpu() for k, v in encode_pair(encoders, ids).items()}

    def encode_trainable(
        self, encoders: list[Any], ids: list[torch.Tensor], cached: TextParts | None
    ) -> TextParts:
        return encode_pair(encoders, ids)

    def denoiser_inputs(self, text: TextParts, sizes: torch.Tensor | None) -> dict[str, Any]:
        hidden = text["hidden"]
        if sizes is None:
            raise ValueError("SDXL needs each image's size and crop (time_ids)")
        time_ids = sizes.to(hidden.device, hidden.dtype)
        return {
            "encoder_hidden_states": hidden,
            "added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": time_ids},
        }

    def kohya_unet_name(self, path: str, unet_config: dict[str, Any]) -> str:
        return ldm_unet_name(path, unet_config)


FAMILY = SDXL()
