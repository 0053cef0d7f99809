"""The kohya LoRA format (A1111, ComfyUI, InvokeAI): names, ``.alpha`` keys and metadata.

``lora_unet_<module path with '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha``; text-encoder modules as ``lora_te_text_model_<path>``. diffusers'
``convert_state_dict_to_kohya`` writes ``alpha = rank`` whatever the training alpha was,
and transformers 5 drops the ``text_model.`` level from CLIP module names; both are
handled here so the file loads at the strength it was trained at.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from charloop.core.safetensors_header import canonicalize
from charloop.stages.layout import KOHYA_WEIGHTS

KOHYA_WEIGHTS_NAME = KOHYA_WEIGHTS
_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


def kohya_module(prefix: str, module: str) -> str:
    """The kohya name of a module path (``prefix`` is 'lora_unet' or 'lora_te')."""
    if prefix == "lora_te":
        module = "text_model." + module.removeprefix("text_model.")
    return f"{prefix}_{module.replace('.', '_')}"


def to_kohya(
    unet_state: dict[str, torch.Tensor],
    text_encoder_state: dict[str, torch.Tensor] | None,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """Convert peft LoRA state dicts (``<module>.lora_A.weight`` keys) to kohya keys.

    Raises:
        ValueError: a key that is not a peft LoRA weight.
    """
    out: dict[str, torch.Tensor] = {}
    for prefix, state in (("lora_unet", unet_state), ("lora_te", text_encoder_state or {})):
        for key, value in state.items():
            match = _PEFT_KEY.match(key)
            if match is None:
                raise ValueError(f"not a peft LoRA weight key: {key}")
            name = kohya_module(prefix, match["module"])
            part = "lora_down" if match["part"] == "A" else "lora_up"
            out[f"{name}.{part}.weight"] = value.detach().to("cpu").contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_kohya(
    path: Path,
    unet_state: dict[str, torch.Tensor],
    text_encoder_state: dict[str, torch.Tensor] | None,
    rank: int,
    alpha: float,
    metadata: dict[str, str],
) -> Path:
    """Write the kohya file with kohya's ``ss_*`` network keys plus charloop provenance."""
    tensors = to_kohya(unet_state, text_encoder_state, alpha)
    save_file(tensors, str(path))
    kohya_meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_training_comment": "trained by charloop",
    }
    canonicalize(path, {**kohya_meta, **metadata})
    return path
