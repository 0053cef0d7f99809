"""Stage bookkeeping: fingerprints, completion markers and the record a stage returns.

A stage writes its whole output folder atomically and puts a marker in it holding the
fingerprint of everything that determined the output (code, params, input digests). A
re-run with the same fingerprint returns the recorded result without doing the work,
which is how an interrupted loop resumes and how the Prefect cache keys are validated.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from charloop.hashing import code_fingerprint, sha256_json, tree_digest

MARKER = "_stage.json"


@dataclass(frozen=True)
class StageOutput:
    """What a stage hands to the next one: a folder, its content digest, a small summary."""

    name: str
    path: str
    digest: str
    fingerprint: str
    summary: dict[str, Any] = field(default_factory=dict)


def fingerprint(stage: str, **inputs: Any) -> str:
    """Digest of the stage name, the library code and the stage's JSON-able inputs."""
    return sha256_json({"stage": stage, "code": code_fingerprint(), "inputs": inputs})[:24]


def completed(out_dir: str | Path, expected_fingerprint: str) -> StageOutput | None:
    """The recorded output if ``out_dir`` holds a finished run with this fingerprint.

    The folder's digest is recomputed, so an edited or damaged output is redone.
    """
    marker = Path(out_dir) / MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    if record.get("fingerprint") != expected_fingerprint:
        return None
    if tree_digest(out_dir, exclude=(MARKER,)) != record.get("digest"):
        return None
    return StageOutput(**record)


def seal(
    name: str, staging_dir: Path, final_dir: Path, fp: str, summary: dict[str, Any]
) -> StageOutput:
    """Write the marker into the staging folder; the caller then renames it into place."""
    output = StageOutput(
        name=name,
        path=str(final_dir),
        digest=tree_digest(staging_dir, exclude=(MARKER,)),
        fingerprint=fp,
        summary=summary,
    )
    (staging_dir / MARKER).write_text(json.dumps(asdict(output), indent=2, sort_keys=True))
    return output


def read_output(folder: str | Path) -> StageOutput:
    """The recorded output of a finished stage folder (for CLI and DVC stage chaining).

    Raises:
        FileNotFoundError: the folder holds no finished stage.
    """
    marker = Path(folder) / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{folder} holds no finished stage output ({MARKER} missing)")
    return StageOutput(**json.loads(marker.read_text()))
