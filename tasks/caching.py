"""Cache keys and retry rules shared by the stage tasks.

Prefect's default ``INPUTS`` policy would hash a path by its string and miss content
changes, and ``TASK_SOURCE`` would miss changes in the library helpers a task calls.
Keys here combine the library code fingerprint, the digests of the task's inputs, and
the content digest of the task's existing output folder; with no finished output on
disk there is no key, so a deleted folder is always rebuilt rather than served from a
stale cached result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from charloop.hashing import code_fingerprint, sha256_json, tree_digest
from charloop.stage import MARKER, StageOutput


def _digestible(value: Any) -> Any:
    """A JSON-able stand-in for a task argument: digests for stage outputs, dumps for models."""
    if isinstance(value, StageOutput):
        return value.digest
    if hasattr(value, "params") and hasattr(value, "root"):  # a charloop Project
        return value.params.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        return {k: _digestible(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {k: _digestible(v) for k, v in value.items()}
    return value


def output_cache_key(output_dir: Callable[[dict[str, Any]], Path]) -> Callable[..., str | None]:
    """A ``cache_key_fn`` for a stage task whose output folder ``output_dir(parameters)`` gives."""

    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        folder = output_dir(parameters)
        if not (folder / MARKER).is_file():
            return None  # nothing finished on disk: run, and do not serve an old result
        return sha256_json(
            {
                "task": context.task.name,
                "code": code_fingerprint(),
                "inputs": {k: _digestible(v) for k, v in parameters.items()},
                "output": tree_digest(folder, exclude=(MARKER,)),
            }
        )

    return key


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the failure is deterministic (bad data, diverged loss, bad input)."""
    from charloop.filter import NotEnoughImages
    from charloop.review import ReviewTimedOut
    from charloop.train import TrainingDiverged

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
