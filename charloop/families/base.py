"""The model-family interface: what every stage asks of a base-model architecture.

A family is one module holding one ``ModelFamily`` subclass. It names the diffusers
pipeline classes, encodes prompts (for the cache and for a trained text encoder), turns
cached text and image-size facts into the denoiser's inputs, loads the text encoders for
training, and writes LoRA files the way the family's tools expect. The stages call these
methods and nothing else family-specific, so a new family is a module plus its tests.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

TextParts = dict[str, torch.Tensor]
"""Encoded prompts by part name: ``hidden`` (N, tokens, width) and, where the family
has one, ``pooled`` (N, width). Every part is cached with the caption's entry."""


@dataclass(frozen=True)
class CropGeometry:
    """How a training image was fitted to its training size (SDXL conditions on it)."""

    original: tuple[int, int]  # (height, width) of the file
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image
    target: tuple[int, int]  # (height, width) trained at

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(
            [*self.original, *self.crop_top_left, *self.target], dtype=torch.float32
        )


class ModelFamily(ABC):
    """One base-model architecture (SD1.5, SDXL, ...), as the stages see it."""

    name: ClassVar[str]
    """The ``base_model.family`` value, e.g. 'sd15'."""
    pipeline_class: ClassVar[str]
    """diffusers text-to-image pipeline class (``model_index.json``'s ``_class_name``)."""
    controlnet_pipeline_class: ClassVar[str]
    """diffusers ControlNet pipeline class built from the same components."""
    text_encoders: ClassVar[tuple[str, ...]]
    """Pipeline component names of the text encoders, in kohya prefix order."""
    tokenizers: ClassVar[tuple[str, ...]]
    """Pipeline component names of their tokenizers."""
    kohya_text_prefixes: ClassVar[tuple[str, ...]]
    """kohya key prefix of each text encoder ('lora_te', or 'lora_te1'/'lora_te2')."""
    architecture: ClassVar[str]
    """SAI model-spec architecture of a LoRA on this family ('<base>/lora')."""
    base_version: ClassVar[str]
    """sd-scripts' ``ss_base_model_version`` (A1111 and kohya tools read it)."""
    invoke_base: ClassVar[str]
    """The base InvokeAI must classify this family's LoRAs as."""
    default_buckets: ClassVar[bool] = False
    """Whether aspect-ratio buckets are on when ``train.buckets`` is 'auto'."""

    def pipeline_type(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def controlnet_pipeline_type(self) -> Any:
        import diffusers

        return getattr(diffusers, self.controlnet_pipeline_class)

    def load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments of the text-to-image pipeline."""
        return {}

    @abstractmethod
    def encode_prompts(self, pipe: Any, captions: list[str]) -> TextParts:
        """Frozen-encoder embeddings of ``captions`` (float32, CPU), as the cache stores them."""

    def token_ids(self, pipe: Any, captions: list[str]) -> list[torch.Tensor]:
        """Token ids per tokenizer (padded to its max length), for a trained text encoder."""
        return [tokenize(getattr(pipe, name), captions) for name in self.tokenizers]

    @abstractmethod
    def encode_trainable(self, encoders: list[Any], ids: list[torch.Tensor]) -> TextParts:
        """The same parts as ``encode_prompts``, from text encoders being trained."""

    @abstractmethod
    def denoiser_inputs(self, text: TextParts, sizes: torch.Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the UNet call besides the noisy latents and timesteps.

        Args:
            text: A batch of encoded prompts (on the training device).
            sizes: (N, 6) crop geometry rows (``CropGeometry.as_tensor``), or None.
        """

    def text_encoder_classes(self) -> tuple[str, ...]:
        """transformers classes of ``text_encoders`` (for loading them to train)."""
        return ("CLIPTextModel",) * len(self.text_encoders)

    def load_text_encoders(self, ref: str, revision: str | None, dtype: torch.dtype) -> list[Any]:
        """The text encoders, freshly loaded (to add LoRA layers to)."""
        import transformers

        return [
            getattr(transformers, cls).from_pretrained(
                ref, subfolder=name, revision=revision or "main", dtype=dtype
            )
            for cls, name in zip(self.text_encoder_classes(), self.text_encoders, strict=True)
        ]

    def save_diffusers_lora(
        self,
        out_dir: Path,
        unet: dict[str, torch.Tensor],
        unet_config: dict[str, Any],
        text: dict[str, dict[str, torch.Tensor]],
        text_configs: dict[str, dict[str, Any]],
    ) -> None:
        """Write ``pytorch_lora_weights.safetensors`` through the pipeline's own saver."""
        kwargs: dict[str, Any] = {}
        for name in self.text_encoders:
            if text.get(name):
                kwargs[f"{name}_lora_layers"] = text[name]
                kwargs[f"{name}_lora_adapter_metadata"] = text_configs.get(name)
        self.pipeline_type().save_lora_weights(
            out_dir,
            unet_lora_layers=unet,
            safe_serialization=True,
            unet_lora_adapter_metadata=unet_config,
            **kwargs,
        )

    def kohya_unet_name(self, path: str, unet_config: dict[str, Any]) -> str:
        """The module path sd-scripts uses for a diffusers UNet module path."""
        return path

    def geometry(self, size: tuple[int, int], resolution: int) -> CropGeometry:
        """Centre crop of a (width, height) image to a square of ``resolution``."""
        return centre_crop(size, (resolution, resolution))


def centre_crop(size: tuple[int, int], target: tuple[int, int]) -> CropGeometry:
    """Resize (width, height) ``size`` to cover ``target`` (height, width), crop the centre."""
    width, height = size
    scale = max(target[0] / height, target[1] / width)
    resized = (max(target[1], round(width * scale)), max(target[0], round(height * scale)))
    top, left = (resized[1] - target[0]) // 2, (resized[0] - target[1]) // 2
    return CropGeometry((height, width), (top, left), target)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
