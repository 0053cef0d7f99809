"""Thin Prefect tasks for promotion: check the gates, then move aliases and export."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from charloop.lineage import audit
from charloop.lineage.promotion import (
    Gate,
    adapter_gate,
    lineage_gate,
    metric_gates,
    move_to_production,
    production_version,
    verified_adapter,
)
from charloop.lineage.registry import local_artifact
from charloop.lineage.release import export_release, point_production
from charloop.params.project import Project
from tasks.caching import retry_transient


def _client(project: Project) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(project.tracking_uri)


@task(name="check-promotion", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def check_promotion_task(project: Project, version: str) -> dict[str, Any]:
    """Run every gate; publish them as a markdown artifact. Nothing is changed."""
    client, name = _client(project), project.params.model_name
    candidate = client.get_model_version(name, version)
    lineage, steps = lineage_gate(client, name, candidate)
    adapter = adapter_gate(client, candidate, project.artifact_location)
    current = production_version(client, name)
    baseline = None
    if current is not None and str(current.version) != str(version):
        baseline = dict(client.get_run(current.run_id).data.metrics)
    metrics = dict(client.get_run(candidate.run_id).data.metrics)
    parent = steps[1].metrics if len(steps) > 1 else None  # chain: newest first
    rules = project.params.promote
    gates = [lineage, adapter, *metric_gates(metrics, baseline, rules, parent)]
    create_markdown_artifact(
        key=f"{name}-promote-v{version}-gates".replace("_", "-").lower(),
        markdown="\n".join(
            ["| gate | passed | detail |", "|---|---|---|"]
            + [f"| {g.name} | {'yes' if g.passed else 'NO'} | {g.detail} |" for g in gates]
        ),
        description=f"Promotion gates for {name} v{version}",
    )
    return {
        "gates": [asdict(g) for g in gates],
        "production": str(current.version) if current is not None else None,
        "lineage": [s.version for s in steps],
    }


@task(name="apply-promotion")
def apply_promotion_task(
    project: Project, version: str, approver: str, reason: str
) -> dict[str, Any]:
    """Export the release from a freshly downloaded, re-verified adapter (the approval may
    have waited hours, on another worker), then move the aliases and write the audit tags."""
    import mlflow

    from charloop.lineage.chain import chain

    client, name = _client(project), project.params.model_name
    candidate = client.get_model_version(name, version)
    steps = chain(client, name, candidate)
    sheet = f"{client.get_run(candidate.run_id).info.artifact_uri}/evaluation/contact_sheet.png"
    root = project.resolve(project.params.promote.release_dir)
    with verified_adapter(client, candidate, project.artifact_location) as adapter:
        grid = mlflow.artifacts.download_artifacts(
            artifact_uri=local_artifact(sheet, project.artifact_location),
            dst_path=str(adapter.parent),  # removed with the adapter's scratch folder
            tracking_uri=project.tracking_uri,
        )
        release = export_release(root, name, steps, adapter, Path(grid))  # before the alias
    before = move_to_production(client, name, version, approver, reason)
    point_production(root, name, version)
    return {"production": version, "previous": before, "release": str(release)}


@task(name="audit")
def audit_task(
    project: Project, event: str, version: str, by: str, reason: str = "", detail: str = ""
) -> None:
    """Append one event (a refusal, an approval...) to the model's audit log."""
    audit.record(_client(project), project.params.model_name, event, version, by, reason, detail)


def failed_gates(check: dict[str, Any]) -> list[Gate]:
    """The gates of a check result that did not pass."""
    return [Gate(**g) for g in check["gates"] if not g["passed"]]
