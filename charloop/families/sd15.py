"""Stable Diffusion 1.x (and its fine-tunes): one CLIP text encoder, a 4-channel UNet."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from charloop.families.base import TextParts, tokenize
from charloop.families.unet import UNetFamily


class SD15(UNetFamily):
    """SD1.5: ``StableDiffusionPipeline``; the UNet reads the last hidden state of CLIP."""

    name: ClassVar[str] = "sd15"
    pipeline_class: ClassVar[str] = "StableDiffusionPipeline"
    controlnet_pipeline_class: ClassVar[str] = "StableDiffusionControlNetPipeline"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    kohya_text_prefixes: ClassVar[tuple[str, ...]] = ("lora_te",)
    architecture: ClassVar[str] = "stable-diffusion-v1/lora"
    base_version: ClassVar[str] = "sd_v1"
    invoke_base: ClassVar[str] = "sd-1"

    def load_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    @torch.no_grad()
    def encode_prompts(self, pipe: Any, captions: list[str]) -> TextParts:
        ids = tokenize(pipe.tokenizer, captions).to(pipe.device)
        return {"hidden": pipe.text_encoder(ids)[0].float().cpu()}

    def encode_trainable(
        self, encoders: list[Any], ids: list[torch.Tensor], cached: TextParts | None
    ) -> TextParts:
        (encoder,), (token_ids,) = encoders, ids
        device = next(encoder.parameters()).device
        return {"hidden": encoder(token_ids.to(device))[0]}

    def denoiser_inputs(self, text: TextParts, sizes: torch.Tensor | None) -> dict[str, Any]:
        return {"encoder_hidden_states": text["hidden"]}


FAMILY = SD15()
