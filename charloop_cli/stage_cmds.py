"""``charloop stage ...``: one stage on explicit folders (what ``dvc.yaml`` runs).

Each command calls the same library function as the loop's Prefect task, and reads its
inputs' typed results from their sealed folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from charloop.stages.results import StageResult
from charloop_cli.common import (
    EXIT_INVALID,
    EXIT_REFUSED,
    ParamsOption,
    fail,
    fail_with,
    load_or_exit,
    say,
    setup_logging,
)

stage_app = typer.Typer(help="Run one stage on explicit folders (what dvc.yaml calls).")

R = TypeVar("R", bound=StageResult)


def read_result(folder: Path, result_type: type[R]) -> R:
    """The typed result sealed in ``folder``, or exit 2 saying which stage must run first."""
    from charloop.stages.contract import CorruptSeal, read_output

    try:
        return read_output(folder, result_type)
    except FileNotFoundError as exc:
        fail("cannot read stage input", str(exc), EXIT_INVALID, "run that stage first")
    except CorruptSeal as exc:
        fail_with(exc, "stage input fails its seal", "run that stage again")


def _report(output: StageResult) -> None:
    typer.echo(f"{output.stage}: {output.path} digest={output.digest[:12]} {output.facts()}")


@stage_app.command("generate")
def stage_generate(
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    iteration: int = 1,
    adapter: Annotated[Path | None, typer.Option(help="Previous LoRA folder.")] = None,
) -> None:
    """Generate one iteration's images into OUT."""
    from charloop.stages.generate.stage import run_generate
    from charloop.stages.results import Adapter

    project = load_or_exit(params)
    setup_logging(False)
    ref = read_result(adapter, Adapter).ref if adapter is not None else None
    _report(run_generate(project, iteration, ref, out))


@stage_app.command("filter")
def stage_filter(generated: Path, out: Path, params: ParamsOption = Path("params.yaml")) -> None:
    """Filter GENERATED into OUT (report.jsonl, kept.jsonl)."""
    from charloop.stages.filter.stage import run_filter
    from charloop.stages.results import Generated

    project = load_or_exit(params)
    setup_logging(False)
    _report(run_filter(project, read_result(generated, Generated), out))


@stage_app.command("review")
def stage_review(
    generated: Path,
    filtered: Path,
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    desk: Annotated[Path | None, typer.Option(help="Review desk with decisions.json.")] = None,
) -> None:
    """Merge FILTERED's decisions with a person's (from DESK, if any) into OUT."""
    from charloop.stages.results import Filtered, Generated
    from charloop.stages.review.stage import load_decisions, run_review

    project = load_or_exit(params)
    setup_logging(False)
    decisions = load_decisions(desk) if desk else None
    output = run_review(
        read_result(generated, Generated),
        read_result(filtered, Filtered),
        decisions,
        out,
        project.params.filter.min_kept,
    )
    _report(output)


@stage_app.command("caption")
def stage_caption(
    generated: Path,
    reviewed: Path,
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    previous: Annotated[
        Path | None,
        typer.Option(help="The previous iteration's dataset folder (caption.dataset: accumulate)."),
    ] = None,
) -> None:
    """Caption the images REVIEWED selected from GENERATED into the dataset folder OUT."""
    from charloop.stages.caption.stage import run_caption
    from charloop.stages.results import Dataset, Generated, Reviewed

    project = load_or_exit(params)
    setup_logging(False)
    earlier = read_result(previous, Dataset) if previous else None
    selected = read_result(reviewed, Reviewed)
    _report(run_caption(project, read_result(generated, Generated), selected, out, earlier))


@stage_app.command("train")
def stage_train(
    dataset: Path,
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    iteration: int = 1,
    parent: Annotated[
        Path | None, typer.Option(help="The previous iteration's adapter folder, if any.")
    ] = None,
    parent_version: Annotated[
        str | None, typer.Option(help="Registry version of --parent, if registered.")
    ] = None,
) -> None:
    """Train a LoRA on DATASET into OUT (with the same provenance the loop writes); with
    train.candidates > 1, one per seed beside OUT (candidates/), the best evaluated kept."""
    from charloop.lineage.candidates import train_candidates
    from charloop.lineage.provenance import build_provenance
    from charloop.stages.results import Adapter, Dataset

    project = load_or_exit(params)
    setup_logging(False)
    data = read_result(dataset, Dataset)
    parent_ref = read_result(parent, Adapter).ref if parent is not None else None
    provenance = build_provenance(project, iteration, data, parent_ref, parent_version)
    _report(train_candidates(project, data, out, provenance))


@stage_app.command("evaluate")
def stage_evaluate(
    adapter: Path, dataset: Path, out: Path, params: ParamsOption = Path("params.yaml")
) -> None:
    """Evaluate ADAPTER (trained on DATASET) into OUT."""
    from charloop.stages.evaluate.stage import run_evaluate
    from charloop.stages.results import Adapter, Dataset

    project = load_or_exit(params)
    setup_logging(False)
    _report(
        run_evaluate(project, read_result(adapter, Adapter), read_result(dataset, Dataset), out)
    )


@stage_app.command("log-run")
def stage_log_run(
    adapter: Path,
    evaluation: Path,
    out: Path,
    params: ParamsOption = Path("params.yaml"),
    plots: Annotated[
        Path | None, typer.Option(help="Folder for the `dvc plots` datapoints (JSON).")
    ] = None,
) -> None:
    """Log the run's params and metrics to MLflow (what `dvc exp run` ends with), so DVC
    experiments sit side by side in MLflow; writes the run id to OUT and, with --plots,
    the loss curves and per-context scores that `dvc plots` draws."""
    import json

    from charloop.core import atomic
    from charloop.lineage.provenance import read_provenance
    from charloop.lineage.registry import log_experiment_run
    from charloop.lineage.reports import dvc_plot_data
    from charloop.lineage.versioning import git_commit
    from charloop.stages.layout import TRAIN_LOG
    from charloop.stages.results import Adapter, Evaluation

    project = load_or_exit(params)
    trained, scored = read_result(adapter, Adapter), read_result(evaluation, Evaluation)
    tags = {
        **read_provenance(trained),  # the adapter's own lineage facts, as in its headers
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc_exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "git_commit": git_commit(project.root),
        "adapter_sha256": trained.weights_sha256,
        "kohya_sha256": trained.kohya_sha256,
    }
    run_id = log_experiment_run(
        project.tracking_uri,
        f"{project.params.experiment_name}-dvc",
        project.params.model_dump(mode="json"),
        dict(scored.metrics),
        tags,
    )
    atomic.write_json(out, {"run_id": run_id, **tags})
    if plots is not None:
        train_log = json.loads((Path(trained.path) / TRAIN_LOG).read_text(encoding="utf-8"))
        metrics = json.loads((Path(scored.path) / "metrics.json").read_text(encoding="utf-8"))
        for name, rows in dvc_plot_data(train_log, metrics).items():
            atomic.write_json(plots / f"{name}.json", rows)
    typer.echo(f"log-run: MLflow run {run_id} ({tags['dvc_exp_name']})")


@stage_app.command("deps")
def stage_deps(
    dvc_yaml: Annotated[Path, typer.Argument(help="The dvc.yaml to check.")] = Path("dvc.yaml"),
    write: Annotated[bool, typer.Option(help="Rewrite stale code deps in place.")] = False,
) -> None:
    """Check (or --write) dvc.yaml's code deps against each stage's import closure."""
    import yaml

    from charloop.lineage.dvc_stages import stale_deps, write_deps

    if not dvc_yaml.is_file():
        fail(f"no dvc.yaml at {dvc_yaml}", code=EXIT_INVALID, hint="pass the project's dvc.yaml")
    if write:
        changed = write_deps(dvc_yaml)
        typer.echo(f"updated: {', '.join(changed)}" if changed else "up to date")
        return
    stale = stale_deps(yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")))
    for name, want in stale.items():
        say(f"{name}: code deps should be {want}", style="red")
    if stale:
        fail("stale code deps", code=EXIT_REFUSED, hint="run `charloop stage deps --write`")
    typer.echo("dvc.yaml code deps match the stages' imports")
