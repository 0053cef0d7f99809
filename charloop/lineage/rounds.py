"""Retrain rounds: new inputs extend a lineage branch instead of rewriting it.

A lineage branch (``<character>/params-<hash>/``) holds the iterations made under one set of
result-affecting params. Some inputs are not params: the reference images (an ``ingest``
adds to them), ControlNet's pose images and the stages' code. When one of those changes
after an iteration was registered, re-running the loop would rewrite a folder a model
version points to. Instead the loop starts a new *round*: its iterations continue the
branch's numbering (``iter-004``, ...), it starts again from the base model, and its first
version names as parent the version it supersedes (``production``, else the newest).

``rounds.json`` in the branch records each round: its number, first iteration, the digest
of its inputs and the version it supersedes. A re-run with the same inputs continues the
newest round (an interrupted loop resumes; a finished one reuses every stage).

Each registered iteration holds ``_published.json`` (model, version). A stage asked to
redo a folder in such an iteration refuses (:func:`charloop.stages.contract.guard_registered`),
so history stays intact even if an input this module does not know about changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.codegraph import code_fingerprint
from charloop.core.hashing import sha256_json, tree_digest
from charloop.params.project import Project
from charloop.stages.evaluate.convergence import best_round, round_metric
from charloop.stages.layout import PUBLISHED, IterationPaths, published_version

logger = logging.getLogger(__name__)

ROUNDS_FILE = "rounds.json"

STAGE_MODULES = (
    "charloop.stages.generate.stage",
    "charloop.stages.generate.shards",
    "charloop.stages.filter.stage",
    "charloop.stages.review.stage",
    "charloop.stages.caption.stage",
    "charloop.stages.train.stage",
    "charloop.stages.evaluate.stage",
    "charloop.stages.evaluate.shards",
)
"""Every module whose code is part of a stage fingerprint (a test keeps this complete)."""


@dataclass(frozen=True)
class Round:
    """One run of the loop over a fixed set of inputs, within a lineage branch."""

    number: int
    first_iteration: int
    inputs: str
    supersedes: str | None = None


def round_inputs(project: Project) -> dict[str, Any]:
    """What a round's results depend on beyond the params: code, references, pose images."""
    params = project.params
    references = {
        m.name: tree_digest(project.resolve(m.references))
        for m in params.members
        if m.references and project.resolve(m.references).is_dir()
    }
    control = params.generate.controlnet
    return {
        "code": {module: code_fingerprint(module) for module in STAGE_MODULES},
        "references": references,
        "control_images": tree_digest(project.resolve(control.images)) if control else None,
    }


def read_rounds(workdir: Path) -> list[Round]:
    """The branch's rounds, oldest first (none for a new branch)."""
    path = workdir / ROUNDS_FILE
    if not path.is_file():
        return []
    return [Round(**row) for row in json.loads(path.read_text(encoding="utf-8"))]


def mark_published(iteration_root: Path, model_name: str, version: str) -> None:
    """Record that ``iteration_root`` is registered: from now on its stages never redo."""
    atomic.write_json(iteration_root / PUBLISHED, {"model": model_name, "version": version})


def _last_registered_iteration(workdir: Path) -> int:
    numbers = [
        int(p.name.removeprefix("iter-"))
        for p in workdir.glob("iter-*")
        if p.name.removeprefix("iter-").isdigit() and published_version(p)
    ]
    return max(numbers, default=0)


def plan_round(project: Project, supersedes: Callable[[], str | None]) -> Round:
    """The round this run of the loop works in, recorded in ``rounds.json``.

    Args:
        project: Validated params and root.
        supersedes: Callable returning the version a new round supersedes (production, else
            the newest), asked only when a new round starts.

    Returns:
        The newest round when its inputs are this run's inputs or nothing of it is
        registered yet; otherwise a new round after the last registered iteration.
    """
    workdir = project.workdir
    digest = sha256_json(round_inputs(project))[:24]
    rounds = read_rounds(workdir)
    last = _last_registered_iteration(workdir)
    if rounds and rounds[-1].inputs == digest:
        return rounds[-1]
    current = rounds[-1] if rounds else None
    if current is not None and last < current.first_iteration:  # nothing registered yet
        planned = Round(current.number, current.first_iteration, digest, current.supersedes)
        rounds[-1] = planned
    elif current is None and last == 0:
        planned = Round(1, 1, digest)
        rounds.append(planned)
    else:  # registered history exists and the inputs changed: extend, never rewrite
        planned = Round(len(rounds) + 1, last + 1, digest, supersedes())
        rounds.append(planned)
        logger.info(
            "round %d starts at iteration %d (inputs changed since iteration %d); "
            "its first version supersedes v%s",
            planned.number,
            planned.first_iteration,
            last,
            planned.supersedes,
        )
    atomic.write_json(workdir / ROUNDS_FILE, [asdict(r) for r in rounds])
    return planned


def round_candidate(workdir: Path, epsilon: float, metric: str = "auto") -> int | None:
    """The iteration the loop aliased ``candidate`` in the branch's newest round, or None.

    Recomputed from each finished iteration's ``metrics.json`` with the loop's own rule
    (``loop.convergence_epsilon``, ``loop.metric``), so reports need no registry.
    """
    rounds = read_rounds(workdir)
    first = rounds[-1].first_iteration if rounds else 1
    history: list[dict[str, Any]] = []
    numbers: list[int] = []
    for root in sorted(workdir.glob("iter-*")):
        digits = root.name.removeprefix("iter-")
        metrics = IterationPaths(root).evaluation / "metrics.json"
        if digits.isdigit() and int(digits) >= first and metrics.is_file():
            history.append(json.loads(metrics.read_text(encoding="utf-8")))
            numbers.append(int(digits))
    if not history:
        return None
    return numbers[best_round(history, epsilon, round_metric(metric, history[0]))]
