"""``charloop deploy`` and ``charloop ingest``: scheduled and event-driven retraining."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from charloop_cli.common import EXIT_INVALID, ParamsOption, fail, load_or_exit, setup_logging


def deploy(params: ParamsOption = Path("params.yaml")) -> None:
    """Create the Prefect deployments (loop on cron and ingest events; promotion)."""
    project = load_or_exit(params)
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            "charloop deploy needs a Prefect server",
            "PREFECT_API_URL is not set",
            EXIT_INVALID,
            "start one (`prefect server start`) and set PREFECT_API_URL, "
            "e.g. http://127.0.0.1:4200/api",
        )
    setup_logging(False)
    from flows.deployments import deploy as create

    rules = project.params.schedule
    for name, deployment_id in create(project).items():
        typer.echo(f"deployment {name}: {deployment_id}")
    when = f"cron '{rules.cron}' ({rules.timezone})" if rules.cron else "no schedule"
    events = "and on `charloop ingest`" if rules.retrain_on_ingest else "and no ingest trigger"
    typer.echo(f"the loop runs on {when} {events} (set schedule: in {params} to change)")
    pool = rules.work_pool
    typer.echo(f"start a worker: prefect worker start --pool {pool}")


def ingest(
    folder: Annotated[
        Path, typer.Argument(help="Folder of new reference images.", exists=True, file_okay=False)
    ],
    params: ParamsOption = Path("params.yaml"),
    member: Annotated[
        str | None, typer.Option(help="Cast member the images show (required for a cast).")
    ] = None,
) -> None:
    """Copy new reference images in, version them with DVC, and emit the retrain event."""
    from charloop.lineage import versioning
    from charloop.lineage.ingest import ingest_references

    project = load_or_exit(params)
    setup_logging(False)
    p = project.params
    if p.cast is not None and member is None:
        names = [m.name for m in p.cast.members]
        fail("--member is required for a cast", f"one of {names}", EXIT_INVALID)
    try:
        character = p.member(member) if member else p.members[0]
    except KeyError as exc:
        fail("unknown --member", str(exc.args[0]), EXIT_INVALID)
    if not character.references:
        fail(f"{character.name}'s references are not set", "name a folder", EXIT_INVALID)
    references = project.resolve(character.references)
    report = ingest_references(folder, references)
    for name, reason in report.skipped.items():
        typer.echo(f"skipped {name}: {reason}")
    md5 = None
    if project.params.dvc.enabled and report.added:
        from charloop.lineage.publish import dvc_remote

        # The repo that will track the references gets the remote (a workdir outside the
        # project can sit in another repo than the references).
        root = versioning.dvc_root(references) or versioning.covering_root(
            project.root, project.workdir, references
        )
        remote = dvc_remote(project)
        versioning.ensure_repo(root, remote)
        md5 = versioning.track([references])[str(references)]
        if remote:
            versioning.push([references], versioning.remote_name(remote))
    typer.echo(f"ingested {len(report.added)} image(s) into {references} (dvc {md5})")
    if report.added and project.params.schedule.retrain_on_ingest:
        if os.environ.get("PREFECT_API_URL"):
            from flows.deployments import emit_ingested

            emit_ingested(project.params.subject, report.added, md5)
            typer.echo("emitted charloop.references.ingested: the loop deployment will run")
        else:
            typer.echo("no PREFECT_API_URL: no event emitted (run `charloop run` yourself)")
