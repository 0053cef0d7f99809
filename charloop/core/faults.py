"""Failpoints for the reliability suite: kill this process at a named point.

``CHARLOOP_CRASH_AT=<point>`` makes the process SIGKILL itself (no cleanup, no finally
blocks: what an OOM kill or a pulled plug does) the first time it reaches ``point``.
Unset, a failpoint costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "CHARLOOP_CRASH_AT"
POINTS = (
    "generate:after-first-batch",
    "train:after-checkpoint",
    "publish:after-dvc",
    "register:after-run",
)


def failpoint(point: str) -> None:
    """Die here if ``CHARLOOP_CRASH_AT`` names this point."""
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
