"""Evaluation metrics from embeddings: pure functions, no models.

Two axes, never one scalar: identity (pairwise across contexts, and to the reference set)
and prompt fidelity. Overfitting shows as high similarity to the nearest training image
and low diversity across seeds of one context. Everything is broken down per context so
the base model's bias shows. A metric that cannot be computed is left out, never NaN.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from charloop.models.embedder import mean_pairwise_cosine, nearest_reference_match
from charloop.stages.layout import TRAIN_LOG

logger = logging.getLogger(__name__)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def consistency_metrics(
    embeddings: np.ndarray,
    text_embeddings: np.ndarray | None,
    train_embeddings: np.ndarray | None,
    groups: list[str],
    references: np.ndarray | None = None,
    seeds: list[int] | None = None,
    nearest: int = 3,
) -> dict[str, Any]:
    """Identity, prompt fidelity, memorisation and diversity scores for one set of images.

    Args:
        embeddings: L2-normalised image embeddings, one row per image.
        text_embeddings: Matching context-prompt embeddings (rows aligned), or None.
        train_embeddings: Embeddings of the training images, or None.
        groups: The context id of each image (images of one context differ by seed).
        references: Embeddings of the character's reference images, or None.
        seeds: The seed of each image; with two or more, ``identity_noise`` is the standard
            error of identity consistency across seeds (``reference_match_noise`` likewise).
        nearest: How many of the closest references ``reference_match`` averages over.

    Returns:
        Flat float metrics plus ``per_context``: context id -> the same scores for its images.
        ``diversity_noise`` is the standard error of diversity across contexts: a change
        smaller than the noise is not a change.
    """
    sims = embeddings @ embeddings.T
    labels = np.array(groups)
    metrics: dict[str, Any] = {"identity_consistency": mean_pairwise_cosine(embeddings)}
    per_image: dict[str, np.ndarray] = {}
    if text_embeddings is not None:
        per_image["prompt_fidelity"] = np.sum(embeddings * text_embeddings, axis=1)
    if train_embeddings is not None and len(train_embeddings):
        per_image["nearest_train_similarity"] = (embeddings @ train_embeddings.T).max(1)
    if references is not None and len(references):
        per_image["reference_similarity"] = embeddings @ _unit(references.mean(0))
        per_image["reference_match"] = nearest_reference_match(embeddings, references, nearest)
    metrics.update({name: float(scores.mean()) for name, scores in per_image.items()})
    per_context: dict[str, dict[str, float]] = {}
    diversities = []
    for group in dict.fromkeys(groups):
        inside, outside = labels == group, labels != group
        entry = {name: float(scores[inside].mean()) for name, scores in per_image.items()}
        if outside.any():
            entry["identity_to_other_contexts"] = float(sims[np.ix_(inside, outside)].mean())
        if inside.sum() >= 2:
            entry["diversity"] = 1.0 - mean_pairwise_cosine(embeddings[inside])
            diversities.append(entry["diversity"])
        per_context[group] = entry
    if diversities:
        metrics["diversity"] = float(np.mean(diversities))
    if len(diversities) >= 2:
        metrics["diversity_noise"] = standard_error(diversities)
    if seeds is not None and (noise := _identity_noise(embeddings, np.array(seeds))) is not None:
        metrics["identity_noise"] = noise
    match = per_image.get("reference_match")
    spread = _seed_noise(match, seeds) if seeds is not None and match is not None else None
    if spread is not None:
        metrics["reference_match_noise"] = spread
    metrics["per_context"] = per_context
    return metrics


def standard_error(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (sample standard deviation / sqrt(n))."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _seed_noise(scores: np.ndarray, seeds: list[int]) -> float | None:
    """Standard error across seeds of a per-image score's per-seed mean."""
    labels = np.array(seeds)
    per_seed = [float(scores[labels == seed].mean()) for seed in dict.fromkeys(seeds)]
    return standard_error(per_seed) if len(per_seed) >= 2 else None


def trait_noise(per_image: dict[int, float], jobs: list[Any]) -> float | None:
    """Standard error across seeds of the trait pass rate (``per_image``: job index ->
    share of the traits that render shows; ``jobs``: the evaluation's, for their seeds)."""
    if not per_image:
        return None
    index = sorted(per_image)
    shares = np.array([per_image[i] for i in index])
    return _seed_noise(shares, [jobs[i].seed for i in index])


def _identity_noise(embeddings: np.ndarray, seeds: np.ndarray) -> float | None:
    """Standard error of identity consistency across seeds: the consistency of each seed's
    images (one per context), their spread. None with fewer than two usable seeds."""
    per_seed = [
        mean_pairwise_cosine(embeddings[seeds == seed])
        for seed in dict.fromkeys(seeds.tolist())
        if (seeds == seed).sum() >= 2
    ]
    return standard_error(per_seed) if len(per_seed) >= 2 else None


def layout_metrics(features: np.ndarray, groups: list[str]) -> dict[str, float]:
    """``layout_diversity``: 1 - mean pairwise cosine of the edge layouts of one context's
    seeds, averaged over contexts, and its standard error across contexts
    (``layout_diversity_noise``). Near 0: every seed draws the same picture.

    An identity embedder is built to ignore pose and framing, so its spread across seeds
    (``diversity``) falls whenever the identity gets consistent; the collapse rule reads
    this one instead.
    """
    labels = np.array(groups)
    spreads = [
        1.0 - mean_pairwise_cosine(features[labels == group])
        for group in dict.fromkeys(groups)
        if (labels == group).sum() >= 2
    ]
    out: dict[str, float] = {}
    if spreads:
        out["layout_diversity"] = float(np.mean(spreads))
    if len(spreads) >= 2:
        out["layout_diversity_noise"] = standard_error(spreads)
    return out


def with_and_without(lora: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Merge the LoRA's and the base model's metrics; add the trigger's effect.

    The LoRA's flat metrics keep their names, the base model's get a ``base_`` prefix;
    ``trigger_effect`` is how much more consistent the identity is with the LoRA
    (overall, and per context on ``identity_to_other_contexts``).
    """
    merged: dict[str, Any] = {k: v for k, v in lora.items() if k != "per_context"}
    merged.update({f"base_{k}": v for k, v in base.items() if k != "per_context"})
    merged["trigger_effect"] = lora["identity_consistency"] - base["identity_consistency"]
    per_context = {group: dict(entry) for group, entry in lora["per_context"].items()}
    for group, entry in per_context.items():
        base_entry = base["per_context"].get(group, {})
        if "identity_to_other_contexts" in entry and "identity_to_other_contexts" in base_entry:
            entry["trigger_effect"] = (
                entry["identity_to_other_contexts"] - base_entry["identity_to_other_contexts"]
            )
    merged["per_context"] = per_context
    merged["base_per_context"] = base["per_context"]
    return merged


def validation_loss(adapter_dir: str | Path) -> float | None:
    """The last validation loss the training stage recorded, or None (older adapters).

    Reads ``train_log.json``'s ``validation_loss``: a list of ``{"step", "loss"}``.
    """
    path = Path(adapter_dir) / TRAIN_LOG
    if not path.is_file():
        return None
    points = json.loads(path.read_text()).get("validation_loss") or []
    if not points:
        return None
    loss = float(points[-1]["loss"])
    if not math.isfinite(loss):
        logger.warning("evaluate: the last validation loss is %s; left out", loss)
        return None
    return loss


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat, finite float metrics (what the flow compares and MLflow logs)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
