"""The LoRA-able modules of a base model, by name and weight shape, built on the meta device.

Consumers resolve a LoRA file's keys against the base model's module tree; the checker
does the same against this map. The reference SD1.5 layout is diffusers' default
``UNet2DConditionModel`` with 768-wide cross-attention and a ViT-L/14 CLIP text encoder
(``openai/clip-vit-large-patch14``'s config); the SDXL one is SDXL 1.0's UNet with CLIP
ViT-L and OpenCLIP bigG; a local pipeline folder gives its own layout (the tiny test
models, a fine-tuned base). Nothing is downloaded or allocated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class BaseModules:
    """Module path (diffusers naming, CLIP without ``text_model.``) -> weight shape, for the
    UNet and each text encoder (by pipeline component name)."""

    family: str
    unet: dict[str, tuple[int, ...]]
    text_encoders: dict[str, dict[str, tuple[int, ...]]]
    unet_config: dict[str, Any] = field(default_factory=dict)

    @property
    def text_encoder(self) -> dict[str, tuple[int, ...]]:
        """The first (or only) text encoder's modules."""
        return self.text_encoders.get("text_encoder", {})

    def table(self, component: str) -> dict[str, tuple[int, ...]]:
        """The modules of ``component`` ('unet', 'text_encoder', 'text_encoder_2')."""
        return self.unet if component == "unet" else self.text_encoders.get(component, {})

    @property
    def token_length(self) -> int:
        """Cross-attention context width (what InvokeAI reads to tell SD1 from SD2/SDXL)."""
        for name, shape in self.unet.items():
            if name.endswith("attn2.to_k"):
                return shape[1]
        return 0


def _shapes(model: Any, strip: str = "") -> dict[str, tuple[int, ...]]:
    return {
        name.removeprefix(strip): tuple(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
    }


_TEXT_KEYS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "projection_dim", "vocab_size", "max_position_embeddings", "bos_token_id",
              "eos_token_id", "pad_token_id"}  # fmt: skip


def _build(
    family: str, unet_config: dict[str, Any], text_configs: list[dict[str, Any]]
) -> BaseModules:
    import transformers
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from charloop.families import get_family

    spec = get_family(family)
    texts = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        for name, cls, config in zip(
            spec.text_encoders, spec.text_encoder_classes(), text_configs, strict=True
        ):
            model = getattr(transformers, cls)(CLIPTextConfig(**config))
            texts[name] = _shapes(model, strip="text_model.")
    return BaseModules(family, _shapes(unet), texts, dict(unet.config))


_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "projection_dim": 768}  # fmt: skip
_CLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
               "num_attention_heads": 20, "projection_dim": 1280}  # fmt: skip


def sd15_reference() -> BaseModules:
    """The SD1.5 layout every SD1.5 fine-tune shares."""
    return _build("sd15", {"cross_attention_dim": 768, "attention_head_dim": 8}, [_CLIP_L])


SDXL_UNET = {
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2, "projection_class_embeddings_input_dim": 2816,
    "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
    "sample_size": 128,
}  # fmt: skip
"""stabilityai/stable-diffusion-xl-base-1.0's UNet config (Pony, Illustrious and NoobAI
share it)."""


def sdxl_reference() -> BaseModules:
    """The SDXL 1.0 layout (CLIP ViT-L + OpenCLIP bigG, the 2.6 B-parameter UNet)."""
    return _build("sdxl", SDXL_UNET, [_CLIP_L, _CLIP_BIG_G])


def reference(family: str) -> BaseModules:
    """The reference layout of ``family``."""
    return {"sd15": sd15_reference, "sdxl": sdxl_reference}[family]()


def from_pipeline_folder(folder: Path) -> BaseModules:
    """The layout of a local diffusers pipeline folder (its UNet and text encoders).

    Raises:
        FileNotFoundError: the folder has no ``unet/config.json``.
    """
    from charloop.families.detect import resolve_family

    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        raise FileNotFoundError(f"{folder} holds no diffusers UNet (unet/config.json)")
    family = resolve_family("auto", str(folder))
    texts = []
    for name in family.text_encoders:
        text = json.loads((folder / name / "config.json").read_text(encoding="utf-8"))
        texts.append({k: text[k] for k in set(text) & _TEXT_KEYS})
    return _build(family.name, json.loads(unet_config.read_text()), texts)
