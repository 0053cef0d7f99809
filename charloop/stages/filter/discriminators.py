"""Discriminators: pure scoring rules that turn per-image scores into recorded reasons."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from charloop.models.embedder import nearest_reference_match
from charloop.params.filter import (
    DuplicatesCheck,
    IdentityCheck,
    QualityCheck,
    ScoreThreshold,
    TraitsCheck,
)
from charloop.stages.filter.clustering import cohesive_anchor
from charloop.stages.filter.imagestats import dhash, hamming, quality_scores

MISSED_TRAIT = "missed trait"
"""How a rejection for a trait the image does not show begins (``report.jsonl``)."""


@dataclass
class Decision:
    """The filter's verdict on one image: kept when no discriminator gave a reason."""

    id: str
    file: str
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    nearest_reference: str | None = None
    """File name of the reference image this one is closest to (the review desk shows it)."""
    traits: dict[str, bool] | None = None
    """Trait -> shown, by the trait scorer (when the params have a ``traits`` section)."""

    @property
    def kept(self) -> bool:
        return not self.reasons

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "file": self.file,
            "decision": "keep" if self.kept else "reject",
            "reasons": self.reasons,
            "scores": self.scores,
        }
        if self.traits is not None:
            row["traits"] = self.traits
        return row | (
            {"nearest_reference": self.nearest_reference} if self.nearest_reference else {}
        )


def check_quality(decision: Decision, image: Image.Image, rule: QualityCheck) -> None:
    """Score exposure, contrast and sharpness; add a reason for each failed threshold."""
    scores = quality_scores(image)
    decision.scores.update(scores)
    low, high = rule.exposure_range
    if not low <= scores["exposure"] <= high:
        decision.reasons.append(f"exposure {scores['exposure']:.3f} outside [{low}, {high}]")
    if scores["contrast"] < rule.min_contrast:
        decision.reasons.append(f"contrast {scores['contrast']:.4f} < {rule.min_contrast}")
    if scores["sharpness"] < rule.min_sharpness:
        decision.reasons.append(
            f"sharpness {scores['sharpness']:.2e} < {rule.min_sharpness} (blurry)"
        )


def check_duplicates(
    decisions: list[Decision], images: dict[str, Image.Image], rule: DuplicatesCheck
) -> None:
    """Reject images within ``rule.max_distance`` dHash bits of an earlier surviving image."""
    survivors: list[tuple[str, int]] = []
    for decision in decisions:
        if decision.id not in images:
            continue
        phash = dhash(images[decision.id])
        close = [(hamming(phash, h), other) for other, h in survivors]
        close = [(d, other) for d, other in close if d <= rule.max_distance]
        if close:
            distance, other = min(close)
            decision.reasons.append(f"near duplicate of {other} (dHash distance {distance})")
        elif decision.kept:
            survivors.append((decision.id, phash))


def record_traits(
    decisions: list[Decision], scores: np.ndarray, traits: list[str], min_score: float
) -> None:
    """Record each trait's score (``trait: <name>``) and verdict on each decision."""
    for decision, row in zip(decisions, scores, strict=True):
        decision.traits = {}
        for trait, score in zip(traits, row, strict=True):
            decision.scores[f"trait: {trait}"] = float(score)
            decision.traits[trait] = bool(score >= min_score)


TRAIT_CERTAINTY = "trait certainty"
"""The score ``keep_best`` ranks on: the sum of an image's log trait scores."""


def joint_trait_score(scores: Iterable[float]) -> float:
    """An image's :data:`TRAIT_CERTAINTY`: its trait scores' logs summed (the scorer's
    probabilities multiplied), each floored at 1e-6."""
    return float(sum(np.log(max(score, 1e-6)) for score in scores))


def best_cut(scores: Iterable[float], fraction: float) -> float:
    """The lowest score among the best ``fraction`` of ``scores`` (at least one kept)."""
    ranked = sorted(scores, reverse=True)
    return float(ranked[max(1, int(np.ceil(fraction * len(ranked)))) - 1])


def check_traits(decisions: list[Decision], rule: TraitsCheck, min_score: float) -> None:
    """Reject an image missing more than ``rule.max_missed`` traits, naming each one missed;
    with ``rule.keep_best`` keep only the surest of the images still passing."""
    for decision in decisions:
        missed = [t for t, shown in (decision.traits or {}).items() if not shown]
        if len(missed) > rule.max_missed:
            decision.reasons += [
                f"{MISSED_TRAIT} {t!r} ({decision.scores[f'trait: {t}']:.2f} < {min_score})"
                for t in missed
            ]
    if rule.keep_best is not None:
        keep_surest(decisions, rule.keep_best)


def keep_surest(decisions: list[Decision], fraction: float) -> None:
    """Of the passing images with traits read, reject all but the ``fraction`` with the
    highest joint trait score (log scores summed: the scorer's probabilities multiplied),
    ranked per character (per trait set: sums over different traits do not compare)."""
    groups: dict[frozenset[str], list[Decision]] = {}
    for decision in decisions:
        if decision.kept and decision.traits:
            groups.setdefault(frozenset(decision.traits), []).append(decision)
            scores = [decision.scores[f"trait: {t}"] for t in decision.traits]
            decision.scores[TRAIT_CERTAINTY] = joint_trait_score(scores)
    for passing in groups.values():
        _cut_below(passing, fraction)


def _cut_below(passing: list[Decision], fraction: float) -> None:
    cut = best_cut((d.scores[TRAIT_CERTAINTY] for d in passing), fraction)
    for decision in passing:
        if (score := decision.scores[TRAIT_CERTAINTY]) < cut:
            decision.reasons.append(
                f"{TRAIT_CERTAINTY} {score:.3f} is below the best {fraction:.0%} (cut {cut:.3f})"
            )


def apply_threshold(
    decisions: list[Decision], scores: np.ndarray, name: str, rule: ScoreThreshold
) -> None:
    """Record ``scores`` as ``name``; reject by absolute floor, low-outlier z-score and/or
    rank (only the best ``keep_best`` fraction passes)."""
    mean, std = float(scores.mean()), float(scores.std())
    cut = None
    if rule.keep_best is not None and len(scores):
        cut = best_cut(scores, rule.keep_best)
    for decision, score in zip(decisions, scores, strict=True):
        decision.scores[name] = float(score)
        if rule.min_similarity is not None and score < rule.min_similarity:
            decision.reasons.append(f"{name} {score:.4f} < {rule.min_similarity}")
        if rule.max_outlier_z is not None and std > 1e-6:
            z = (score - mean) / std
            if z < -rule.max_outlier_z:
                decision.reasons.append(
                    f"{name} {score:.4f} is an outlier (z={z:.2f} < -{rule.max_outlier_z})"
                )
        if cut is not None and score < cut:
            decision.reasons.append(
                f"{name} {score:.4f} is below the best {rule.keep_best:.0%} (cut {cut:.4f})"
            )


def identity_anchor(
    embeddings: np.ndarray, references: np.ndarray | None, rule: IdentityCheck
) -> tuple[np.ndarray, dict[str, Any]]:
    """The identity anchor (unit vector) and how it was chosen: the mean reference
    embedding, else the centroid of the most cohesive cluster of ``embeddings``."""
    if references is not None and len(references):
        anchor = references.mean(0)
        anchor /= max(float(np.linalg.norm(anchor)), 1e-12)
        return anchor, {"anchor": "references", "references": len(references)}
    anchor, labels, best = cohesive_anchor(embeddings, rule.cluster_divisor, rule.min_cluster_size)
    info = {
        "anchor": "cohesive cluster",
        "clusters": int(labels.max()) + 1,
        "anchor_cluster_size": int((labels == best).sum()),
    }
    return anchor, info


def anchor_similarity(
    embeddings: np.ndarray, references: np.ndarray | None, anchor: np.ndarray, rule: IdentityCheck
) -> np.ndarray:
    """Each image's identity score: the mean cosine to its ``rule.nearest`` closest
    references (``score: nearest_references``), else the cosine to ``anchor``."""
    if rule.score == "centroid" or references is None or not len(references):
        return embeddings @ anchor
    return nearest_reference_match(embeddings, references, rule.nearest)


def nearest_references(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Index of each image's most similar reference (cosine of unit embeddings)."""
    return np.asarray(np.argmax(embeddings @ references.T, axis=1))


def identity_scores(
    embeddings: np.ndarray, references: np.ndarray | None, rule: IdentityCheck
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each image's identity score (see :func:`anchor_similarity`), and how the anchor
    was chosen."""
    anchor, info = identity_anchor(embeddings, references, rule)
    if references is not None and len(references):
        info["score"] = rule.score
    return anchor_similarity(embeddings, references, anchor, rule), info
