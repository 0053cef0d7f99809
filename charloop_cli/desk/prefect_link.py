"""The desk's link to running flows: resume a loop paused at its review gate, list and
answer promotions paused for approval (through the Prefect API, as the UI's forms would)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charloop.params.project import Project
from charloop.stages.review.stage import HumanDecisions


def api_url() -> str | None:
    """The Prefect API this process talks to; None when none is configured (the desk then
    never starts a temporary server of its own: a paused run lives on its loop's API)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _paused_runs(flow_name: str | None = None) -> list[Any]:
    if api_url() is None:
        return []
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    flow_filter = FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=flow_filter)
    return [r for r in runs if r.state is not None and r.state.is_paused()]


def paused_review(project: Project, iteration: int) -> Any | None:
    """The flow run of this project paused at the review gate of ``iteration``, if any."""
    key = f"review-{iteration}"
    for run in _paused_runs():
        params_file = (run.parameters or {}).get("params_file")
        same = params_file is not None and Path(params_file).resolve() == project.params_file
        if same and run.state.state_details.pause_key == key:
            return run
    return None


def resume_review(project: Project, iteration: int, decisions: HumanDecisions) -> str | None:
    """Resume the paused loop with the desk's decisions; the run's name, or None when no
    run is paused there (the recorded decisions are then read by the next run)."""
    from prefect.flow_runs import resume_flow_run

    run = paused_review(project, iteration)
    if run is None:
        return None
    answer = {
        "reviewer": decisions.reviewer,
        "keep": list(decisions.keep),
        "reject": list(decisions.reject),
        "comment": decisions.comment,
        "via": "web",
    }
    resume_flow_run(run.id, run_input=answer)
    return str(run.name)


def promotions(project: Project) -> list[dict[str, Any]]:
    """Paused promotions of this project's model, each with its evaluation and the
    current production version's."""
    from mlflow.tracking import MlflowClient

    paused = _paused_runs("promote-lora")
    if not paused:
        return []
    client = MlflowClient(project.tracking_uri)
    model = project.params.model_name
    try:
        production = client.get_model_version_by_alias(model, "production")
        prod_metrics = client.get_run(str(production.run_id)).data.metrics
        prod_version = production.version
    except Exception:  # no production version yet
        prod_metrics, prod_version = {}, "-"
    out = []
    for run in paused:
        try:
            version = client.get_model_version(model, str(run.name))
        except Exception:  # another project's promotion on the same API
            continue
        out.append({"model": model, "version": version.version,
                    "metrics": client.get_run(str(version.run_id)).data.metrics,
                    "production": prod_metrics, "production_version": prod_version})  # fmt: skip
    return out
