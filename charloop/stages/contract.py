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

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from charloop.core.codegraph import code_fingerprint
from charloop.core.errors import Refused
from charloop.core.hashing import sha256_json, tree_digest
from charloop.stages.layout import published_version
from charloop.stages.results import StageResult, from_record, to_record

logger = logging.getLogger(__name__)

MARKER = "_stage.json"

R = TypeVar("R", bound=StageResult)


class NotEnoughImages(Refused, RuntimeError):
    """Too few images survived filtering or review to train on."""


def fingerprint(stage: str, code: str, **inputs: Any) -> str:
    """Digest of the stage name, the code of module ``code`` (its import closure within
    charloop) and the stage's JSON-able inputs."""
    return sha256_json({"stage": stage, "code": code_fingerprint(code), "inputs": inputs})[:24]


class RegisteredFolder(Refused, RuntimeError):
    """A stage would rewrite a folder that a registered model version points to."""


def guard_registered(out_dir: Path) -> None:
    """Refuse to redo a stage folder of a registered iteration (history never changes).

    Raises:
        RegisteredFolder: ``out_dir``'s iteration holds a ``_published.json`` marker.
    """
    if version := published_version(out_dir.parent):
        raise RegisteredFolder(
            f"{out_dir} belongs to a registered iteration (model version {version}) and "
            "would be redone: it was edited or damaged after registration, or an input the "
            "loop does not track changed. Restore it with `charloop checkout "
            f"<model>:{version}` or `dvc checkout`; new inputs retrain in a new round"
        )


class CorruptSeal(Refused, ValueError):
    """A stage marker that cannot be trusted: unparseable, tampered, or not its folder's."""


def _seal_digest(record: dict[str, Any]) -> str:
    return sha256_json({k: v for k, v in record.items() if k != "seal"})


def _sealed_record(result: StageResult) -> dict[str, Any]:
    record = to_record(result)
    return {**record, "seal": _seal_digest(record)}


def verify(folder: str | Path) -> StageResult:
    """The result sealed in ``folder``, verified before it is trusted.

    The marker must parse, its ``seal`` must be the digest of the rest of the record (a
    hand-edited fact or digest is caught) and the folder's content must hash to the
    recorded digest (an edited, added or missing file is caught).

    Raises:
        FileNotFoundError: ``folder`` has no marker.
        CorruptSeal: the marker or the folder fails a check; the message says which.
    """
    marker = Path(folder) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{marker} is missing")
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        raise CorruptSeal(f"{marker} is not readable JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("seal") != _seal_digest(record):
        raise CorruptSeal(f"{marker}: the seal does not match the record (edited or torn)")
    result = from_record(record)  # ValueError for a record of no known shape
    if tree_digest(Path(folder), exclude=(MARKER,)) != result.digest:
        raise CorruptSeal(f"{folder}: content does not match the sealed digest (edited)")
    # Where the folder is now: a copied or moved project serves results from its new place.
    return dataclasses.replace(result, path=str(folder))


def _verified_or_none(folder: Path) -> StageResult | None:
    try:
        return verify(folder)
    except FileNotFoundError:
        return None
    except ValueError as exc:  # CorruptSeal, or a record that fits no result type
        logger.warning("%s; the stage will be redone", exc)
        return None


@dataclass(frozen=True)
class StageIdentity(Generic[R]):
    """A stage's output folder and the fingerprint its content must have been made under."""

    result_type: type[R]
    fingerprint: str
    out_dir: Path

    def done(self) -> R | None:
        """The recorded result if ``out_dir`` holds a finished run with this fingerprint.

        The seal is verified first (:func:`verify`), so a corrupt marker or an edited
        output is redone, never served.

        Raises:
            RegisteredFolder: the stage is not done but its iteration is registered.
        """
        result = _verified_or_none(self.out_dir)
        if not isinstance(result, self.result_type) or result.fingerprint != self.fingerprint:
            guard_registered(self.out_dir)
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
        # The marker names its folder, not an absolute path: the project can move.
        on_disk = dataclasses.replace(result, path=self.out_dir.name)
        text = json.dumps(_sealed_record(on_disk), indent=2, sort_keys=True)
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
    """The verified result of a finished stage folder (the CLI, DVC stage chaining, publish).

    Raises:
        FileNotFoundError: the folder holds no finished stage of that kind.
        CorruptSeal: its seal or content fails verification (redo the stage).
    """
    try:
        result = verify(folder)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{folder} holds no finished {result_type.stage} stage output ({MARKER} missing)"
        ) from None
    if not isinstance(result, result_type):
        raise FileNotFoundError(
            f"{folder} holds a {result.stage} stage output, not {result_type.stage}"
        )
    return result
