"""The LoRA-able modules of a base model, by name and weight shape, built on the meta device.

Consumers resolve a LoRA file's keys against the base model's module tree; the checker
does the same against this map. The reference SD1.5 layout is diffusers' default
``UNet2DConditionModel`` with 768-wide cross-attention and a ViT-L/14 CLIP text encoder
(``openai/clip-vit-large-patch14``'s config); a local pipeline folder gives its own
layout (the tiny test models, a fine-tuned base). Nothing is downloaded or allocated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class BaseModules:
    """Module path (diffusers naming, CLIP without ``text_model.``) -> weight shape."""

    family: str
    unet: dict[str, tuple[int, ...]]
    text_encoder: dict[str, tuple[int, ...]]

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


def _build(unet_config: dict[str, Any], text_config: dict[str, Any]) -> BaseModules:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        text = CLIPTextModel(CLIPTextConfig(**text_config))
    return BaseModules("sd15", _shapes(unet), _shapes(text, strip="text_model."))


def sd15_reference() -> BaseModules:
    """The SD1.5 layout every SD1.5 fine-tune shares."""
    text = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "projection_dim": 768}  # fmt: skip
    return _build({"cross_attention_dim": 768, "attention_head_dim": 8}, text)


def from_pipeline_folder(folder: Path) -> BaseModules:
    """The layout of a local diffusers pipeline folder (its ``unet`` and ``text_encoder``).

    Raises:
        FileNotFoundError: the folder has no ``unet/config.json``.
    """
    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        raise FileNotFoundError(f"{folder} holds no diffusers UNet (unet/config.json)")
    text = json.loads((folder / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    keep = set(text) & {"hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "projection_dim", "vocab_size",
                        "max_position_embeddings", "bos_token_id", "eos_token_id",
                        "pad_token_id"}  # fmt: skip
    return _build(json.loads(unet_config.read_text()), {k: text[k] for k in keep})
