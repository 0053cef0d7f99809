"""The character loop: generate -> filter -> caption -> train -> evaluate -> publish, repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger

from charloop.core.locking import character_lock
from charloop.lineage.candidates import candidate_seeds, seeded
from charloop.lineage.preflight import preflight
from charloop.lineage.provenance import build_provenance
from charloop.params.project import Project, load_project
from charloop.stages.evaluate.convergence import compare, decide
from charloop.stages.evaluate.stage import evaluate_identity
from charloop.stages.generate.stage import generate_identity
from charloop.stages.layout import IterationPaths
from charloop.stages.results import (
    Adapter,
    AdapterRef,
    Dataset,
    Evaluation,
    Generated,
    IterationResults,
)
from flows.review_gate import review_gate
from tasks.candidates import adopt_candidate_task
from tasks.rounds import plan_round_task
from tasks.shards import assemble_generated_task, eval_shard_task, generate_shard_task
from tasks.stages import (
    caption_task,
    evaluate_task,
    filter_task,
    generate_task,
    prepare_stores_task,
    publish_task,
    train_task,
)


@flow(name="character-loop", flow_run_name="{params_file}", validate_parameters=True)
def character_loop(params_file: str = "params.yaml") -> list[dict[str, Any]]:
    """Run iterations until the metrics converge or ``loop.max_iterations`` is reached.

    Args:
        params_file: Path to params.yaml; relative paths inside it resolve against its folder.

    Returns:
        One summary row per iteration (images, metrics, model version, stop reason).
    """
    project = load_project(params_file)
    params = project.params
    preflight(project)  # a missing base model or unwritable workdir fails before any work
    # One loop per character at a time; a second one waits (loop.lock_timeout_s) or refuses.
    with character_lock(project.character_dir, params.loop.lock_timeout_s, params.subject):
        get_run_logger().info("lineage branch %s (%s)", project.branch, project.workdir)
        prepare_stores_task(project)
        rows = _iterations(project)
    create_table_artifact(
        key=f"{params.subject}-loop-summary".replace("_", "-"),
        table=rows,
        description="charloop iterations",
    )
    return rows


def _generate(project: Project, iteration: int, adapter: AdapterRef | None) -> Generated:
    """One generate task, or ``scale.shards`` shard tasks fanned out on the task runner."""
    shards = project.params.scale.shards
    out = IterationPaths.of(project.workdir, iteration).generated
    if shards <= 1 or generate_identity(project, iteration, adapter, out).done():
        return generate_task(project, iteration, adapter)
    futures = [
        generate_shard_task.submit(project, iteration, adapter, shard, shards)
        for shard in range(shards)
    ]
    return assemble_generated_task(project, iteration, adapter, [f.result() for f in futures])


def _evaluate(
    project: Project,
    iteration: int,
    trained: Adapter,
    dataset: Dataset,
    previous: dict[str, float] | None,
    out: Path | None = None,
) -> Evaluation:
    """One evaluate task (into ``out``: a candidate's folder), its rendering fanned out
    over ``scale.shards`` tasks first."""
    shards = project.params.scale.shards
    out = out or IterationPaths.of(project.workdir, iteration).evaluation
    if shards <= 1 or evaluate_identity(project, trained, dataset, out).done():
        return evaluate_task(project, iteration, trained, dataset, previous, out=out)
    futures = [
        eval_shard_task.submit(project, iteration, trained, shard, shards, out)
        for shard in range(shards)
    ]
    parts = [f.result() for f in futures]
    return evaluate_task(project, iteration, trained, dataset, previous, parts, out)


def _train_and_evaluate(
    project: Project,
    iteration: int,
    dataset: Dataset,
    provenance: dict[str, str],
    previous: dict[str, float] | None,
) -> tuple[Adapter, Evaluation, dict[str, Any] | None]:
    """Train and score the iteration's LoRA; with ``train.candidates`` > 1, one per seed,
    the best by the round metric kept (see :mod:`charloop.lineage.candidates`)."""
    if project.params.train.candidates == 1:
        trained = train_task(project, iteration, dataset, provenance)
        return trained, _evaluate(project, iteration, trained, dataset, previous), None
    paths = IterationPaths.of(project.workdir, iteration)
    seeds, evaluations = candidate_seeds(project), []
    for seed in seeds:
        folders = paths.candidate(seed)
        trained = train_task(seeded(project, seed), iteration, dataset, provenance, folders.adapter)
        evaluations.append(
            _evaluate(project, iteration, trained, dataset, previous, folders.evaluation)
        )
    return adopt_candidate_task(project, iteration, seeds, evaluations)


def _iterations(project: Project) -> list[dict[str, Any]]:
    """Generate -> ... -> publish until convergence or the iteration budget.

    The iterations of a round (see :mod:`charloop.lineage.rounds`): a re-run with the same
    inputs reuses the newest round's; new inputs after a registration start a new round
    numbered on from the last registered iteration, from the base model, its first version
    the child of the version it supersedes.
    """
    params = project.params
    planned = plan_round_task(project)
    adapter: AdapterRef | None = None  # the best round's LoRA: the next round renders with it
    parent_version: str | None = planned.supersedes
    previous: Dataset | None = None  # what an accumulating dataset policy draws from
    history: list[dict[str, float]] = []
    rows: list[dict[str, Any]] = []
    first = planned.first_iteration
    loop = params.loop
    for iteration in range(first, first + loop.max_iterations):
        # Data: render with the best LoRA so far, keep what the discriminators (and, when
        # enabled, a person) pass, caption it with the best of the round's earlier data.
        generated = _generate(project, iteration, adapter)
        filtered = filter_task(project, iteration, generated)
        reviewed = review_gate(project, iteration, generated, filtered)
        dataset = caption_task(project, iteration, generated, reviewed, previous)
        # Model: train a LoRA on the new dataset and score it on held-out contexts.
        provenance = build_provenance(project, iteration, dataset, adapter, parent_version)
        before = history[-1] if history else None
        trained, evaluation, selection = _train_and_evaluate(
            project, iteration, dataset, provenance, before
        )
        history.append(evaluation.metrics)
        deltas = compare(before, evaluation.metrics) if before else {}
        verdict = decide(
            history, loop.convergence_epsilon, loop.max_iterations, loop.patience, loop.metric
        )
        best = verdict.improved(len(history))
        # Lineage: version the folders with DVC and register the adapter in MLflow, with
        # the metrics-over-iterations plot; only the best round is aliased candidate.
        results = IterationResults(generated, filtered, dataset, trained, evaluation, reviewed)
        published = publish_task(
            project,
            iteration,
            results,
            parent_version,
            {
                "stop": verdict.stop,
                "reason": verdict.reason,
                "collapse": verdict.collapse,
                "best_so_far": best,  # only the best round is aliased candidate
                "change_vs_previous": deltas,
                **({"train_candidates": selection} if selection else {}),
            },
            list(history),
        )
        rows.append(
            {
                "round": planned.number,
                "iteration": iteration,
                "generated": generated.images,
                "kept": reviewed.kept,
                "trained_on": dataset.images,
                "kept_traits_all": filtered.kept_traits_all,
                **evaluation.metrics,
                "version": published["version"],
                "best": best,
                "dataset_hash": published["dataset_hash"],
                "decision": verdict.reason,
            }
        )
        if verdict.stop:
            break
        previous = dataset
        if best:
            adapter, parent_version = trained.ref, published["version"]
    return rows
