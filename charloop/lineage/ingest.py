"""Ingest: copy new reference images into the character's reference folder, deduplicated."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from charloop.core import atomic
from charloop.core.hashing import sha256_file
from charloop.scenes.references import IMAGE_SUFFIXES, open_image

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What an ingest added, and what it skipped with the reason."""

    added: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


MANIFEST = "ingested.jsonl"
"""One row per ingested image: its file name, sha256, where it came from and when."""


def _free_name(references: Path, name: str) -> Path:
    """``name`` in ``references``, or ``<stem>-2<suffix>``... when that name is taken."""
    target, n = references / name, 1
    while target.exists():
        n += 1
        target = references / f"{Path(name).stem}-{n}{Path(name).suffix}"
    return target


def ingest_references(source: Path, references: Path) -> IngestReport:
    """Copy readable images from ``source`` into ``references``, keeping their file names.

    The content hash goes in ``references/ingested.jsonl``; an image already present
    (same sha256, under any name) or repeated within the batch, non-images and unreadable
    images are skipped with a reason. Nothing in ``references`` is overwritten: a new
    image whose name is taken gets a ``-2``, ``-3``... suffix.
    """
    references.mkdir(parents=True, exist_ok=True)
    known = {
        sha256_file(p): p.name
        for p in references.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    }
    report = IngestReport()
    batch: dict[str, str] = {}
    rows = atomic.read_jsonl(references / MANIFEST) if (references / MANIFEST).is_file() else []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.skipped[path.name] = f"not an image ({path.suffix or 'no suffix'})"
            continue
        try:
            open_image(path)
        except OSError as exc:
            report.skipped[path.name] = f"unreadable: {exc}"
            continue
        digest = sha256_file(path)
        if digest in batch:
            report.skipped[path.name] = f"the same image as {batch[digest]} in this batch"
            continue
        if digest in known:
            report.skipped[path.name] = f"already in the references as {known[digest]}"
            continue
        target = _free_name(references, path.name)
        atomic.write_bytes(target, path.read_bytes())
        known[digest] = batch[digest] = target.name
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        rows.append({"file": target.name, "sha256": digest, "source": path.name, "at": stamp})
        report.added.append(target.name)
    if report.added:
        atomic.write_jsonl(references / MANIFEST, rows)
    logger.info("ingest: %d added, %d skipped", len(report.added), len(report.skipped))
    return report
