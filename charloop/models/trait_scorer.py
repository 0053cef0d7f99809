"""Trait scorers: the probability that a picture shows a trait ('teal hair', 'a hat').

Two backends, chosen by ``traits.scorer.type``: ``world`` (the world tagger,
:mod:`charloop.models.world_tagger`, which parses only its own tag phrases) and ``clip``
(zero-shot CLIP through transformers: any short phrase). Each loads once per process.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from charloop.params.traits import ClipTraitScorer, WorldTraitScorer

logger = logging.getLogger(__name__)

_LOADED: dict[tuple[str, str], Any] = {}


class TraitScorer(Protocol):
    """Scores trait phrases on pictures and proposes tags for reference tagging."""

    vocabulary: list[str]

    def parse(self, trait: str) -> Any: ...

    def score(self, images: list[Image.Image], traits: list[str]) -> np.ndarray: ...

    def merge(self, traits: list[str]) -> list[str]: ...


class ClipTraitBackend:
    """Zero-shot CLIP: softmax over (trait prompt, neutral prompt) at CLIP's logit scale."""

    def __init__(self, spec: ClipTraitScorer, ref: str):
        from charloop.models.embedder import ClipBackend

        self.spec = spec
        self.clip = ClipBackend(ref)
        self.vocabulary = list(spec.vocabulary)
        self.scale = float(self.clip.model.logit_scale.exp())
        self.max_tokens = int(self.clip.processor.tokenizer.model_max_length)

    def parse(self, trait: str) -> list[int] | None:
        """Token ids of the trait's prompt; None when the trait is empty or the prompt is
        longer than the text tower reads (it would be cut)."""
        if not trait.strip():
            return None
        text = self.spec.template.format(trait=trait)
        ids = self.clip.processor.tokenizer(text)["input_ids"]
        return list(ids) if len(ids) <= self.max_tokens else None

    def merge(self, traits: list[str]) -> list[str]:
        """Free phrases have no parts to merge: ``traits`` unchanged."""
        return traits

    @torch.no_grad()
    def score(self, images: list[Image.Image], traits: list[str]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(traits)), dtype=np.float32)
        prompts = [self.spec.template.format(trait=t) for t in traits]
        text = self.clip.embed_texts([*prompts, self.spec.neutral])
        assert text is not None
        image = self.clip.embed_images(images)
        cos = image @ text.T
        margin = (cos[:, :-1] - cos[:, -1:]) * self.scale
        return (1.0 / (1.0 + np.exp(-margin))).astype(np.float32)


def load_trait_scorer(spec: WorldTraitScorer | ClipTraitScorer, ref: str) -> TraitScorer:
    """The scorer for ``spec`` at the resolved ``ref``, loaded once per process."""
    key = (spec.type, ref)
    if key not in _LOADED:
        logger.info("loading %s trait scorer %s", spec.type, ref)
        if isinstance(spec, WorldTraitScorer):
            from charloop.models.world_tagger import load_world_tagger

            _LOADED[key] = load_world_tagger(ref)
        else:
            _LOADED[key] = ClipTraitBackend(spec, ref)
    return _LOADED[key]
