"""Ingest keeps the artist's file names; the content hash goes in the manifest."""

from __future__ import annotations

import numpy as np
from PIL import Image

from charloop.core import atomic
from charloop.core.hashing import sha256_file
from charloop.lineage.ingest import MANIFEST, ingest_references


def _image(path, value: int) -> None:
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)


def test_ingest_keeps_names_dedupes_and_never_overwrites(tmp_path):
    refs, new = tmp_path / "refs", tmp_path / "new"
    refs.mkdir()
    new.mkdir()
    _image(refs / "kira_front.png", 10)
    _image(new / "kira_front.png", 20)  # same name, other picture: kept under a new name
    _image(new / "kira_side.png", 30)
    _image(new / "kira_side_copy.png", 30)  # the same picture twice in one batch
    _image(new / "old.png", 10)  # already in the references under another name
    report = ingest_references(new, refs)
    assert report.added == ["kira_front-2.png", "kira_side.png"]
    assert report.skipped == {
        "kira_side_copy.png": "the same image as kira_side.png in this batch",
        "old.png": "already in the references as kira_front.png",
    }
    rows = atomic.read_jsonl(refs / MANIFEST)
    assert [(r["file"], r["source"]) for r in rows] == [
        ("kira_front-2.png", "kira_front.png"),
        ("kira_side.png", "kira_side.png"),
    ]
    assert rows[1]["sha256"] == sha256_file(refs / "kira_side.png")
    assert sha256_file(refs / "kira_front.png") != rows[0]["sha256"]  # untouched
