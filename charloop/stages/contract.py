"""The stage contract: one cache identity, sealed folders, typed results.

A stage writes its whole output folder atomically and seals it with a marker holding the
stage's fingerprint (everything that determined the output: the code the stage runs, its
params, its inputs' digests) and its typed result. :class:`StageIdentity` is the one place
that decides whether a stage is already done: the library's ``run_*`` functions, the
Prefect tasks' cache keys and the flow all ask it and never recompute it. A re-run with
the same fingerprint and an intact folder returns the recorded result without the work,
which is how an interrupted loop resumes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from charloop.core.codegraph import code_fingerprint
from charloop.core.hashing import sha256_json, tree_digest
from charloop.stages.results import StageResult, from_record, to_record

logger = logging.getLogger(__name__)

MARKER = "_stage.json"

R = TypeVar("R", bound=StageResult)


class NotEnoughImages(RuntimeError):
    """Too few images survived filtering or review to train on."""


def fingerprint(stage: str, code: str, **inputs: Any) -> str:
    """Digest of the stage name, the code of module ``code`` (its import closure within
    charloop) and the stage's JSON-able inputs."""
    return sha256_json({"stage": stage, "code": code_fingerprint(code), "inputs": inputs})[:24]


def _read_marker(folder: Path) -> StageResult | None:
    """The sealed result in ``folder``, or None when there is none or it is unreadable."""
    marker = folder / MARKER
    if not marker.is_file():
        return None
    try:
        return from_record(json.loads(marker.read_text(encoding="utf-8")))
    except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
        logger.warning(
            "%s: ignoring an unreadable stage marker (%s); redoing the stage", marker, exc
        )
        return None


@dataclass(frozen=True)
class StageIdentity(Generic[R]):
    """A stage's output folder and the fingerprint its content must have been made under."""

    result_type: type[R]
    fingerprint: str
    out_dir: Path

    def done(self) -> R | None:
        """The recorded result if ``out_dir`` holds a finished run with this fingerprint.

        The folder's digest is recomputed, so an edited or damaged output is redone.
        """
        result = _read_marker(self.out_dir)
        if not isinstance(result, self.result_type) or result.fingerprint != self.fingerprint:
            return None
        if tree_digest(self.out_dir, exclude=(MARKER,)) != result.digest:
            return None
        return result

    def cache_key(self) -> str | None:
        """A Prefect cache key: None (run the task) unless the folder is done."""
        result = self.done()
        if result is None:
            return None
        return f"{self.result_type.stage}-{self.fingerprint}-{result.digest[:24]}"

    def seal(self, staging: Path, **facts: Any) -> R:
        """Write the marker into the staging folder; the caller then renames it into place."""
        result = self.result_type(
            path=str(self.out_dir),
            digest=tree_digest(staging, exclude=(MARKER,)),
            fingerprint=self.fingerprint,
            **facts,
        )
        text = json.dumps(to_record(result), indent=2, sort_keys=True)
        (staging / MARKER).write_text(text, encoding="utf-8")
        return result


def identity(
    result_type: type[R], out_dir: str | Path, code: str, **inputs: Any
) -> StageIdentity[R]:
    """The identity of stage ``result_type.stage`` writing ``out_dir``.

    Args:
        result_type: The stage's result class (its ``stage`` names the stage).
        out_dir: The stage's output folder.
        code: The stage's entry module (``__name__``); its import closure is the code part.
        inputs: Everything else that determines the output, JSON-able.
    """
    fp = fingerprint(result_type.stage, code, **inputs)
    return StageIdentity(result_type, fp, Path(out_dir))


def read_output(folder: str | Path, result_type: type[R]) -> R:
    """The recorded result of a finished stage folder (for the CLI and DVC stage chaining).

    Raises:
        FileNotFoundError: the folder holds no finished stage of that kind.
    """
    result = _read_marker(Path(folder))
    if not isinstance(result, result_type):
        raise FileNotFoundError(
            f"{folder} holds no finished {result_type.stage} stage output "
            f"({MARKER} missing, unreadable or of another stage)"
        )
    return result
