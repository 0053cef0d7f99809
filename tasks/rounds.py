"""The round a run of the loop works in (see :mod:`charloop.lineage.rounds`)."""

from __future__ import annotations

from prefect import task

from charloop.lineage.promotion import superseded_version
from charloop.lineage.rounds import Round, plan_round
from charloop.params.project import Project
from tasks.caching import retry_transient, run_logger


@task(name="plan-round", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def plan_round_task(project: Project) -> Round:
    """The round this run works in: the newest one, or a new one when inputs changed after
    an iteration was registered (it supersedes production, else the newest version)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.tracking_uri)
    planned = plan_round(project, lambda: superseded_version(client, project.params.model_name))
    run_logger().info(
        "round %d: iterations from %d, parent %s",
        planned.number,
        planned.first_iteration,
        planned.supersedes or "none",
    )
    return planned
