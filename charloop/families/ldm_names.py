"""diffusers UNet module paths -> the original (ldm / sgm) UNet's, as kohya sd-scripts names
SDXL LoRA modules (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``).

The layout follows diffusers' ``scripts/convert_diffusers_to_original_sdxl.py``, derived
from the UNet config instead of hard-coded for three levels, so fine-tuned and test-size
SDXL UNets map the same way: each down level holds ``layers_per_block`` resnet(+attention)
blocks and a downsampler, each up level one more block, the upsampler riding in its last.
Inside a transformer block the names are unchanged (``attn1.to_q``, ``ff.net.0.proj``).
"""

from __future__ import annotations

import re
from typing import Any

_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_BLOCK = re.compile(
    r"^(?P<where>down_blocks|up_blocks)\.(?P<level>\d+)\.(?P<kind>resnets|attentions|"
    r"downsamplers|upsamplers)\.(?P<index>\d+)(?:\.(?P<rest>.+))?$"
)
_MID = re.compile(r"^mid_block\.(?P<kind>resnets|attentions)\.(?P<index>\d+)(?:\.(?P<rest>.+))?$")


def _layers(config: dict[str, Any]) -> int:
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):  # per-level lists exist in diffusers, not in SDXL bases
        if len(set(layers)) != 1:
            raise ValueError(f"per-level layers_per_block {layers} has no ldm layout")
        layers = layers[0]
    return int(layers)


def _inner(kind: str, rest: str | None) -> str:
    if rest is None:
        return ""
    if kind == "resnets":
        head, _, tail = rest.partition(".")
        return "." + _RESNET.get(head, head) + (f".{tail}" if tail else "")
    return "." + rest


def ldm_unet_name(path: str, config: dict[str, Any]) -> str:
    """The original-UNet module path of diffusers UNet module ``path``.

    Raises:
        ValueError: a path outside the UNet's blocks.
    """
    for prefix, target in _TOP.items():
        if path == prefix or path.startswith(prefix + "."):
            return target + path[len(prefix) :]
    layers = _layers(config)
    if match := _MID.match(path):
        index = int(match["index"])
        block = 1 if match["kind"] == "attentions" else 2 * index
        return f"middle_block.{block}" + _inner(match["kind"], match["rest"])
    match = _BLOCK.match(path)
    if match is None:
        raise ValueError(f"no ldm name for UNet module {path!r}")
    level, index, kind = int(match["level"]), int(match["index"]), match["kind"]
    rest = match["rest"]
    if match["where"] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(layers + 1) * (level + 1)}.0.op" + _tail(rest, "conv")
        slot = 0 if kind == "resnets" else 1
        return f"input_blocks.{(layers + 1) * level + index + 1}.{slot}" + _inner(kind, rest)
    if kind == "upsamplers":
        with_attention = "CrossAttn" in config.get("up_block_types", [""] * (level + 1))[level]
        return f"output_blocks.{(layers + 1) * level + layers}.{2 if with_attention else 1}" + (
            f".{rest}" if rest else ""
        )
    slot = 0 if kind == "resnets" else 1
    return f"output_blocks.{(layers + 1) * level + index}.{slot}" + _inner(kind, rest)


def _tail(rest: str | None, drop: str) -> str:
    """The downsampler's ``conv`` is the ldm ``op`` itself."""
    if rest is None or rest == drop:
        return ""
    return "." + rest.removeprefix(drop + ".")
