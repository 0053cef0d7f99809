"""On-disk cache of VAE latents and text embeddings, keyed by content, model and settings.

Trainers that key caches by file name serve stale latents after an image is edited. Here
a latent's key is the sha256 of the image bytes plus the VAE's identity and the
resolution; a text embedding's key is the caption text plus the text encoder's identity.
Entries are single safetensors files written atomically, so concurrent processes (several
``accelerate`` ranks, parallel loops) can share one cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load, save

from charloop.core import atomic
from charloop.core.hashing import sha256_json, tree_digest

logger = logging.getLogger(__name__)


@lru_cache(maxsize=16)
def component_identity(model_ref: str, subfolder: str, revision: str | None) -> str:
    """What a cached value depends on: the component's file content for a local folder,
    the hub id and revision otherwise."""
    folder = Path(model_ref) / subfolder
    if folder.is_dir():
        return tree_digest(folder)
    return f"{model_ref}@{revision or 'main'}/{subfolder}"


class EncodeCache:
    """A folder of cached tensors under ``root/<kind>/<key[:2]>/<key>.safetensors``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def _path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get_many(
        self,
        kind: str,
        keys: Sequence[dict[str, object]],
        compute: Callable[[list[int]], torch.Tensor],
    ) -> torch.Tensor:
        """Stacked tensors for ``keys``, computing only the missing ones in one call.

        Args:
            kind: Cache section ('latents', 'text').
            keys: One JSON-able description per item (content hash, model, settings).
            compute: Given the indices of the missing items, returns their tensors stacked
                along dim 0 in the same order.
        """
        return self.get_parts(kind, keys, lambda idx: {"value": compute(idx)})["value"]

    def get_parts(
        self,
        kind: str,
        keys: Sequence[dict[str, object]],
        compute: Callable[[list[int]], dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Like ``get_many`` for items of several named tensors (an SDXL caption's hidden
        states and pooled embedding): one entry per item holds every part."""
        digests = [sha256_json({"kind": kind, **k}) for k in keys]
        found: dict[int, dict[str, torch.Tensor]] = {}
        for index, digest in enumerate(digests):
            path = self._path(kind, digest)
            if path.is_file():
                try:
                    found[index] = load(path.read_bytes())
                except Exception:  # a damaged entry is recomputed, never trusted
                    logger.warning("cache entry %s is unreadable; recomputing", path)
        missing = [i for i in range(len(digests)) if i not in found]
        if missing:
            fresh = compute(missing)
            for row, index in enumerate(missing):
                parts = {
                    name: value[row].detach().to("cpu", torch.float32).contiguous()
                    for name, value in fresh.items()
                }
                atomic.write_bytes(self._path(kind, digests[index]), save(parts))
                found[index] = parts
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        names = list(found[0]) if found else []
        return {name: torch.stack([found[i][name] for i in range(len(digests))]) for name in names}
