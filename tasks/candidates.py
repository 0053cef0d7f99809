"""The task that settles an iteration's candidate LoRAs (``train.candidates``)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from charloop.lineage.candidates import adopt_candidate
from charloop.params.project import Project
from charloop.stages.layout import IterationPaths
from charloop.stages.results import Adapter, Evaluation
from tasks.caching import retry_transient, run_logger


@task(name="adopt-candidate", retries=1, retry_condition_fn=retry_transient)
def adopt_candidate_task(
    project: Project, iteration: int, seeds: list[int], evaluations: list[Evaluation]
) -> tuple[Adapter, Evaluation, dict[str, Any]]:
    """Keep the candidate the round metric scores best as the iteration's adapter and
    evaluation; publish every candidate's score (a table)."""
    paths = IterationPaths.of(project.workdir, iteration)
    adapter, evaluation, record = adopt_candidate(
        paths, seeds, evaluations, project.params.loop.metric
    )
    metric = record["metric"]
    create_table_artifact(
        key=f"{project.params.subject}-iter-{iteration}-candidates".replace("_", "-").lower(),
        table=[
            {"seed": c["seed"], metric: c[metric], "chosen": c["seed"] == record["chosen_seed"]}
            for c in record["candidates"]
        ],
        description=f"Candidate LoRAs of iteration {iteration}, by {metric}",
    )
    run_logger().info("candidates: seed %d kept (by %s)", record["chosen_seed"], metric)
    return adapter, evaluation, record
