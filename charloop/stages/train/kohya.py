"""The kohya LoRA format (A1111, ComfyUI, InvokeAI): names, ``.alpha`` keys and metadata.

``lora_unet_<module path with '.' -> '_'>.lora_down.weight`` / ``.lora_up.weight`` /
``.alpha``; text-encoder modules as ``lora_te_text_model_<path>`` (SDXL: ``lora_te1_`` /
``lora_te2_``, and UNet paths of the original layout, see the family modules). diffusers'
``convert_state_dict_to_kohya`` writes ``alpha = rank`` whatever the training alpha was,
and transformers 5 drops the ``text_model.`` level from CLIP module names; both are
handled here so the file loads at the strength it was trained at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from charloop.core.safetensors_header import canonicalize
from charloop.families import ModelFamily, get_family
from charloop.families.base import lora_pairs
from charloop.stages.layout import KOHYA_WEIGHTS

KOHYA_WEIGHTS_NAME = KOHYA_WEIGHTS


def kohya_module(prefix: str, module: str) -> str:
    """The kohya name of a module path (``prefix`` 'lora_unet', or a text-encoder prefix
    such as 'lora_te' / 'lora_te1' / 'lora_te2', whose paths gain ``text_model.``)."""
    if prefix.startswith("lora_te"):
        module = "text_model." + module.removeprefix("text_model.")
    return f"{prefix}_{module.replace('.', '_')}"


def to_kohya(
    unet_state: dict[str, torch.Tensor],
    text_states: dict[str, dict[str, torch.Tensor]] | None,
    alpha: float,
    family: ModelFamily | None = None,
    unet_config: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Convert peft LoRA state dicts (``<module>.lora_A.weight`` keys) to kohya keys.

    Args:
        unet_state: The UNet's LoRA.
        text_states: Text-encoder LoRAs by component name ('text_encoder', ...).
        alpha: The training alpha (written exactly, not ``rank``).
        family: Names the UNet modules and text prefixes (default SD1.5).
        unet_config: The base UNet's config (families with original-layout names).

    Raises:
        ValueError: a key that is not a peft LoRA weight.
    """
    family = family or get_family("sd15")
    out: dict[str, torch.Tensor] = {}
    for module, (down, up, module_alpha) in family.kohya_denoiser(
        unet_state, unet_config or {}, alpha
    ).items():
        _put(out, kohya_module("lora_unet", module), down, up, module_alpha)
    prefixes = dict(zip(family.trained_text_encoders(), family.kohya_text_prefixes, strict=True))
    for name, state in (text_states or {}).items():
        for module, weights in lora_pairs(state).items():
            stem = kohya_module(prefixes[name], module)
            _put(out, stem, weights.get("A"), weights.get("B"), alpha)
    return out


def _put(
    out: dict[str, torch.Tensor],
    stem: str,
    down: torch.Tensor | None,
    up: torch.Tensor | None,
    alpha: float,
) -> None:
    """One kohya module's tensors (a part missing from the state is left out, as peft
    left it out)."""
    for part, value in (("lora_down", down), ("lora_up", up)):
        if value is not None:
            out[f"{stem}.{part}.weight"] = value.detach().to("cpu").contiguous()
    out[f"{stem}.alpha"] = torch.tensor(float(alpha))


def save_kohya(
    path: Path,
    tensors: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    metadata: dict[str, str],
) -> Path:
    """Write kohya ``tensors`` with kohya's ``ss_*`` network keys plus charloop provenance."""
    save_file(tensors, str(path))
    kohya_meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_training_comment": "trained by charloop",
    }
    canonicalize(path, {**kohya_meta, **metadata})
    return path
