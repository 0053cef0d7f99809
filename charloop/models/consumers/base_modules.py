"""The LoRA-able modules of a base model, by name and weight shape, built on the meta device.

Consumers resolve a LoRA file's keys against the base model's module tree; the checker
does the same against this map. The reference SD1.5 layout is diffusers' default
``UNet2DConditionModel`` with 768-wide cross-attention and a ViT-L/14 CLIP text encoder
(``openai/clip-vit-large-patch14``'s config); the SDXL one is SDXL 1.0's UNet with CLIP
ViT-L and OpenCLIP bigG; a local pipeline folder gives its own layout (the tiny test
models, a fine-tuned base). Nothing is downloaded or allocated.
"""

from __future__ import annotations

import functools
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
    """Shapes of the family's denoiser (``unet`` table, whatever the architecture) and of
    its trainable text encoders, built on the meta device. A FLUX table also holds the
    fused original-layout modules kohya files name (``double_blocks.N.img_attn.qkv``)."""
    import diffusers
    import transformers
    from transformers import CLIPTextConfig

    from charloop.families import get_family
    from charloop.families.flux_names import bfl_shapes

    spec = get_family(family)
    texts = {}
    with torch.device("meta"):
        denoiser = getattr(diffusers, spec.denoiser[1]).from_config(unet_config)
        names = spec.trained_text_encoders()
        for name, cls, config in zip(names, spec.text_encoder_classes(), text_configs, strict=True):
            model = getattr(transformers, cls)(CLIPTextConfig(**config))
            texts[name] = _shapes(model, strip="text_model.")
    table = _shapes(denoiser)
    if family == "flux":
        table |= bfl_shapes(dict(denoiser.config))
    return BaseModules(family, table, texts, dict(denoiser.config))


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


FLUX_TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
"""black-forest-labs/FLUX.1-dev's transformer config (12 B parameters)."""


def flux_reference() -> BaseModules:
    """The FLUX.1-dev layout (its transformer and the CLIP ViT-L text encoder)."""
    return _build("flux", FLUX_TRANSFORMER, [_CLIP_L])


@functools.cache
def reference(family: str) -> BaseModules:
    """The reference layout of ``family`` (built once per process on the meta device)."""
    return {"sd15": sd15_reference, "sdxl": sdxl_reference, "flux": flux_reference}[family]()


def from_pipeline_folder(folder: Path) -> BaseModules:
    """The layout of a local diffusers pipeline folder (its denoiser and text encoders).

    Raises:
        FileNotFoundError: the folder has no denoiser config (``unet/`` or ``transformer/``).
    """
    from charloop.families.detect import resolve_family

    family = resolve_family("auto", str(folder))
    denoiser_config = folder / family.denoiser[0] / "config.json"
    if not denoiser_config.is_file():
        raise FileNotFoundError(f"{folder} holds no {family.denoiser[0]}/config.json")
    texts = []
    for name in family.trained_text_encoders():
        text = json.loads((folder / name / "config.json").read_text(encoding="utf-8"))
        texts.append({k: text[k] for k in set(text) & _TEXT_KEYS})
    return _build(family.name, json.loads(denoiser_config.read_text()), texts)
