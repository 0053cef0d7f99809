"""Ingest: copy new reference images into the character's reference folder, deduplicated."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from charloop.core.hashing import sha256_file
from charloop.scenes.references import IMAGE_SUFFIXES, open_image

logger = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What an ingest added, and what it skipped with the reason."""

    added: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def ingest_references(source: Path, references: Path) -> IngestReport:
    """Copy readable images from ``source`` into ``references`` (named by content hash).

    Files already present (same sha256), non-images and unreadable images are skipped
    with a reason; nothing in ``references`` is overwritten.
    """
    references.mkdir(parents=True, exist_ok=True)
    known = {sha256_file(p) for p in references.iterdir() if p.is_file()}
    report = IngestReport()
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
        if digest in known:
            report.skipped[path.name] = "already ingested"
            continue
        target = references / f"{digest[:16]}{path.suffix.lower()}"
        shutil.copyfile(path, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
        known.add(digest)
        report.added.append(target.name)
    logger.info("ingest: %d added, %d skipped", len(report.added), len(report.skipped))
    return report
