"""``charloop report validity``: oracle-judged consistency of the loop on the world model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charloop_cli.common import (
    EXIT_INVALID,
    ParamsOption,
    fail,
    fail_with,
    load_or_exit,
    setup_logging,
)

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
    pick = report.get("candidate")
    typer.echo(
        f"margin {report['margin']:+.1f} points (best: {report['best']}, "
        f"{report['best_margin']:+.1f}; the loop's candidate: "
        f"{'iteration ' + str(pick) if pick else 'none'}); report in {out / 'VALIDITY.md'}"
    )


@report_app.command()
def spread(
    reports: Annotated[
        list[Path], typer.Argument(help="Validity report folders, one per loop (two or more).")
    ],
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports/spread"),
) -> None:
    """Put several loops' validity reports together: mean, spread and minimum across loops,
    and in how many loops the loop's candidate meets each target."""
    from charloop.core import atomic
    from charloop.core.errors import BadInput
    from charloop_world.spread import CANDIDATE, DESCRIBED, spread_markdown, spread_report

    try:
        result = spread_report(reports)
    except BadInput as exc:
        fail_with(exc, "bad reports")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "spread.json", result)
    atomic.write_text(out / "SPREAD.md", spread_markdown(result))
    for name in (DESCRIBED, CANDIDATE):
        if row := result["rows"].get(name):
            c, a = row["consistency"], row["all_attributes"]
            typer.echo(
                f"{name}: consistency {c['mean']:.1f} ± {c['std']:.1f} (min {c['min']:.1f}), "
                f"all attributes {a['mean']:.1f} ± {a['std']:.1f} (min {a['min']:.1f})"
            )
    for target, met in result["targets"].items():
        typer.echo(f"{target}: {sum(met)} of {len(met)} loops")
    typer.echo(f"report in {out / 'SPREAD.md'}")
