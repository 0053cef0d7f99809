"""Review: a person overrides the filter's automatic decisions, by image id.

The review stage always runs. Without human decisions it records the automatic ones, so
the dataset manifest says for every image who decided it (``filter`` or
``human:<reviewer>``). A person reviews either through the paused Prefect flow's form or
through files on the iteration's review desk::

    review/review_sheet.csv   exported candidates; edit the 'decision' column
    review/contact_sheet.png  kept vs rejected, as the filter decided
    review/decisions.json     applied decisions (``charloop review apply``); the review
                              stage and a re-run of the loop read them
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.errors import BadInput, CharloopError
from charloop.stages.contract import NotEnoughImages, StageIdentity, identity
from charloop.stages.results import Filtered, Generated, Reviewed

logger = logging.getLogger(__name__)

SHEET = "review_sheet.csv"
DECISIONS = "decisions.json"
SHEET_COLUMNS = ("id", "decision", "automatic", "reasons", "image")
VERDICTS = ("keep", "reject")


class ReviewError(BadInput, ValueError):
    """Review decisions that cannot be applied (unknown ids, bad verdicts, conflicts)."""


class ReviewTimedOut(CharloopError, RuntimeError):
    """The review gate waited ``review.timeout_s`` with ``on_timeout: fail``."""


@dataclass(frozen=True)
class HumanDecisions:
    """A person's verdicts by image id; ids left out keep the filter's decision."""

    keep: tuple[str, ...] = ()
    reject: tuple[str, ...] = ()
    reviewer: str = ""
    comment: str = ""
    via: str = "cli"
    """Where the decisions came from: 'cli' (review sheet), 'prefect' (the pause form) or
    'web' (the review desk)."""

    def verdict(self, image_id: str) -> str | None:
        if image_id in self.keep:
            return "keep"
        if image_id in self.reject:
            return "reject"
        return None

    def validate(self, known_ids: set[str]) -> None:
        """Raise ReviewError naming unknown ids or ids both kept and rejected."""
        unknown = sorted((set(self.keep) | set(self.reject)) - known_ids)
        if unknown:
            raise ReviewError(f"review decisions name unknown image ids {unknown[:10]}")
        both = sorted(set(self.keep) & set(self.reject))
        if both:
            raise ReviewError(f"review decisions both keep and reject {both[:10]}")


def candidates(filtered: Filtered) -> list[dict[str, Any]]:
    """The filter's per-image report rows: id, file, decision, reasons, scores."""
    return atomic.read_jsonl(Path(filtered.path) / "report.jsonl")


def export_sheet(generated: Generated, filtered: Filtered, desk: Path) -> Path:
    """Write the review sheet (and a copy of the filter's contact sheet) to ``desk``.

    Returns:
        The CSV path; its 'decision' column starts as the automatic decision.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SHEET_COLUMNS)
    for row in candidates(filtered):
        image = Path(generated.path) / row["file"]
        writer.writerow(
            [row["id"], row["decision"], row["decision"], "; ".join(row["reasons"]), image]
        )
    sheet = atomic.write_text(desk / SHEET, buffer.getvalue())
    contact = Path(filtered.path) / "contact_sheet.png"
    if contact.is_file():
        atomic.write_bytes(desk / "contact_sheet.png", contact.read_bytes())
    return sheet


def read_sheet(path: Path, reviewer: str, comment: str = "") -> HumanDecisions:
    """Parse an edited review sheet: every row whose 'decision' differs from 'automatic'.

    Raises:
        ReviewError: a missing column or a verdict other than keep/reject (with its line).
    """
    keep: list[str] = []
    reject: list[str] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"id", "decision", "automatic"} - set(reader.fieldnames or ())
        if missing:
            raise ReviewError(f"{path}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            verdict = row["decision"].strip().lower()
            if verdict not in VERDICTS:
                raise ReviewError(
                    f"{path}:{line}: decision {row['decision']!r} for {row['id']}; "
                    f"use one of {list(VERDICTS)}"
                )
            if verdict != row["automatic"].strip().lower():
                (keep if verdict == "keep" else reject).append(row["id"].strip())
    return HumanDecisions(tuple(keep), tuple(reject), reviewer, comment, via="cli")


def save_decisions(desk: Path, decisions: HumanDecisions) -> Path:
    """Record applied decisions on the desk (atomically) for the review stage to read."""
    return atomic.write_json(desk / DECISIONS, asdict(decisions))


def load_decisions(desk: Path) -> HumanDecisions | None:
    """Applied decisions from the desk, or None when nobody has reviewed yet."""
    path = desk / DECISIONS
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    record["keep"] = tuple(record.get("keep", ()))
    record["reject"] = tuple(record.get("reject", ()))
    return HumanDecisions(**record)


def review_identity(
    generated: Generated,
    filtered: Filtered,
    decisions: HumanDecisions | None,
    out_dir: str | Path,
    min_kept: int = 1,
    timed_out: bool = False,
) -> StageIdentity[Reviewed]:
    """Everything that determines the review's outcome."""
    return identity(
        Reviewed,
        out_dir,
        __name__,
        generated=generated.digest,
        filtered=filtered.digest,
        decisions=asdict(decisions) if decisions else None,
        timed_out=timed_out,
        min_kept=min_kept,
    )


def run_review(
    generated: Generated,
    filtered: Filtered,
    decisions: HumanDecisions | None,
    out_dir: str | Path,
    min_kept: int = 1,
    timed_out: bool = False,
) -> Reviewed:
    """Merge the automatic and human decisions into ``kept.jsonl`` and ``decisions.jsonl``.

    Args:
        generated: The generate stage (its manifest rows become the kept rows).
        filtered: The filter stage (automatic decisions).
        decisions: A person's verdicts, or None to keep the automatic decisions.
        out_dir: Stage folder, written atomically.
        min_kept: Fewest images the dataset may have.
        timed_out: The gate waited in vain and fell back to the automatic decisions.

    Raises:
        ReviewError: decisions name unknown ids.
        NotEnoughImages: fewer than ``min_kept`` images are kept.
    """
    stage = review_identity(generated, filtered, decisions, out_dir, min_kept, timed_out)
    if done := stage.done():
        return done
    report = candidates(filtered)
    if decisions is not None:
        decisions.validate({row["id"] for row in report})
    manifest = {r["id"]: r for r in atomic.read_jsonl(Path(generated.path) / "manifest.jsonl")}
    human_label = f"human:{decisions.reviewer or 'anonymous'}" if decisions else ""
    records, kept = [], []
    for row in report:
        human = decisions.verdict(row["id"]) if decisions else None
        final = human or row["decision"]
        record = {
            "id": row["id"],
            "automatic": row["decision"],
            "final": final,
            "decided_by": human_label if human else "filter",
            "reasons": row["reasons"],
            "scores": row.get("scores", {}),
        }
        records.append(record)
        if final == "keep":
            kept.append(manifest[row["id"]] | {"review": record})
    if len(kept) < min_kept:
        raise NotEnoughImages(
            f"review kept {len(kept)} images, fewer than filter.min_kept={min_kept}; "
            "keep more images in the review or generate more"
        )
    overridden = sum(r["automatic"] != r["final"] for r in records)
    with atomic.staged_dir(stage.out_dir) as staging:
        atomic.write_jsonl(staging / "decisions.jsonl", records)
        atomic.write_jsonl(staging / "kept.jsonl", kept)
        output = stage.seal(
            staging,
            kept=len(kept),
            overridden=overridden,
            reviewer=decisions.reviewer if decisions else None,
            via=decisions.via if decisions else ("timeout" if timed_out else "automatic"),
            comment=decisions.comment if decisions else "",
        )
    logger.info("review: kept %d (%d overridden by a person)", len(kept), overridden)
    return output
