"""Atomic writes: temp file or folder in the same directory, then rename.

A crash leaves either the old content or the new, never a torn file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK
"""What ``open()`` would give a new file (mkstemp's 0600 would hide adapters from the team)."""
DIR_MODE = 0o777 & ~_UMASK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def sweep_leftovers(folder: Path, name: str = "*") -> list[Path]:
    """Remove temp files and folders that killed writers of ``folder/name`` left there
    (``name`` is a glob: ``"*"`` sweeps the whole folder).

    Temp names carry the writer's pid (``.<name>.<pid>.<random>.tmp``); only those of
    processes that no longer run are removed, so a live concurrent writer is never hit.
    """
    removed = []
    for leftover in folder.glob(f".{name}.*.tmp"):
        pid = leftover.name[:-4].rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line atomically."""
    return write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``final``; on success it replaces ``final`` whole.

    On error the temp folder is removed and ``final`` is untouched, so a stage's
    output folder is always either complete or absent.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_prefix(final), suffix=".tmp"))
    tmp.chmod(DIR_MODE)
    try:
        yield tmp
        if final.exists():
            trash = final.with_name(f".{final.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
