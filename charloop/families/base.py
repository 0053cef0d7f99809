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

from charloop.families.objectives import Objective

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
    """One base-model architecture (SD1.5, SDXL, FLUX, ...), as the stages see it."""

    name: ClassVar[str]
    """The ``base_model.family`` value, e.g. 'sd15'."""
    pipeline_class: ClassVar[str]
    """diffusers text-to-image pipeline class (``model_index.json``'s ``_class_name``)."""
    controlnet_pipeline_class: ClassVar[str]
    """diffusers ControlNet pipeline class built from the same components."""
    controlnet_model_class: ClassVar[str] = "ControlNetModel"
    """diffusers class of the family's ControlNet weights."""
    control_image_kwarg: ClassVar[str] = "image"
    """The ControlNet pipeline's argument for the control maps."""
    denoiser: ClassVar[tuple[str, str]] = ("unet", "UNet2DConditionModel")
    """(pipeline component and subfolder, diffusers class) of the denoiser that gets the LoRA;
    the component name is also the key prefix of the diffusers LoRA file."""
    text_encoders: ClassVar[tuple[str, ...]]
    """Pipeline component names of the text encoders (all of them feed the cache)."""
    tokenizers: ClassVar[tuple[str, ...]]
    """Pipeline component names of their tokenizers."""
    trainable_text_encoders: ClassVar[tuple[str, ...]] = ()
    """Text encoders ``train.train_text_encoder`` adds LoRA layers to (default: all)."""
    kohya_text_prefixes: ClassVar[tuple[str, ...]]
    """kohya key prefix of each trainable text encoder ('lora_te', 'lora_te1'/'lora_te2')."""
    default_targets: ClassVar[tuple[str, ...]] = ("to_q", "to_k", "to_v", "to_out.0")
    """Denoiser modules that get LoRA layers when ``train.target_modules`` is not set."""
    architecture: ClassVar[str]
    """SAI model-spec architecture of a LoRA on this family ('<base>/lora')."""
    base_version: ClassVar[str]
    """sd-scripts' ``ss_base_model_version`` (A1111 and kohya tools read it)."""
    invoke_base: ClassVar[str]
    """The base InvokeAI must classify this family's LoRAs as."""
    prediction_type: ClassVar[str | None] = None
    """The family's fixed prediction type for adapter headers ('flow' for flow matching);
    None: the base's scheduler config says (epsilon or v_prediction)."""
    default_buckets: ClassVar[bool] = False
    """Whether aspect-ratio buckets are on when ``train.buckets`` is 'auto'."""
    ip_adapter: ClassVar[bool] = True
    """Whether ``generate.ip_adapter`` (the h94/IP-Adapter format) serves this family."""
    caches_frozen_text: ClassVar[bool] = False
    """Whether prompts are cached even when text encoders are trained (a family with a
    frozen encoder too large to load for training: FLUX's T5)."""

    def trained_text_encoders(self) -> tuple[str, ...]:
        return self.trainable_text_encoders or self.text_encoders

    def pipeline_type(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def controlnet_pipeline_type(self) -> Any:
        import diffusers

        return getattr(diffusers, self.controlnet_pipeline_class)

    def sampling_kwargs(self, pipe: Any, guidance: float) -> dict[str, Any]:
        """Pipeline call arguments for classifier-free guidance at ``guidance`` (and any
        other per-base sampling facts the family reads from the loaded pipeline)."""
        return {"guidance_scale": guidance}

    def prepare_training_device(self, device: torch.device) -> None:
        """Process-wide backend settings this family's training step needs on ``device``
        (called once before the first step; nothing by default)."""
        del device  # most families need no setting

    def load_kwargs(self) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments of the text-to-image pipeline."""
        return {}

    @abstractmethod
    def encode_prompts(self, pipe: Any, captions: list[str]) -> TextParts:
        """Frozen-encoder embeddings of ``captions`` (float32, CPU), as the cache stores them."""

    def token_ids(self, pipe: Any, captions: list[str]) -> list[torch.Tensor]:
        """Token ids for each trainable text encoder (padded to its max length)."""
        names = [self.tokenizers[self.text_encoders.index(t)] for t in self.trained_text_encoders()]
        return [tokenize(getattr(pipe, name), captions) for name in names]

    @abstractmethod
    def encode_trainable(
        self, encoders: list[Any], ids: list[torch.Tensor], cached: TextParts | None
    ) -> TextParts:
        """The same parts as ``encode_prompts``, from the text encoders being trained
        (``trained_text_encoders`` order) and the cached parts of frozen ones."""

    @abstractmethod
    def denoiser_inputs(self, text: TextParts, sizes: torch.Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the denoiser call besides the noisy latents and timesteps.

        Args:
            text: A batch of encoded prompts (on the training device).
            sizes: (N, 6) crop geometry rows (``CropGeometry.as_tensor``), or None.
        """

    @abstractmethod
    def objective(self, ref: str, revision: str | None, base: Any, tp: Any) -> Objective:
        """The training objective for base ``ref`` (``base``: its ResolvedBase facts,
        ``tp``: the train params)."""

    def text_encoder_classes(self) -> tuple[str, ...]:
        """transformers classes of ``trained_text_encoders`` (for loading them to train)."""
        return ("CLIPTextModel",) * len(self.trained_text_encoders())

    def load_text_encoders(self, ref: str, revision: str | None, dtype: torch.dtype) -> list[Any]:
        """The trainable text encoders, freshly loaded (to add LoRA layers to)."""
        import transformers

        names = self.trained_text_encoders()
        return [
            getattr(transformers, cls).from_pretrained(
                ref, subfolder=name, revision=revision or "main", dtype=dtype
            )
            for cls, name in zip(self.text_encoder_classes(), names, strict=True)
        ]

    def load_denoiser(
        self,
        ref: str,
        revision: str | None,
        dtype: torch.dtype,
        weights: str = "unquantized",
        device: torch.device | None = None,
    ) -> Any:
        """The frozen denoiser in ``dtype``, its Linear weights in ``weights`` format
        (``train.memory.weights``: see :mod:`charloop.families.quantize`)."""
        import diffusers

        from charloop.families.quantize import quantization_config, quantize_nf4

        component, cls = self.denoiser
        device = device or torch.device("cpu")
        extra: dict[str, Any] = {}
        if (config := quantization_config(weights, dtype, device)) is not None:
            extra["quantization_config"] = config
        model = getattr(diffusers, cls).from_pretrained(
            ref, subfolder=component, revision=revision, torch_dtype=dtype, **extra
        )
        if weights == "nf4" and not extra:  # diffusers' bitsandbytes loader needs a GPU
            quantize_nf4(model, dtype)
        return model

    def save_diffusers_lora(
        self,
        out_dir: Path,
        denoiser: dict[str, torch.Tensor],
        denoiser_config: dict[str, Any],
        text: dict[str, dict[str, torch.Tensor]],
        text_configs: dict[str, dict[str, Any]],
    ) -> None:
        """Write ``pytorch_lora_weights.safetensors`` through the pipeline's own saver."""
        component = self.denoiser[0]
        kwargs: dict[str, Any] = {
            f"{component}_lora_layers": denoiser,
            f"{component}_lora_adapter_metadata": denoiser_config,
        }
        for name in self.trained_text_encoders():
            if text.get(name):
                kwargs[f"{name}_lora_layers"] = text[name]
                kwargs[f"{name}_lora_adapter_metadata"] = text_configs.get(name)
        self.pipeline_type().save_lora_weights(out_dir, safe_serialization=True, **kwargs)

    def kohya_denoiser(
        self, state: dict[str, torch.Tensor], config: dict[str, Any], alpha: float
    ) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None, float]]:
        """kohya module path -> (down, up, alpha) of a peft denoiser LoRA."""
        return {
            self.kohya_unet_name(module, config): (w.get("A"), w.get("B"), alpha)
            for module, w in lora_pairs(state).items()
        }

    def kohya_unet_name(self, path: str, unet_config: dict[str, Any]) -> str:
        """The module path sd-scripts uses for a diffusers denoiser module path."""
        return path


def lora_pairs(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Module path -> {'A': down, 'B': up} of a peft LoRA state dict.

    Raises:
        ValueError: a key that is not ``<module>.lora_A.weight`` / ``.lora_B.weight``.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, part = key.rpartition(".lora_")
        if not module or part not in ("A.weight", "B.weight"):
            raise ValueError(f"not a peft LoRA weight key: {key}")
        pairs.setdefault(module, {})[part[0]] = value
    return pairs


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
