"""What a base model weighs and how much activation memory its denoiser keeps, from its
configs alone (the memory planner's inputs, :mod:`charloop.models.memory_plan`).

Parameter counts come from instantiating the denoiser on the meta device (nothing is
allocated or downloaded): a local pipeline folder gives its own configs; a hub id or a
single-file checkpoint falls back to the family's reference config (SD1.5, SDXL 1.0,
FLUX.1-dev, the same data :mod:`charloop.models.consumers.base_modules` checks LoRA files
against). Text encoders and VAEs are counted from the safetensors headers of a local folder,
or from their reference configs on the meta device.

The activation model (bytes the autograd graph keeps for one training step) counts saved
values per token and channel of each block; see :func:`activation_bytes` and docs/memory.md.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charloop.families import get_family
from charloop.models.consumers.base_modules import (
    _CLIP_BIG_G,
    _CLIP_L,
    FLUX_TRANSFORMER,
    SDXL_UNET,
)

SD15_UNET: dict[str, Any] = {"cross_attention_dim": 768, "attention_head_dim": 8}
"""runwayml/stable-diffusion-v1-5's UNet config (the rest are diffusers' defaults)."""
REFERENCE_DENOISERS: dict[str, dict[str, Any]] = {
    "sd15": SD15_UNET, "sdxl": SDXL_UNET, "flux": FLUX_TRANSFORMER,
}  # fmt: skip
"""The denoiser config each family is planned with when the base has no local config."""
T5_XXL: dict[str, Any] = {
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
    "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
}  # fmt: skip
"""google/t5-v1_1-xxl's encoder (FLUX.1's ``text_encoder_2``)."""
TEXT_TOKENS = {"sd15": 77, "sdxl": 77, "flux": 512}
"""Prompt tokens the denoiser attends to (CLIP's 77; FLUX.1-dev's T5 sequence of 512)."""

FLUX_SAVED_PER_BLOCK = 16
"""Values a FLUX block keeps per token and channel for the backward pass, LoRA on a frozen
base with SDPA attention: norm inputs and modulation products (~5), the LoRA inputs (~2),
q, k, v and the attention output (4), the MLP's 4x-wide GELU input (4), residuals (~1).
Korthikanti et al. (2022) count 34 bytes (17 values) for a fully trained GPT layer."""
UNET_SAVED_PER_TRANSFORMER = 24
"""The same for an SD/SDXL transformer block (self- and cross-attention, GEGLU's 8x-wide
projection) with its proj_in/proj_out."""
UNET_SAVED_PER_RESNET = 6
"""Values a ResNet block keeps per pixel and channel (two group norms, two SiLUs, the
time-embedding sum, the skip)."""


@dataclass(frozen=True)
class DenoiserSize:
    """Parameter facts of one denoiser, enough to price every weight format."""

    family: str
    config: dict[str, Any]
    linear_params: int
    """Weights of ``nn.Linear`` layers (what fp8/nf4 quantize)."""
    linear_rows: int
    """Output rows of those layers (fp8 keeps one float32 scale per row)."""
    other_params: int
    """Everything else (biases, norms, convolutions, embeddings): stays in the compute dtype."""
    largest_linear: int
    """The biggest single Linear weight (a quantized layer is dequantized one at a time)."""
    lora_shapes: tuple[tuple[str, int, int, int], ...]
    """(module, in features, out features, kernel area) of every Linear/Conv2d (LoRA targets)."""

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, targets: list[str] | tuple[str, ...], rank: int) -> int:
        """LoRA parameters peft adds for ``targets`` (a name matches when it equals a
        target or ends with ``.<target>``, as in peft) at ``rank``."""
        total = 0
        for name, fan_in, fan_out, kernel in self.lora_shapes:
            if any(name == t or name.endswith(f".{t}") for t in targets):
                total += rank * (fan_in * kernel + fan_out)
        return total


@functools.cache
def _denoiser_size(family: str, config_json: str) -> DenoiserSize:
    import diffusers

    config = json.loads(config_json)
    cls = getattr(diffusers, get_family(family).denoiser[1])
    with torch.device("meta"):
        model = cls.from_config(config)
    linear = rows = largest = 0
    shapes = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linear += module.weight.numel()
            rows += module.out_features
            largest = max(largest, module.weight.numel())
            shapes.append((name, module.in_features, module.out_features, 1))
        elif isinstance(module, torch.nn.Conv2d):
            area = module.kernel_size[0] * module.kernel_size[1]
            shapes.append((name, module.in_channels, module.out_channels, area))
    total = sum(p.numel() for p in model.parameters())
    return DenoiserSize(family, dict(model.config), linear, rows, total - linear, largest,
                        tuple(shapes))  # fmt: skip


def denoiser_size(family: str, config: dict[str, Any] | None = None) -> DenoiserSize:
    """The denoiser of ``config`` (default: the family's reference), counted on meta."""
    config = REFERENCE_DENOISERS[family] if config is None else config
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return _denoiser_size(family, json.dumps(clean, sort_keys=True))


def local_config(ref: str, subfolder: str) -> dict[str, Any] | None:
    """``<ref>/<subfolder>/config.json`` of a local pipeline folder, or None."""
    path = Path(ref) / subfolder / "config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def safetensors_params(folder: Path) -> int | None:
    """Parameters stored in a folder's safetensors files, read from their headers only."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for key, entry in header.items():
            if key != "__metadata__":
                total += int(torch.Size(entry["shape"]).numel())
    return total


@functools.cache
def reference_component_params(family: str, component: str) -> int:
    """Parameters of a reference text encoder or VAE (meta device)."""
    import transformers
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        if component == "vae":
            channels = 16 if family == "flux" else 4
            model: Any = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=channels,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                use_quant_conv=family != "flux", use_post_quant_conv=family != "flux",
            )  # fmt: skip
        elif family == "flux" and component == "text_encoder_2":
            model = transformers.T5EncoderModel(transformers.T5Config.from_dict(T5_XXL))
        elif family == "sdxl" and component == "text_encoder_2":
            model = transformers.CLIPTextModelWithProjection(
                transformers.CLIPTextConfig.from_dict(_CLIP_BIG_G)
            )
        else:
            model = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_dict(_CLIP_L))
    return sum(p.numel() for p in model.parameters())


def reference_text_config(family: str, component: str) -> dict[str, Any]:
    """The reference config of a CLIP text encoder (SDXL's second one is OpenCLIP bigG)."""
    return dict(_CLIP_BIG_G if (family, component) == ("sdxl", "text_encoder_2") else _CLIP_L)


def component_params(family: str, ref: str | None, component: str) -> int:
    """Parameters of a pipeline's text encoder or VAE: the local files, else the reference."""
    if ref is not None and (counted := safetensors_params(Path(ref) / component)) is not None:
        return counted
    return reference_component_params(family, component)


def vae_factor(ref: str | None) -> int:
    """How much the VAE downsamples (8 for every real base; tiny test models differ)."""
    config = local_config(ref, "vae") if ref else None
    levels = len(config["block_out_channels"]) if config else 4
    return 2 ** (levels - 1)


def _unet_units(config: dict[str, Any], side: int) -> list[tuple[str, int]]:
    """(kind, tokens x channels) of every ResNet and transformer block of a UNet whose
    latents are ``side`` x ``side``: down blocks halve the side, up blocks double it."""
    channels = list(config["block_out_channels"])
    per_level = config["transformer_layers_per_block"]
    depth = [per_level] * len(channels) if isinstance(per_level, int) else list(per_level)
    layers = int(config["layers_per_block"])
    units: list[tuple[str, int]] = []
    for level, kind in enumerate(config["down_block_types"]):
        area = (side >> level) ** 2 * channels[level]
        units += [("resnet", area)] * layers
        if kind.startswith("CrossAttn"):
            units += [("transformer", area)] * (layers * depth[level])
    bottom = (side >> (len(channels) - 1)) ** 2 * channels[-1]
    units += [("resnet", bottom)] * 2 + [("transformer", bottom)] * depth[-1]
    for up, kind in enumerate(config["up_block_types"]):
        level = len(channels) - 1 - up
        area = (side >> level) ** 2 * channels[level]
        units += [("resnet", area)] * (layers + 1)
        if kind.startswith("CrossAttn"):
            units += [("transformer", area)] * ((layers + 1) * depth[level])
    return units


def activation_bytes(
    size: DenoiserSize,
    resolution: int,
    batch: int,
    checkpointing: bool,
    element_bytes: int,
    vae_downsample: int = 8,
    text_tokens: int | None = None,
) -> int:
    """Activation memory one training step keeps for the backward pass.

    Each block keeps ``saved`` values per token (or pixel) and channel; with gradient
    checkpointing only each block's input is kept, plus the largest block recomputed in
    full and the gradients flowing into and out of it. Tokens: (resolution / VAE factor / patch)^2
    image tokens (FLUX packs 2x2 latent patches), plus the prompt's tokens for FLUX's
    joint attention.

    Args:
        size: The denoiser.
        resolution: Training side in pixels (a bucket's area equals the square's).
        batch: Images per micro-batch.
        checkpointing: Gradient checkpointing on.
        element_bytes: 2 under bf16/fp16 mixed precision, 4 in float32.
        vae_downsample: The VAE's factor.
        text_tokens: Prompt tokens (default: the family's).
    """
    config = size.config
    side = resolution // vae_downsample
    if size.family == "flux":
        tokens = (side // 2) ** 2 + (text_tokens or TEXT_TOKENS["flux"])
        width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        blocks = int(config["num_layers"]) + int(config["num_single_layers"])
        units = [("transformer", tokens * width)] * blocks
        saved = {"transformer": FLUX_SAVED_PER_BLOCK}
    else:
        units = _unet_units(config, side)
        saved = {"transformer": UNET_SAVED_PER_TRANSFORMER, "resnet": UNET_SAVED_PER_RESNET}
    if checkpointing:
        recomputed = max(area * saved[kind] for kind, area in units)
        gradients = 2 * max(area for _, area in units)
        values = sum(area for _, area in units) + recomputed + gradients
    else:
        values = sum(area * saved[kind] for kind, area in units)
    return values * batch * element_bytes
