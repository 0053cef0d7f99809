"""Locks: one loop per character at a time, and one writer at a time for DVC and MLflow."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from charloop.core import atomic
from charloop.core.errors import Refused

logger = logging.getLogger(__name__)


class LoopLocked(Refused, RuntimeError):
    """Another loop holds the character's lock."""


@contextmanager
def exclusive(lock_file: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold ``lock_file`` for the block; wait up to ``timeout_s`` (0: do not wait).

    The holder's pid, host and start time are written beside the lock so the refusal
    message says who holds it. OS file locks die with their process, so a killed run
    never leaves a stale lock behind.

    Raises:
        LoopLocked: the lock stayed taken for ``timeout_s``.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = lock_file.with_suffix(".holder.json")
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        info = holder.read_text() if holder.is_file() else "unknown holder"
        raise LoopLocked(
            f"{what} is locked by another run ({info.strip()}); waited {timeout_s:g}s. "
            "Wait for it to finish, or raise loop.lock_timeout_s to queue behind it"
        ) from None
    try:
        atomic.write_text(
            holder,
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}),
        )
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def character_lock(character_dir: Path, timeout_s: float, character: str) -> Any:
    """The loop lock of one character (all lineage branches)."""
    return exclusive(character_dir / ".loop.lock", timeout_s, f"character '{character}'")


def store_lock(root: Path) -> Any:
    """Serialises DVC and MLflow writes of every loop sharing a project (waits up to 10 min)."""
    return exclusive(root / ".charloop" / "stores.lock", 600.0, "the DVC/MLflow stores")
