"""FLUX LoRA modules in kohya sd-scripts' names (Black Forest Labs' original layout), with
separately trained q, k, v (and the single blocks' MLP input) fused exactly into one LoRA.

diffusers splits FLUX's fused projections: a double block's ``img_attn.qkv`` is
``attn.to_q/to_k/to_v``, its ``txt_attn.qkv`` is ``attn.add_q/k/v_proj``; a single block's
``linear1`` is ``attn.to_q/to_k/to_v`` plus ``proj_mlp``. One LoRA per part (rank ``r``,
``B_i A_i``) becomes one LoRA of the fused weight with the parts' down matrices stacked
(rank ``n r``) and their up matrices on a block diagonal, so ``up @ down`` restricted to
part ``i``'s rows is exactly ``B_i A_i``; ``.alpha`` is scaled by ``n`` so alpha / rank,
the LoRA's strength, is unchanged. A part that was not trained has zero rows. This is the
layout diffusers' and ComfyUI's kohya-FLUX readers split back (they copy the down matrix
to every part and split the up matrix by rows).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from charloop.families.base import lora_pairs

_DOUBLE = {
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
SWAPPED = "final_layer.adaLN_modulation.1"
"""BFL orders this layer's output (shift, scale); diffusers' ``norm_out`` (scale, shift)."""
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_BLOCK = re.compile(
    r"^(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<i>\d+)\.(?P<rest>.+)$"
)


def widths(config: dict[str, Any]) -> tuple[int, int]:
    """(inner width, MLP width) of a FLUX transformer config."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    return inner, int(inner * float(config.get("mlp_ratio", 4.0)))


def fused_parts(config: dict[str, Any]) -> dict[str, list[tuple[str, int]]]:
    """Fused BFL module -> its diffusers parts and their output widths, every block."""
    inner, mlp = widths(config)
    out: dict[str, list[tuple[str, int]]] = {}
    for i in range(int(config["num_layers"])):
        for bfl, parts in _DOUBLE_FUSED.items():
            out[f"double_blocks.{i}.{bfl}"] = [
                (f"transformer_blocks.{i}.{p}", inner) for p in parts
            ]
    for i in range(int(config["num_single_layers"])):
        sizes = (inner, inner, inner, mlp)
        out[f"single_blocks.{i}.linear1"] = [
            (f"single_transformer_blocks.{i}.{p}", size)
            for p, size in zip(_SINGLE_FUSED["linear1"], sizes, strict=True)
        ]
    return out


def bfl_name(path: str) -> str | None:
    """The BFL name of an unfused diffusers module, None for a part of a fused one."""
    match = _BLOCK.match(path)
    if match is None:
        return _TOP.get(path)
    table = _DOUBLE if match["kind"] == "transformer_blocks" else _SINGLE
    prefix = "double_blocks" if match["kind"] == "transformer_blocks" else "single_blocks"
    name = table.get(match["rest"])
    return f"{prefix}.{match['i']}.{name}" if name else None


def kohya_flux(
    state: dict[str, torch.Tensor], config: dict[str, Any], alpha: float
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """BFL module -> (down, up, alpha) of a peft FLUX transformer LoRA, fused groups fused.

    Raises:
        ValueError: a trained module with no BFL name (outside the blocks).
    """
    pairs = lora_pairs(state)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    used: set[str] = set()
    for bfl, parts in fused_parts(config).items():
        trained = [(name, rows) for name, rows in parts if name in pairs]
        if not trained:
            continue
        downs = [pairs[name]["A"] for name, _ in trained]
        rank = sum(d.shape[0] for d in downs)
        up = torch.zeros(sum(rows for _, rows in parts), rank, dtype=downs[0].dtype)
        row = col = 0
        for name, rows in parts:
            if name in pairs:
                b = pairs[name]["B"]
                up[row : row + rows, col : col + b.shape[1]] = b
                col += b.shape[1]
            row += rows
        per_part = downs[0].shape[0]
        out[bfl] = (torch.cat(downs), up, alpha * rank / per_part)
        used |= {name for name, _ in trained}
    for module, weights in pairs.items():
        if module in used:
            continue
        single = bfl_name(module)
        if single is None:
            raise ValueError(f"FLUX module {module!r} has no kohya (BFL) name")
        up = weights["B"]
        if single == SWAPPED:  # the two halves of the output trade places
            up = torch.cat(up.chunk(2, dim=0)[::-1])
        out[single] = (weights["A"], up, alpha)
    return out


def bfl_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Weight shape (out, in) of every LoRA-able BFL module (what kohya tools patch)."""
    inner, mlp = widths(config)
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(int(config["num_layers"])):
        for stream in ("img", "txt"):
            base = f"double_blocks.{i}.{stream}"
            shapes |= {f"{base}_attn.qkv": (3 * inner, inner), f"{base}_attn.proj": (inner, inner),
                       f"{base}_mlp.0": (mlp, inner), f"{base}_mlp.2": (inner, mlp),
                       f"{base}_mod.lin": (6 * inner, inner)}  # fmt: skip
    for i in range(int(config["num_single_layers"])):
        base = f"single_blocks.{i}"
        shapes |= {f"{base}.linear1": (3 * inner + mlp, inner),
                   f"{base}.linear2": (inner, inner + mlp),
                   f"{base}.modulation.lin": (3 * inner, inner)}  # fmt: skip
    channels = int(config["in_channels"])
    shapes |= {"img_in": (inner, channels), "txt_in": (inner, int(config["joint_attention_dim"])),
               "final_layer.linear": (channels, inner), SWAPPED: (2 * inner, inner),
               "time_in.in_layer": (inner, 256), "time_in.out_layer": (inner, inner),
               "vector_in.in_layer": (inner, int(config["pooled_projection_dim"])),
               "vector_in.out_layer": (inner, inner)}  # fmt: skip
    if config.get("guidance_embeds"):
        shapes |= {"guidance_in.in_layer": (inner, 256), "guidance_in.out_layer": (inner, inner)}
    return shapes
