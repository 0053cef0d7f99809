"""Trigger embeddings (pivotal tuning) in a loaded pipeline: load beside a LoRA, unload.

The file (``trigger_embedding.safetensors`` in an adapter folder) holds one ``(n, dim)``
tensor per text encoder under the key A1111 and ComfyUI read; its header names the trigger
phrase the vectors are bound to (diffusers expands it to ``trigger``, ``trigger_1``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charloop.core.errors import BadInput

TRIGGER_EMBEDDING = "trigger_embedding.safetensors"
"""An adapter folder's trigger embedding (present when ``train.trigger_embedding`` is on)."""

TRIGGER_KEY = "charloop.trigger"
"""Header key of the trigger phrase the vectors are bound to."""

EMBEDDING_KEYS = {"sd15": ("emb_params",), "sdxl": ("clip_l", "clip_g")}
"""Per family, the file key of each text encoder's vectors (``text_encoders`` order)."""


class EmbeddingUnsupported(BadInput):
    """``train.trigger_embedding`` is on for a base whose family cannot carry it."""


def check_family(family: str) -> None:
    """Refuse a trigger embedding for a family without CLIP-only text encoders (FLUX: its
    T5 would read the new tokens as text).

    Raises:
        EmbeddingUnsupported: naming the family and the fix.
    """
    if family not in EMBEDDING_KEYS:
        raise EmbeddingUnsupported(
            f"train.trigger_embedding works with SD1.5 and SDXL bases; this base is {family} "
            "(base_model.path): set train.trigger_embedding.enabled: false"
        )


def load_into_pipe(pipe: Any, family: Any, adapter_dir: Path) -> bool:
    """Load the adapter's trigger embedding (if it has one) into ``pipe``, bound to the
    trigger phrase it was trained for; undo with :func:`unload_from_pipe`."""
    from safetensors import safe_open

    path = adapter_dir / TRIGGER_EMBEDDING
    if not path.is_file():
        return False
    with safe_open(str(path), "pt") as handle:
        trigger = handle.metadata()[TRIGGER_KEY]
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    keys = EMBEDDING_KEYS[family.name]
    for key, encoder, tokenizer in zip(keys, family.text_encoders, family.tokenizers, strict=True):
        pipe.load_textual_inversion(
            {"emb_params": tensors[key]},
            token=trigger,
            tokenizer=getattr(pipe, tokenizer),
            text_encoder=getattr(pipe, encoder),
        )
    return True


def unload_from_pipe(pipe: Any, family: Any) -> None:
    """Remove every loaded trigger embedding from ``pipe``'s tokenizers and encoders."""
    for encoder, tokenizer in zip(family.text_encoders, family.tokenizers, strict=True):
        pipe.unload_textual_inversion(
            tokenizer=getattr(pipe, tokenizer), text_encoder=getattr(pipe, encoder)
        )
