"""``charloop review``: the human review gate without the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charloop_cli.common import ParamsOption, fail_with, load_or_exit

review_app = typer.Typer(help="Human review without the Prefect UI: export a sheet, apply it.")

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
