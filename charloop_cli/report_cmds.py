"""``charloop report validity``: oracle-judged consistency of the loop on the world model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charloop_cli.common import EXIT_INVALID, ParamsOption, fail, load_or_exit, setup_logging

report_app = typer.Typer(help="Reports over finished loops.")


@report_app.command()
def validity(
    params: ParamsOption = Path("params.yaml"),
    oracle: Annotated[Path, typer.Option(help="World attribute oracle folder.")] = Path(
        "models/world-oracle"
    ),
    seeds: Annotated[int, typer.Option(help="Seeds per held-out context.")] = 8,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/validity"),
    verbose: bool = False,
) -> None:
    """Score the base model and each iteration's LoRA with the oracle; write the report."""
    from charloop_world.validity import run_validity

    project = load_or_exit(params)
    setup_logging(verbose)
    try:
        report = run_validity(project, oracle, list(range(9000, 9000 + seeds)), out)
    except FileNotFoundError as exc:
        fail("missing input", str(exc), EXIT_INVALID)
    for name, row in report["models"].items():
        typer.echo(
            f"{name:12s} consistency {row['consistency']:5.1f}% "
            f"(± {row['consistency_seed_std']:.1f} across seeds), "
            f"all attributes {row['all_attributes']:5.1f}%, variety layout "
            f"{row['layout_variety']:.1f} pose {row['pose_variety']:.1f} expression "
            f"{row['expression_variety']:.1f}, context fidelity {row['context_fidelity']:.1f}%"
        )
    typer.echo(
        f"margin {report['margin']:+.1f} points (best: {report['best']}, "
        f"{report['best_margin']:+.1f}); report in {out / 'VALIDITY.md'}"
    )
