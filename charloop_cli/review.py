"""``charloop review``: the human review gate without the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charloop.core.errors import BadInput
from charloop_cli.common import ParamsOption, fail_with, load_or_exit

review_app = typer.Typer(
    help="Human review without the Prefect UI: the web desk, or export a sheet and apply it."
)

IterationOption = Annotated[int, typer.Option("--iteration", "-i", help="Iteration number.")]


@review_app.command("export")
def review_export(
    params: ParamsOption = Path("params.yaml"), iteration: IterationOption = 1
) -> None:
    """Write the iteration's review sheet (CSV) and contact sheet to its review desk."""
    from charloop.stages.layout import IterationPaths
    from charloop.stages.results import Filtered, Generated
    from charloop.stages.review.stage import export_sheet
    from charloop_cli.stage_cmds import read_result

    project = load_or_exit(params)
    paths = IterationPaths.of(project.workdir, iteration)
    sheet = export_sheet(
        read_result(paths.generated, Generated),
        read_result(paths.filtered, Filtered),
        paths.review_desk,
    )
    typer.echo(f"review sheet: {sheet}\nedit the 'decision' column (keep/reject), then run:")
    typer.echo(f"  charloop review apply {sheet} --reviewer NAME -i {iteration}")


@review_app.command("apply")
def review_apply(
    sheet: Annotated[
        Path, typer.Argument(help="The edited review sheet.", exists=True, dir_okay=False)
    ],
    reviewer: Annotated[str, typer.Option(help="Who reviewed (recorded).")],
    params: ParamsOption = Path("params.yaml"),
    iteration: IterationOption = 1,
    comment: str = "",
) -> None:
    """Validate the edited SHEET and record its decisions for the loop's next run."""
    from charloop.stages.layout import IterationPaths
    from charloop.stages.results import Filtered
    from charloop.stages.review.stage import ReviewError, candidates, read_sheet, save_decisions
    from charloop_cli.stage_cmds import read_result

    project = load_or_exit(params)
    paths = IterationPaths.of(project.workdir, iteration)
    try:
        decisions = read_sheet(sheet, reviewer, comment)
        decisions.validate({row["id"] for row in candidates(read_result(paths.filtered, Filtered))})
    except ReviewError as exc:
        fail_with(exc, "review not applied")
    saved = save_decisions(paths.review_desk, decisions)
    typer.echo(
        f"applied: keep {len(decisions.keep)}, reject {len(decisions.reject)} -> {saved}; "
        "run the loop again to continue from the review"
    )


@review_app.command("serve")
def review_serve(
    params: ParamsOption = Path("params.yaml"),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs --token.")
    ] = "127.0.0.1",
    token: Annotated[
        str | None, typer.Option(help="Shared secret every request must carry (?token=).")
    ] = None,
) -> None:
    """Serve the review desk: the candidates as a grid, the review form that resumes a
    paused loop, and the promotions waiting for approval."""
    import os

    import uvicorn

    from charloop_cli.desk.app import check_binding, create_app

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    project = load_or_exit(params)
    try:
        check_binding(host, token)
    except BadInput as exc:
        fail_with(exc, "refusing to serve")
    address = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    typer.echo(f"review desk for {project.params.subject}: {address}")
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo(
            "PREFECT_API_URL is not set: decisions are recorded for the next run; set it "
            "to the paused loop's API (its pause message prints it) to resume it from here"
        )
    uvicorn.run(create_app(project, token), host=host, port=port, log_level="warning")
