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

import logging
from collections.abc import Callable
from typing import Any

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from charloop.stages.contract import StageIdentity


def stage_cache_key(
    identity_of: Callable[[dict[str, Any]], StageIdentity[Any]],
) -> Callable[..., str | None]:
    """A ``cache_key_fn`` from a function of the task's parameters to its stage identity."""

    def key(context: Any, parameters: dict[str, Any]) -> str | None:
        del context
        return identity_of(parameters).cache_key()

    return key


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may pass on a second try (a busy file, a dropped connection).

    charloop's own errors (bad input, a refused check, a diverged loss), value and path
    errors, and MLflow errors that name a missing or invalid resource are deterministic:
    retrying them only delays the message.
    """
    from mlflow.exceptions import MlflowException

    from charloop.core.errors import CharloopError

    try:
        state.result()
    except (CharloopError, ValueError, FileNotFoundError, PermissionError):
        return False
    except MlflowException as exc:
        return exc.error_code not in _PERMANENT_MLFLOW_ERRORS
    except Exception:
        return True
    return False


_PERMANENT_MLFLOW_ERRORS = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST",
                            "PERMISSION_DENIED", "INVALID_STATE"}  # fmt: skip


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a task run; a plain logger when called through ``.fn()``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tasks")
