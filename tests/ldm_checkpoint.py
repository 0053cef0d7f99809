"""A diffusers SD1.5 folder written as an original (ldm) single-file checkpoint, the way
community checkpoints ship, so the single-file loading path is tested without a download.

The key layout is the one diffusers' ``scripts/convert_diffusers_to_original_stable_
diffusion.py`` writes: ``model.diffusion_model.`` (the original UNet's names, from
:func:`charloop.families.ldm_names.ldm_unet_name`), ``first_stage_model.`` (the VAE) and
``cond_stage_model.transformer.text_model.`` (CLIP, in the transformers-4 layout).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from charloop.families.ldm_names import ldm_unet_name

_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_name(key: str, up_levels: int) -> str:
    key = re.sub(r"conv_norm_out", "norm_out", key)
    key = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", key)
    if "mid_block.attentions.0." in key:
        head, tail = key.split("mid_block.attentions.0.")
        module, _, param = tail.rpartition(".")
        return f"{head}mid.attn_1.{_VAE_ATTENTION[module]}.{param}"
    key = re.sub(
        r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", key
    )
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", key)
    key = re.sub(
        r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)",
        lambda m: (
            f"decoder.up.{up_levels - 1 - int(m[1])}."
            + ("block" if m[2] == "resnets" else "upsample")
        ),
        key,
    )
    for old, new in _VAE_RESNET.items():
        key = key.replace(f".{old}.", f".{new}.")
    return key


def write_sd15_checkpoint(folder: Path, out: Path) -> Path:
    """Write the SD1.5 diffusers ``folder`` as one ldm-layout ``.safetensors`` file."""
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for key, value in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors").items():
        module, _, param = key.rpartition(".")
        tensors[f"model.diffusion_model.{ldm_unet_name(module, unet_config)}.{param}"] = value
    up_levels = len(vae_config["up_block_types"])
    for key, value in load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").items():
        name = _vae_name(key, up_levels)
        if ".attn_1." in name and value.ndim == 2:  # the original VAE's attention is 1x1 convs
            value = value[:, :, None, None]
        tensors[f"first_stage_model.{name}"] = value
    for key, value in load_file(folder / "text_encoder" / "model.safetensors").items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        tensors[f"cond_stage_model.transformer.{key}"] = value
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    return out
