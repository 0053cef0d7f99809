"""Cache keys and retry rules shared by the stage tasks.

Prefect's default ``INPUTS`` policy would hash a path by its string and miss content
changes, and ``TASK_SOURCE`` would miss changes in the library helpers a task calls. A
task's key here is the library's own stage identity (:class:`StageIdentity`): the
stage's fingerprint (its code, params and input digests) plus the digest of its sealed
output folder. With no finished output on disk there is no key, so a deleted folder is
always rebuilt rather than served from a stale cached result. Nothing here hashes on
its own: tasks and the flow ask the library whether a stage is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from charloop.stages.contract import NotEnoughImages, StageIdentity


def stage_cache_key(
    identity_of: Callable[[dict[str, Any]], StageIdentity[Any]],
) -> Callable[..., str | None]:
    """A ``cache_key_fn`` from a function of the task's parameters to its stage identity."""

    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        del context
        return identity_of(parameters).cache_key()

    return key


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the failure is deterministic (bad data, diverged loss, bad input)."""
    from charloop.stages.review.stage import ReviewTimedOut
    from charloop.stages.train.loop import TrainingDiverged

    try:
        state.result()
    except (
        NotEnoughImages,
        TrainingDiverged,
        ReviewTimedOut,
        ValueError,
        FileNotFoundError,
        PermissionError,
    ):
        return False
    except Exception:
        return True
    return False
