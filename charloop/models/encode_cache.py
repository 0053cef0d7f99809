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
        digests = [sha256_json({"kind": kind, **k}) for k in keys]
        found: dict[int, torch.Tensor] = {}
        for index, digest in enumerate(digests):
            path = self._path(kind, digest)
            if path.is_file():
                try:
                    found[index] = load(path.read_bytes())["value"]
                except Exception:  # a damaged entry is recomputed, never trusted
                    logger.warning("cache entry %s is unreadable; recomputing", path)
        missing = [i for i in range(len(digests)) if i not in found]
        if missing:
            fresh = compute(missing)
            for index, value in zip(missing, fresh, strict=True):
                value = value.detach().to("cpu", torch.float32).contiguous()
                atomic.write_bytes(self._path(kind, digests[index]), save({"value": value}))
                found[index] = value
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        return torch.stack([found[i] for i in range(len(digests))])
