"""Content hashes: files, folders and JSON-able values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's content, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stable_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) so equal values hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(value: Any) -> str:
    """Hex sha256 of the canonical JSON of ``value``."""
    return sha256_bytes(stable_json(value).encode())


def tree_digest(
    root: str | Path, exclude: tuple[str, ...] = (), subfolders_only: bool = False
) -> str:
    """Hex sha256 over every file's relative path and content under ``root``.

    Args:
        root: Folder to hash.
        exclude: File names to leave out (e.g. a stage's own completion marker).
        subfolders_only: Leave out the files directly in ``root`` (bookkeeping beside data
            kept in subfolders).
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name in exclude or (subfolders_only and path.parent == root):
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()
