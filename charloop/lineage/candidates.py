"""Several LoRAs per iteration (``train.candidates``): their seeds, the pick, the adoption.

On the same dataset the training seed alone moves a LoRA far (on the world, nova's whole
characters ranged 13.9-44.4 % over six seeds), and the loop's own evaluation can order
such LoRAs as the oracle does (for nova; for sable its reference match does not). So an
iteration may train ``train.candidates`` LoRAs with seeds ``train.seed``,
``train.seed + 1``, ..., evaluate each on the held-out contexts, and keep the best by the
round metric (``loop.metric``). Each candidate is an ordinary sealed stage folder under
``iter-NNN/candidates/seed-S/`` (so an interrupted iteration resumes candidate by
candidate); the chosen one is copied (hard links: no second copy on disk) to the
iteration's ``05_adapter`` and ``06_evaluation``, which DVC and the registry version as
before, and ``candidates/selection.json`` records why.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from charloop.core import atomic
from charloop.params.project import Project
from charloop.stages.contract import guard_registered, read_output
from charloop.stages.evaluate.convergence import collapse, round_metric
from charloop.stages.evaluate.stage import run_evaluate
from charloop.stages.layout import IterationPaths
from charloop.stages.results import Adapter, Dataset, Evaluation, StageResult
from charloop.stages.train.stage import run_train

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=StageResult)


def candidate_seeds(project: Project) -> list[int]:
    """The training seed of each candidate: ``train.seed`` and the ones after it."""
    train = project.params.train
    return [train.seed + k for k in range(train.candidates)]


def seeded(project: Project, seed: int) -> Project:
    """``project`` with ``train.seed`` set to ``seed`` (everything else as it is)."""
    params = project.params
    train = params.train.model_copy(update={"seed": seed})
    return dataclasses.replace(project, params=params.model_copy(update={"train": train}))


def candidate_root(adapter_out: Path) -> IterationPaths:
    """The iteration folders around an adapter folder (``iter-NNN`` or DVC's ``data``)."""
    return IterationPaths(Path(adapter_out).parent)


@dataclass(frozen=True)
class Pick:
    """The chosen candidate and why."""

    index: int
    metric: str
    scores: list[float | None]
    excluded: dict[int, str]
    """Candidates left out of the pick, and why (collapse against the first)."""

    def record(self, seeds: list[int]) -> dict[str, Any]:
        """What ``selection.json`` and the registry keep."""
        return {
            "metric": self.metric,
            "chosen_seed": seeds[self.index],
            "candidates": [
                {"seed": seed, self.metric: score, "excluded": self.excluded.get(i)}
                for i, (seed, score) in enumerate(zip(seeds, self.scores, strict=True))
            ],
        }


def pick(metrics: list[dict[str, Any]], choice: str) -> Pick:
    """The candidate with the highest round metric (the first on a tie).

    Args:
        metrics: Each candidate's evaluation metrics, in seed order.
        choice: ``loop.metric`` (resolved with :func:`round_metric`).

    A candidate whose images collapse against the first one's (the seed variety bought
    the score, see :func:`~charloop.stages.evaluate.convergence.collapse`) is left out;
    the first is always eligible.
    """
    if not metrics:
        raise ValueError("pick needs at least one candidate's metrics")
    metric = round_metric(choice, metrics[0])
    scores = [_number(m.get(metric)) for m in metrics]
    excluded = {
        i: why for i, m in enumerate(metrics) if i and (why := collapse(metrics[0], m, metric))
    }
    eligible = [i for i in range(len(metrics)) if i not in excluded and scores[i] is not None]
    best = max(eligible, key=lambda i: (scores[i], -i), default=0)
    return Pick(best, metric, scores, excluded)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def adopt(chosen: Path, target: Path, kind: type[R]) -> R:
    """Make ``target`` hold the sealed stage folder ``chosen`` (hard links where the file
    system allows, else copies); nothing is done when it already does.

    Raises:
        RegisteredFolder: ``target`` belongs to a registered iteration and differs.
    """
    want = read_output(chosen, kind)
    try:
        have = read_output(target, kind)
    except (FileNotFoundError, ValueError):  # absent, or a corrupt seal: rewrite it
        have = None
    if have is not None and (have.digest, have.fingerprint) == (want.digest, want.fingerprint):
        return have
    guard_registered(target)
    with atomic.staged_dir(target) as staging:
        shutil.copytree(chosen, staging, copy_function=_link_or_copy, dirs_exist_ok=True)
    return read_output(target, kind)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def write_selection(paths: IterationPaths, chosen: Pick, seeds: list[int]) -> dict[str, Any]:
    """Write ``candidates/selection.json``; returns the record."""
    record = chosen.record(seeds)
    atomic.write_json(paths.selection, record)
    logger.info(
        "candidates: seed %d of %s by %s (%s)",
        record["chosen_seed"],
        seeds,
        chosen.metric,
        ", ".join("-" if s is None else f"{s:.4f}" for s in chosen.scores),
    )
    return record


def train_candidates(
    project: Project, dataset: Dataset, out: Path, provenance: dict[str, str]
) -> Adapter:
    """``train.candidates`` LoRAs on ``dataset``, each evaluated; the best into ``out``.

    What ``charloop stage train`` runs (the flow runs the same steps as separate tasks).
    With one candidate this is :func:`run_train` into ``out``.
    """
    if project.params.train.candidates == 1:
        return run_train(project, dataset, out, provenance)
    root, seeds = candidate_root(out), candidate_seeds(project)
    evaluations = []
    for seed in seeds:
        folders = root.candidate(seed)
        trained = run_train(seeded(project, seed), dataset, folders.adapter, provenance)
        evaluations.append(run_evaluate(project, trained, dataset, folders.evaluation))
    chosen, _ = choose(root, seeds, evaluations, project.params.loop.metric)
    return adopt(chosen.adapter, out, Adapter)


def choose(
    paths: IterationPaths, seeds: list[int], evaluations: list[Evaluation], choice: str
) -> tuple[IterationPaths, dict[str, Any]]:
    """Pick among evaluated candidates and write ``selection.json``; returns the chosen
    candidate's folders and the selection record."""
    chosen = pick([e.metrics for e in evaluations], choice)
    record = write_selection(paths, chosen, seeds)
    return paths.candidate(seeds[chosen.index]), record


def adopt_candidate(
    paths: IterationPaths, seeds: list[int], evaluations: list[Evaluation], choice: str
) -> tuple[Adapter, Evaluation, dict[str, Any]]:
    """:func:`choose`, then adopt the chosen one's adapter and evaluation as the
    iteration's; returns them and the selection record."""
    folders, record = choose(paths, seeds, evaluations, choice)
    adapter = adopt(folders.adapter, paths.adapter, Adapter)
    return adapter, adopt(folders.evaluation, paths.evaluation, Evaluation), record
