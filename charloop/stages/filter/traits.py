"""The filter's trait checks: score each solo candidate's traits, and the pass rates of the
candidates and of the kept set (the dataset's own consistency, recorded every iteration)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from charloop.params.project import Project
from charloop.scenes.traits import pass_rates, resolve_traits, trait_scores
from charloop.stages.filter.discriminators import Decision, record_traits


@dataclass(frozen=True)
class TraitReader:
    """Each character's traits and the scorer that reads them (solo images only: in a
    joint scene the scorer cannot tell whose hair it sees)."""

    traits: dict[str, list[str]]
    score: Callable[[list[Image.Image], list[str]], np.ndarray]
    min_score: float

    def read(self, rows: list[dict[str, Any]], decisions: list[Decision], images: dict) -> None:
        """Score and record every solo image's traits on its decision."""
        by_id = {row["id"]: row for row in rows}
        for name, traits in self.traits.items():
            solo = [
                d
                for d in decisions
                if list(by_id[d.id].get("characters") or [name]) == [name] and d.id in images
            ]
            if solo and traits:
                scores = self.score([images[d.id] for d in solo], traits)
                record_traits(solo, scores, traits, self.min_score)


def trait_reader(project: Project) -> TraitReader | None:
    """The project's :class:`TraitReader`, or None without a ``traits`` section."""
    settings = project.params.traits
    if settings is None:
        return None
    resolved = resolve_traits(project)
    return TraitReader(
        {name: t.all for name, t in resolved.items()},
        lambda images, traits: trait_scores(project, images, traits),
        settings.min_score,
    )


def trait_facts(reader: TraitReader, decisions: list[Decision]) -> dict[str, Any]:
    """Per-trait pass rates of the scored candidates and of the kept set, per character."""
    facts: dict[str, Any] = {}
    for name, traits in reader.traits.items():
        scored = [d for d in decisions if d.traits is not None and set(d.traits) == set(traits)]
        matrix = np.array([[d.scores[f"trait: {t}"] for t in traits] for d in scored])
        kept = np.array([row for row, d in zip(matrix, scored, strict=True) if d.kept])
        facts[name] = {
            "traits": traits,
            "candidates": pass_rates(matrix.reshape(-1, len(traits)), traits, reader.min_score),
            "kept": pass_rates(kept.reshape(-1, len(traits)), traits, reader.min_score),
        }
    return facts
