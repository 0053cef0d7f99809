"""What the review desk (``charloop review serve``) shows and records, without the web.

A card per candidate joins the filter's report row (decision, reasons, scores) with the
generation manifest row (prompt, context). Decisions from the desk are validated and
recorded exactly as ``charloop review apply`` records a sheet, with ``via: web``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.stages.contract import MARKER
from charloop.stages.layout import IterationPaths
from charloop.stages.review.stage import (
    HumanDecisions,
    ReviewError,
    load_decisions,
    save_decisions,
)

ITERATION_DIR = re.compile(r"^iter-(\d{3})$")
IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.png$")
REFERENCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+ -]*\.(png|jpe?g|webp)$", re.IGNORECASE)


@dataclass(frozen=True)
class Card:
    """One candidate image as the desk shows it."""

    id: str
    file: str
    decision: str
    reasons: list[str]
    scores: dict[str, float]
    prompt: str
    context: dict[str, str]
    nearest_reference: str | None = None
    """The reference image the filter found closest (None: no references, or a cast)."""
    traits: dict[str, bool] | None = None
    """Trait -> shown, as the trait scorer read this image (None: no trait checks)."""

    @property
    def context_label(self) -> str:
        return ", ".join(v for v in self.context.values() if v) or "-"


@dataclass
class IterationView:
    """An iteration on the desk: its cards, whether it was reviewed, the previous
    iteration's evaluation."""

    iteration: int
    cards: list[Card]
    reviewed_by: str | None
    previous_metrics: dict[str, float] = field(default_factory=dict)
    contact_sheet: Path | None = None
    evaluation_sheet: Path | None = None
    """The previous iteration's evaluation contact sheet (the LoRA these candidates came
    from, on the held-out contexts), when there is one."""
    references: list[str] = field(default_factory=list)
    """File names of the character's reference images."""
    traits: list[str] = field(default_factory=list)
    """The character's declared traits."""
    discovered: list[str] = field(default_factory=list)
    """Traits the filter discovered on the references (the tags they agree on)."""
    kept_traits: dict[str, float] = field(default_factory=dict)
    """Each trait's pass rate in the kept set (the dataset's own consistency)."""


def iterations(workdir: Path) -> list[int]:
    """Iterations with filtered candidates, in order."""
    found = []
    if workdir.is_dir():
        for child in workdir.iterdir():
            match = ITERATION_DIR.match(child.name)
            if (
                match
                and (IterationPaths.of(workdir, int(match[1])).filtered / "report.jsonl").is_file()
            ):
                found.append(int(match[1]))
    return sorted(found)


def cards(workdir: Path, iteration: int) -> list[Card]:
    """The iteration's candidates with the filter's verdicts and the prompts they came from."""
    paths = IterationPaths.of(workdir, iteration)
    manifest = {row["id"]: row for row in atomic.read_jsonl(paths.generated / "manifest.jsonl")}
    out = []
    for row in atomic.read_jsonl(paths.filtered / "report.jsonl"):
        made = manifest.get(row["id"], {})
        scores = {k: float(v) for k, v in (row.get("scores") or {}).items() if v is not None}
        out.append(
            Card(
                row["id"],
                row["file"],
                row["decision"],
                list(row.get("reasons", [])),
                scores,
                made.get("prompt", ""),
                dict(made.get("context", {})),
                row.get("nearest_reference"),
                row.get("traits"),
            )
        )
    return out


def reviewed_by(workdir: Path, iteration: int) -> str | None:
    """Who recorded review decisions for ``iteration`` (None: nobody yet)."""
    decisions = load_decisions(IterationPaths.of(workdir, iteration).review_desk)
    return decisions.reviewer if decisions is not None else None


def reference_files(folder: Path | None) -> list[str]:
    """Image file names in a references folder (what the desk may serve from it)."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and REFERENCE_NAME.match(p.name))


def reference_path(folder: Path | None, name: str) -> Path | None:
    """A reference image by file name; None for anything else (traversal, other files)."""
    if folder is None or name not in reference_files(folder):
        return None
    return folder / name


def evaluation_sheet(workdir: Path, iteration: int) -> Path | None:
    """``iteration``'s evaluation contact sheet, when it was evaluated."""
    sheet = IterationPaths.of(workdir, iteration).evaluation / "contact_sheet.png"
    return sheet if iteration >= 1 and sheet.is_file() else None


def view(
    workdir: Path,
    iteration: int,
    references: Path | None = None,
    traits: list[str] | None = None,
) -> IterationView:
    """Everything the desk page of ``iteration`` shows (``references``: the character's
    reference folder, pinned beside the grid with its ``traits``)."""
    paths = IterationPaths.of(workdir, iteration)
    previous = IterationPaths.of(workdir, iteration - 1).evaluation / "metrics.json"
    metrics: dict[str, float] = {}
    if iteration > 1 and previous.is_file():
        data = json.loads(previous.read_text())
        metrics = {k: float(v) for k, v in data.items() if isinstance(v, int | float)}
    sheet = paths.filtered / "contact_sheet.png"
    found = filter_traits(paths.filtered)
    return IterationView(
        iteration,
        cards(workdir, iteration),
        reviewed_by(workdir, iteration),
        metrics,
        sheet if sheet.is_file() else None,
        evaluation_sheet(workdir, iteration - 1),
        reference_files(references),
        list(traits or []),
        list(found.get("discovered", [])),
        dict(found.get("kept", {}).get("traits", {})),
    )


def filter_traits(folder: Path) -> dict[str, Any]:
    """The first character's trait facts recorded by the filter stage (empty without)."""
    marker = folder / MARKER
    if not marker.is_file():
        return {}
    traits = json.loads(marker.read_text()).get("summary", {}).get("traits") or {}
    return dict(next(iter(traits.values()), {}))


def image_path(workdir: Path, iteration: int, name: str) -> Path | None:
    """A generated image of ``iteration`` by file name; None for anything else (other
    folders, traversal, non-PNG names)."""
    if not IMAGE_NAME.match(name):
        return None
    folder = IterationPaths.of(workdir, iteration).generated.resolve()
    path = (folder / name).resolve()
    return path if path.parent == folder and path.is_file() else None


def record_web_decisions(
    workdir: Path,
    iteration: int,
    verdicts: dict[str, str],
    reviewer: str,
    comment: str = "",
) -> HumanDecisions:
    """Validate the desk's verdicts (image id -> 'keep'/'reject') and record those that
    differ from the filter's, as ``review apply`` does, ``via: web``.

    Raises:
        ReviewError: no reviewer name, an unknown id or verdict.
    """
    if not reviewer.strip():
        raise ReviewError("a reviewer name is required: it is recorded with the decisions")
    automatic = {card.id: card.decision for card in cards(workdir, iteration)}
    keep: list[str] = []
    reject: list[str] = []
    for image_id, verdict in verdicts.items():
        if verdict not in ("keep", "reject"):
            raise ReviewError(f"decision {verdict!r} for {image_id}; use keep or reject")
        if image_id in automatic and verdict == automatic[image_id]:
            continue
        (keep if verdict == "keep" else reject).append(image_id)
    decisions = HumanDecisions(tuple(keep), tuple(reject), reviewer.strip(), comment, via="web")
    decisions.validate(set(automatic))
    save_decisions(IterationPaths.of(workdir, iteration).review_desk, decisions)
    return decisions


SCORE_LABELS = {"identity": "identity", "anchor_similarity": "identity (references)",
                "prompt": "adherence", "sharpness": "quality: sharpness",
                "contrast": "quality: contrast", "exposure": "quality: exposure"}  # fmt: skip
"""The filter's score names as the desk labels them: identity, quality, adherence."""


def scores_of(card: Card) -> dict[str, float]:
    """The card's scores under the desk's labels, identity first."""
    return {label: round(card.scores[key], 3) for key, label in SCORE_LABELS.items()
            if key in card.scores}  # fmt: skip
