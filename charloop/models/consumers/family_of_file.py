"""Which base-model family a LoRA file was trained on, read from the file itself.

In order of trust: the ``ss_base_model_version`` header key (sd-scripts; A1111 and kohya
tools read it), the SAI model-spec ``modelspec.architecture``, charloop's own
``charloop.base_model_family``, then the key layout (what InvokeAI and ComfyUI fall back
on): FLUX's double/single blocks, SDXL's second text encoder or original-UNet names, the
width of the cross-attention inputs (768: SD1.5, 2048: SDXL).
"""

from __future__ import annotations

from charloop.families import FAMILIES
from charloop.models.consumers.reader import AdapterFile

_SD1_VERSIONS = ("sd_v1", "sd_1", "sd1")
_CROSS_WIDTH = {768: "sd15", 2048: "sdxl"}


def family_from_header(metadata: dict[str, str]) -> tuple[str, str] | None:
    """``(family, header key that said so)`` or None when the header names no family."""
    version = metadata.get("ss_base_model_version", "")
    for family in FAMILIES.values():
        if version and version == family.base_version:
            return family.name, "ss_base_model_version"
    if version.startswith(_SD1_VERSIONS):
        return "sd15", "ss_base_model_version"
    architecture = metadata.get("modelspec.architecture", "")
    for family in FAMILIES.values():
        if architecture and architecture.split("/")[0] == family.architecture.split("/")[0]:
            return family.name, "modelspec.architecture"
    own = metadata.get("charloop.base_model_family")
    if own in FAMILIES:
        return own, "charloop.base_model_family"
    return None


def family_from_keys(adapter: AdapterFile) -> str | None:
    """The family the key names and shapes point to, or None."""
    names = list(adapter.tensors)
    if any(_flux_key(n) for n in names):
        return "flux"
    if any(n.startswith(("lora_te2_", "text_encoder_2.")) or "input_blocks" in n for n in names):
        return "sdxl"
    for name, info in adapter.tensors.items():
        if "attn2" in name and ("to_k" in name or "to_v" in name) and name.endswith(
            ("lora_down.weight", "lora_A.weight")
        ):
            width = info.shape[-1] if info.shape else 0
            if width in _CROSS_WIDTH:
                return _CROSS_WIDTH[width]
    return None


def _flux_key(name: str) -> bool:
    if "double_blocks" in name or "single_blocks" in name:  # kohya / BFL names
        return True
    return name.startswith(("transformer.", "lora_transformer")) and "transformer_blocks" in name


def detect_family(adapter: AdapterFile) -> tuple[str, str] | None:
    """``(family, how it was found)`` for a LoRA file, or None when nothing tells."""
    found = family_from_header(adapter.metadata)
    if found:
        return found
    family = family_from_keys(adapter)
    return (family, "key layout") if family else None
