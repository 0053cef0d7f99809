"""``charloop``: validate params, run the loop, run single stages (for DVC), build tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from charloop_cli.common import ParamsOption, console, load_or_exit, setup_logging
from charloop_cli.deploy_cmds import deploy, ingest
from charloop_cli.registry_cmds import register
from charloop_cli.report_cmds import report_app
from charloop_cli.review import review_app
from charloop_cli.world_cmds import world_app

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
stage_app = typer.Typer(help="Run one stage on explicit folders (what dvc.yaml calls).")
app.add_typer(stage_app, name="stage")
app.add_typer(review_app, name="review")
app.add_typer(report_app, name="report")
app.add_typer(world_app, name="world")
register(app)
app.command()(deploy)
app.command()(ingest)


@app.command()
def validate(
    params: Annotated[Path, typer.Argument(help="params.yaml to check.")] = Path("params.yaml"),
) -> None:
    """Check params.yaml against the schema: prints OK, or every error (exit code 2)."""
    project = load_or_exit(params)
    kind = "cast" if project.params.cast else "character"
    typer.echo(f"OK: {params} ({kind} '{project.params.subject}')")


@app.command()
def run(
    params: ParamsOption = Path("params.yaml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the character loop (a Prefect flow) and print a summary table."""
    project = load_or_exit(params)
    setup_logging(verbose)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API can take longer than its 20 s default on a loaded 2-core box.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from charloop.publish import preflight
    from charloop_cli.prefect_api import start_temporary_api

    try:
        preflight(project)  # bad input fails before Prefect starts
    except (PermissionError, FileNotFoundError) as exc:
        console.print(f"[red]charloop run stopped[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    api_ready = start_temporary_api()  # boots while the flow's modules import
    from charloop.filter import NotEnoughImages
    from charloop.locking import LoopLocked
    from charloop.review import ReviewTimedOut
    from charloop.train import TrainingDiverged
    from flows.character_loop import character_loop
    from flows.runners import task_runner_for

    stopping = (LoopLocked, NotEnoughImages, TrainingDiverged, ReviewTimedOut, PermissionError,
                FileNotFoundError)  # fmt: skip
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = api_ready()
    try:
        loop = character_loop.with_options(task_runner=task_runner_for(project.params.scale))
        with temporary_settings(updates={PREFECT_API_URL: api} if api else {}):
            rows = loop(params_file=str(project.params_file))
    except stopping as exc:
        console.print(f"[red]charloop run stopped[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    Console(width=None if sys.stdout.isatty() else 160).print(summary_table(rows))


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """The end-of-run table: one row per iteration."""
    table = Table(title="charloop iterations")
    for name in (
        "iteration",
        "generated",
        "kept",
        "identity",
        "prompt fid.",
        "version",
        "decision",
    ):
        table.add_column(name)
    for row in rows:
        fidelity = row.get("prompt_fidelity")
        table.add_row(
            str(row["iteration"]),
            str(row["generated"]),
            str(row["kept"]),
            f"{row['identity_consistency']:.4f} (base {row['base_identity_consistency']:.4f})",
            "-" if fidelity is None else f"{fidelity:.4f}",
            str(row["version"]),
            row["decision"],
        )
    return table


@app.command("build-tiny-models")
def build_tiny_models(
    out: Annotated[Path, typer.Option(help="Folder for the models.")] = Path("models"),
    seed: int = 0,
) -> None:
    """Rebuild the embedded tiny SD1.5 pipeline and CLIP embedder, deterministically."""
    from charloop.tiny_models import build_all

    setup_logging(False)
    for path in build_all(out, seed):
        typer.echo(str(path))


@stage_app.command("generate")
def stage_generate(
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    iteration: int = 1,
    adapter: Annotated[Path | None, typer.Option(help="Previous LoRA folder.")] = None,
) -> None:
    """Generate one iteration's images into OUT."""
    from charloop.generate import AdapterRef, run_generate
    from charloop.stage import read_output

    project = load_or_exit(params)
    setup_logging(False)
    ref = None
    if adapter is not None:
        trained = read_output(adapter)
        ref = AdapterRef(trained.path, str(trained.summary["weights_sha256"]))
    _report(run_generate(project, iteration, ref, out))


@stage_app.command("filter")
def stage_filter(generated: Path, out: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Filter GENERATED into OUT (report.jsonl, kept.jsonl)."""
    from charloop.filter import run_filter
    from charloop.stage import read_output

    project = load_or_exit(params)
    setup_logging(False)
    _report(run_filter(project, read_output(generated), out))


@stage_app.command("review")
def stage_review(
    generated: Path,
    filtered: Path,
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    desk: Annotated[Path | None, typer.Option(help="Review desk with decisions.json.")] = None,
) -> None:
    """Merge FILTERED's decisions with a person's (from DESK, if any) into OUT."""
    from charloop.review import load_decisions, run_review
    from charloop.stage import read_output

    project = load_or_exit(params)
    setup_logging(False)
    decisions = load_decisions(desk) if desk else None
    out_stage = run_review(
        read_output(generated),
        read_output(filtered),
        decisions,
        out,
        project.params.filter.min_kept,
    )
    _report(out_stage)


@stage_app.command("caption")
def stage_caption(
    generated: Path, reviewed: Path, out: Path, params: ParamsOption = Path("params.yaml")
) -> None:
    """Caption the images REVIEWED selected from GENERATED into the dataset folder OUT."""
    from charloop.caption import run_caption
    from charloop.stage import read_output

    project = load_or_exit(params)
    setup_logging(False)
    _report(run_caption(project, read_output(generated), read_output(reviewed), out))


@stage_app.command("train")
def stage_train(
    dataset: Path, out: Path, params: ParamsOption = Path("params.yaml"), iteration: int = 1
) -> None:
    """Train a LoRA on DATASET into OUT."""
    from charloop.config import params_hash
    from charloop.stage import read_output
    from charloop.train import run_train

    project = load_or_exit(params)
    setup_logging(False)
    data = read_output(dataset)
    provenance = {
        "iteration": iteration,
        "dataset_sha256": data.digest,
        "params_hash": params_hash(project.params),
    }
    _report(run_train(project, data, out, provenance))


@stage_app.command("evaluate")
def stage_evaluate(
    adapter: Path, dataset: Path, out: Path, params: ParamsOption = Path("params.yaml")
) -> None:
    """Evaluate ADAPTER (trained on DATASET) into OUT."""
    from charloop.evaluate import run_evaluate
    from charloop.stage import read_output

    project = load_or_exit(params)
    setup_logging(False)
    _report(run_evaluate(project, read_output(adapter), read_output(dataset), out))


@stage_app.command("log-run")
def stage_log_run(
    adapter: Path, evaluation: Path, out: Path, params: ParamsOption = Path("params.yaml")
) -> None:
    """Log the run's params and metrics to MLflow (what `dvc exp run` ends with), so DVC
    experiments sit side by side in MLflow; writes the run id to OUT."""
    from charloop import atomic
    from charloop.config import params_hash
    from charloop.registry import log_experiment_run
    from charloop.stage import read_output
    from charloop.versioning import git_commit

    project = load_or_exit(params)
    trained, scored = read_output(adapter), read_output(evaluation)
    tags = {
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc_exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "git_commit": git_commit(project.root),
        "params_hash": params_hash(project.params),
        "adapter_sha256": str(trained.summary["weights_sha256"]),
    }
    metrics = {k: float(v) for k, v in scored.summary.items() if isinstance(v, int | float)}
    run_id = log_experiment_run(
        project.tracking_uri,
        f"{project.params.experiment_name}-dvc",
        project.params.model_dump(mode="json"),
        metrics,
        tags,
    )
    atomic.write_json(out, {"run_id": run_id, **tags})
    typer.echo(f"log-run: MLflow run {run_id} ({tags['dvc_exp_name']})")


def _report(output: Any) -> None:
    typer.echo(f"{output.name}: {output.path} digest={output.digest[:12]} {output.summary}")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
