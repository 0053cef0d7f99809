"""Image (and text) embedders for identity and prompt-fidelity metrics.

Backends are chosen by ``evaluate.embedder.type``: ``clip`` (image + text towers),
``dinov2`` (image CLS token) or ``world`` (the identity embedder trained on the
procedural world, :mod:`charloop.models.world_embedder`). CLIP and DINOv2 load through
transformers from a hub id or a local folder; each backend loads once per process.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from charloop.params.schema import ClipEmbedder, Dinov2Embedder, WorldEmbedder

logger = logging.getLogger(__name__)

_LOADED: dict[tuple[str, str], Any] = {}


class Embedder(Protocol):
    """L2-normalised embeddings; ``embed_texts`` is None for image-only backends."""

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray | None: ...


def _normalise(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()


class ClipBackend:
    """CLIPModel image and text projections."""

    def __init__(self, ref: str):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(ref).eval()
        self.processor = CLIPProcessor.from_pretrained(ref)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=images, return_tensors="pt")
        return _normalise(_pooled(self.model.get_image_features(pixel_values=inputs.pixel_values)))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray | None:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        features = self.model.get_text_features(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask
        )
        return _normalise(_pooled(features))


class Dinov2Backend:
    """Dinov2Model CLS token (pooled output): identity-sensitive, no text tower."""

    def __init__(self, ref: str):
        from transformers import AutoImageProcessor, Dinov2Model

        self.model = Dinov2Model.from_pretrained(ref).eval()
        self.processor = AutoImageProcessor.from_pretrained(ref)

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=images, return_tensors="pt")
        return _normalise(self.model(pixel_values=inputs.pixel_values).pooler_output)

    def embed_texts(self, texts: list[str]) -> np.ndarray | None:
        return None


def _pooled(output: Any) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_embedder(spec: ClipEmbedder | Dinov2Embedder | WorldEmbedder, ref: str) -> Embedder:
    """The embedder for ``spec`` at the resolved ``ref``, loaded once per process."""
    key = (spec.type, ref)
    if key not in _LOADED:
        logger.info("loading %s embedder %s", spec.type, ref)
        if spec.type == "world":
            from charloop.models.world_embedder import WorldEmbedderBackend

            _LOADED[key] = WorldEmbedderBackend(ref)
        else:
            _LOADED[key] = ClipBackend(ref) if spec.type == "clip" else Dinov2Backend(ref)
    return _LOADED[key]


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of L2-normalised rows (1.0 for < 2 rows)."""
    n = len(embeddings)
    if n < 2:
        return 1.0
    sims = embeddings @ embeddings.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def nearest_reference_match(
    embeddings: np.ndarray, references: np.ndarray, nearest: int
) -> np.ndarray:
    """Each image's mean cosine to its ``nearest`` closest references: it must match whole
    pictures of the character, not the blur of their average (all references when there
    are fewer)."""
    cosines = embeddings @ references.T
    k = min(nearest, cosines.shape[1])
    return np.sort(cosines, axis=1)[:, -k:].mean(1)


def embed_in_batches(embedder: Embedder, images: list[Image.Image], batch_size: int) -> np.ndarray:
    """Embed many images in fixed-size batches (bounded memory); rows follow ``images``."""
    chunks = [
        embedder.embed_images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
