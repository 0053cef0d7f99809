"""One Prefect task per loop stage. Each passes paths and digests, never images or tensors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from charloop import atomic
from charloop.caption import run_caption
from charloop.config import Project
from charloop.convergence import compare
from charloop.evaluate import run_evaluate
from charloop.evaluate_shards import eval_shard_dir, run_eval_shard
from charloop.filter import run_filter
from charloop.generate import AdapterRef, run_generate
from charloop.generate_shards import assemble_generated, run_generate_shard, shard_dir
from charloop.layout import IterationPaths
from charloop.publish import HISTORY_PLOT, prepare_stores, publish_iteration
from charloop.reports import history_markdown, metrics_markdown, per_context_rows
from charloop.review import HumanDecisions, export_sheet, run_review
from charloop.stage import StageOutput
from charloop.train import run_train
from tasks.caching import output_cache_key, retry_transient

_CACHED: dict[str, Any] = dict(persist_result=True, retries=1, retry_condition_fn=retry_transient)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a task run; a plain logger when called through ``.fn()``."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _paths(parameters: dict[str, Any]) -> IterationPaths:
    return IterationPaths.of(parameters["project"].workdir, parameters["iteration"])


def _artifact_key(project: Project, iteration: int, what: str) -> str:
    return f"{project.params.subject}-iter-{iteration}-{what}".replace("_", "-").lower()


@task(name="prepare-stores", retries=2, retry_delay_seconds=2)
def prepare_stores_task(project: Project) -> None:
    """Create the DVC repo and MLflow database once, before any stage runs."""
    prepare_stores(project)


@task(name="generate", cache_key_fn=output_cache_key(lambda p: _paths(p).generated), **_CACHED)
def generate_task(project: Project, iteration: int, adapter: AdapterRef | None) -> StageOutput:
    """Render the iteration's prompt matrix (with the previous LoRA from iteration 2 on)."""
    return run_generate(
        project, iteration, adapter, IterationPaths.of(project.workdir, iteration).generated
    )


@task(
    name="generate-shard",
    cache_key_fn=output_cache_key(lambda p: shard_dir(_paths(p).generated, p["shard"])),
    **_CACHED,
)
def generate_shard_task(
    project: Project, iteration: int, adapter: AdapterRef | None, shard: int, shards: int
) -> StageOutput:
    """Render one shard of the iteration's images (fans out on Dask/Ray task runners)."""
    out = IterationPaths.of(project.workdir, iteration).generated
    return run_generate_shard(project, iteration, adapter, out, shard, shards)


@task(name="assemble-generated", retries=1, retry_condition_fn=retry_transient)
def assemble_generated_task(
    project: Project, iteration: int, adapter: AdapterRef | None, parts: list[StageOutput]
) -> StageOutput:
    """Merge the shards into the generate stage folder."""
    out = IterationPaths.of(project.workdir, iteration).generated
    return assemble_generated(project, iteration, adapter, parts, out)


@task(
    name="evaluate-shard",
    cache_key_fn=output_cache_key(lambda p: eval_shard_dir(_paths(p).evaluation, p["shard"])),
    **_CACHED,
)
def eval_shard_task(
    project: Project, iteration: int, adapter: StageOutput, shard: int, shards: int
) -> StageOutput:
    """Render one shard of the held-out evaluation (fans out on Dask/Ray task runners)."""
    out = IterationPaths.of(project.workdir, iteration).evaluation
    return run_eval_shard(project, adapter, out, shard, shards)


@task(name="filter", cache_key_fn=output_cache_key(lambda p: _paths(p).filtered), **_CACHED)
def filter_task(project: Project, iteration: int, generated: StageOutput) -> StageOutput:
    """Apply the discriminators; publish the per-image decisions as a table artifact."""
    output = run_filter(project, generated, IterationPaths.of(project.workdir, iteration).filtered)
    report = atomic.read_jsonl(Path(output.path) / "report.jsonl")
    create_table_artifact(
        key=_artifact_key(project, iteration, "filter"),
        table=[
            {"id": r["id"], "decision": r["decision"], "reasons": "; ".join(r["reasons"])}
            for r in report
        ],
        description=f"Filter decisions, iteration {iteration}: kept {output.summary['kept']}",
    )
    return output


@task(name="export-review")
def export_review_task(
    project: Project, iteration: int, generated: StageOutput, filtered: StageOutput
) -> str:
    """Write the review sheet to the iteration's desk and publish the candidates."""
    paths = IterationPaths.of(project.workdir, iteration)
    sheet = export_sheet(generated, filtered, paths.review_desk)
    report = atomic.read_jsonl(Path(filtered.path) / "report.jsonl")
    create_table_artifact(
        key=_artifact_key(project, iteration, "review-candidates"),
        table=[
            {"id": r["id"], "automatic": r["decision"], "reasons": "; ".join(r["reasons"])}
            for r in report
        ],
        description=f"Review candidates, iteration {iteration}; sheet: {sheet}",
    )
    return str(sheet)


@task(name="review", cache_key_fn=output_cache_key(lambda p: _paths(p).reviewed), **_CACHED)
def review_task(
    project: Project,
    iteration: int,
    generated: StageOutput,
    filtered: StageOutput,
    decisions: HumanDecisions | None,
    timed_out: bool = False,
) -> StageOutput:
    """Merge a person's decisions (if any) with the filter's; record who decided what."""
    output = run_review(
        generated,
        filtered,
        decisions,
        IterationPaths.of(project.workdir, iteration).reviewed,
        project.params.filter.min_kept,
        timed_out,
    )
    _logger().info("review: %s", output.summary)
    return output


@task(name="caption", cache_key_fn=output_cache_key(lambda p: _paths(p).dataset), **_CACHED)
def caption_task(
    project: Project, iteration: int, generated: StageOutput, reviewed: StageOutput
) -> StageOutput:
    """Write the captioned, kohya-style dataset folder."""
    return run_caption(
        project, generated, reviewed, IterationPaths.of(project.workdir, iteration).dataset
    )


@task(name="train", cache_key_fn=output_cache_key(lambda p: _paths(p).adapter), **_CACHED)
def train_task(
    project: Project, iteration: int, dataset: StageOutput, provenance: dict[str, Any]
) -> StageOutput:
    """Train the iteration's LoRA adapter."""
    output = run_train(
        project, dataset, IterationPaths.of(project.workdir, iteration).adapter, provenance
    )
    _logger().info("train: %s", output.summary)
    return output


@task(name="evaluate", cache_key_fn=output_cache_key(lambda p: _paths(p).evaluation), **_CACHED)
def evaluate_task(
    project: Project,
    iteration: int,
    adapter: StageOutput,
    dataset: StageOutput,
    previous: dict[str, float] | None = None,
    rendered: list[StageOutput] | None = None,
) -> StageOutput:
    """Score the adapter on held-out contexts; publish the metrics and their change since
    the ``previous`` iteration's (a markdown artifact) and the per-context scores (a table).
    ``rendered``: evaluation shards already rendered by ``eval_shard_task``.
    """
    out = IterationPaths.of(project.workdir, iteration).evaluation
    output = run_evaluate(project, adapter, dataset, out, rendered)
    deltas = compare(previous, output.summary) if previous is not None else None
    create_markdown_artifact(
        key=_artifact_key(project, iteration, "metrics"),
        markdown=metrics_markdown(
            iteration, output.summary, deltas, Path(output.path) / "contact_sheet.png"
        ),
        description=f"Evaluation metrics, iteration {iteration}",
    )
    metrics = json.loads((Path(output.path) / "metrics.json").read_text())
    create_table_artifact(
        key=_artifact_key(project, iteration, "per-context"),
        table=per_context_rows(metrics),
        description=f"Per held-out context, with the LoRA and base_*, iteration {iteration}",
    )
    return output


@task(name="publish", retries=2, retry_delay_seconds=3)
def publish_task(
    project: Project,
    iteration: int,
    outputs: dict[str, StageOutput],
    parent_version: str | None,
    extra_summary: dict[str, Any],
    history: list[dict[str, float]] | None = None,
) -> dict[str, str]:
    """DVC-version the iteration and register its adapter (idempotent, so safe to retry).

    With ``history`` (iterations 1..``iteration``), also plot the metrics over iterations
    and publish them as a markdown artifact.
    """
    result = publish_iteration(project, iteration, outputs, parent_version, extra_summary, history)
    if history:
        plot = IterationPaths.of(project.workdir, iteration).reports / HISTORY_PLOT
        create_markdown_artifact(
            key=_artifact_key(project, iteration, "history"),
            markdown=history_markdown(history, plot),
            description=f"Metrics over iterations 1-{len(history)}",
        )
    _logger().info("published %s v%s", project.params.model_name, result["version"])
    return result
