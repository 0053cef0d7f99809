"""Filter: automatic discriminators decide which generated images become training data.

Every decision carries its reasons and scores in ``report.jsonl``, and ``kept.jsonl``
holds the manifest rows of the images that passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from charloop import atomic
from charloop.config import Project
from charloop.imagestats import dhash, hamming, quality_scores
from charloop.params import FilterParams
from charloop.stage import StageOutput, completed, fingerprint, seal

logger = logging.getLogger(__name__)


class NotEnoughImages(RuntimeError):
    """The filter kept fewer images than ``filter.min_kept``; the iteration stops."""


@dataclass
class Decision:
    """The filter's verdict on one image."""

    id: str
    file: str
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def kept(self) -> bool:
        return not self.reasons

    def as_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": self.file,
            "decision": "keep" if self.kept else "reject",
            "reasons": self.reasons,
            "scores": self.scores,
        }


def quality_reasons(scores: dict[str, float], rules: FilterParams) -> list[str]:
    """Reasons an image fails the quality check (empty when it passes)."""
    reasons = []
    low, high = rules.exposure_range
    if not low <= scores["exposure"] <= high:
        reasons.append(f"exposure {scores['exposure']:.3f} outside [{low}, {high}]")
    if scores["contrast"] < rules.min_contrast:
        reasons.append(f"contrast {scores['contrast']:.4f} < {rules.min_contrast}")
    if scores["sharpness"] < rules.min_sharpness:
        reasons.append(f"sharpness {scores['sharpness']:.2e} < {rules.min_sharpness} (blurry)")
    return reasons


def judge(rows: list[dict[str, Any]], image_dir: Path, rules: FilterParams) -> list[Decision]:
    """Score and decide every manifest row, in manifest order.

    Exact duplicates (same sha256) and perceptual duplicates (dHash distance within
    ``rules.duplicate_max_distance`` of an earlier kept image) are rejected, as are
    unreadable files and images failing the quality thresholds.
    """
    decisions = []
    kept_hashes: list[tuple[str, int]] = []
    seen_sha: dict[str, str] = {}
    for row in rows:
        decision = Decision(id=row["id"], file=row["file"])
        decisions.append(decision)
        if row["sha256"] in seen_sha:
            decision.reasons.append(f"exact duplicate of {seen_sha[row['sha256']]}")
            continue
        seen_sha[row["sha256"]] = row["id"]
        try:
            with Image.open(image_dir / row["file"]) as handle:
                image = handle.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            decision.reasons.append(f"unreadable image: {exc}")
            continue
        decision.scores = quality_scores(image)
        decision.reasons.extend(quality_reasons(decision.scores, rules))
        phash = dhash(image)
        near = [(other, hamming(phash, h)) for other, h in kept_hashes]
        close = [(other, d) for other, d in near if d <= rules.duplicate_max_distance]
        if close:
            other, distance = min(close, key=lambda pair: pair[1])
            decision.reasons.append(f"near duplicate of {other} (dHash distance {distance})")
        decision.scores["dhash"] = float(phash)
        if decision.kept:
            kept_hashes.append((row["id"], phash))
    return decisions


def run_filter(project: Project, generated: StageOutput, out_dir: str | Path) -> StageOutput:
    """Write ``report.jsonl`` (every decision) and ``kept.jsonl`` (kept manifest rows).

    Raises:
        NotEnoughImages: fewer than ``filter.min_kept`` images passed.
    """
    rules = project.params.filter
    fp = fingerprint("filter", rules=rules.model_dump(), generated=generated.digest)
    out_dir = Path(out_dir)
    output = completed(out_dir, fp)
    if output is None:
        rows = atomic.read_jsonl(Path(generated.path) / "manifest.jsonl")
        decisions = judge(rows, Path(generated.path), rules)
        kept_ids = {d.id for d in decisions if d.kept}
        with atomic.staged_dir(out_dir) as staging:
            atomic.write_jsonl(staging / "report.jsonl", [d.as_row() for d in decisions])
            atomic.write_jsonl(staging / "kept.jsonl", [r for r in rows if r["id"] in kept_ids])
            summary = {"candidates": len(rows), "kept": len(kept_ids)}
            output = seal("filter", staging, out_dir, fp, summary)
        logger.info("filter: kept %d of %d images", len(kept_ids), len(rows))
    if output.summary["kept"] < rules.min_kept:
        raise NotEnoughImages(
            f"filter kept {output.summary['kept']} of {output.summary['candidates']} images, "
            f"fewer than filter.min_kept={rules.min_kept}; see {out_dir / 'report.jsonl'} for "
            "the reasons and loosen the thresholds or generate more images"
        )
    return output
