"""One Prefect task per loop stage. Each passes paths, digests and typed stage results,
never images or tensors. Cache keys are the library's stage identities (``tasks.caching``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from charloop.core import atomic
from charloop.lineage.publish import HISTORY_PLOT, prepare_stores, publish_iteration
from charloop.lineage.reports import history_markdown, metrics_markdown, per_context_rows
from charloop.params.project import Project
from charloop.stages.caption.stage import caption_identity, run_caption
from charloop.stages.evaluate.convergence import compare
from charloop.stages.evaluate.stage import evaluate_identity, run_evaluate
from charloop.stages.filter.stage import filter_identity, run_filter
from charloop.stages.generate.stage import generate_identity, run_generate
from charloop.stages.layout import IterationPaths
from charloop.stages.results import (
    Adapter,
    AdapterRef,
    Dataset,
    EvalShard,
    Evaluation,
    Filtered,
    Generated,
    IterationResults,
    Reviewed,
)
from charloop.stages.review.stage import HumanDecisions, export_sheet, review_identity, run_review
from charloop.stages.train.stage import run_train, train_identity
from tasks.caching import retry_transient, run_logger, stage_cache_key

CACHED: dict[str, Any] = dict(persist_result=True, retries=1, retry_condition_fn=retry_transient)


def paths_of(project: Project, iteration: int) -> IterationPaths:
    return IterationPaths.of(project.workdir, iteration)


def _artifact_key(project: Project, iteration: int, what: str) -> str:
    return f"{project.params.subject}-iter-{iteration}-{what}".replace("_", "-").lower()


@task(name="prepare-stores", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient)
def prepare_stores_task(project: Project) -> None:
    """Create the DVC repo and MLflow database once, before any stage runs."""
    prepare_stores(project)


@task(
    name="generate",
    cache_key_fn=stage_cache_key(
        lambda p: generate_identity(
            p["project"],
            p["iteration"],
            p["adapter"],
            paths_of(p["project"], p["iteration"]).generated,
        )
    ),
    **CACHED,
)
def generate_task(project: Project, iteration: int, adapter: AdapterRef | None) -> Generated:
    """Render the iteration's prompt matrix (with the previous LoRA from iteration 2 on)."""
    output = run_generate(project, iteration, adapter, paths_of(project, iteration).generated)
    used = "the previous LoRA" if adapter else "the base model"
    run_logger().info("generate: %d images with %s", output.images, used)
    return output


@task(
    name="filter",
    cache_key_fn=stage_cache_key(
        lambda p: filter_identity(
            p["project"], p["generated"], paths_of(p["project"], p["iteration"]).filtered
        )
    ),
    **CACHED,
)
def filter_task(project: Project, iteration: int, generated: Generated) -> Filtered:
    """Apply the discriminators; publish the per-image decisions as a table artifact."""
    output = run_filter(project, generated, paths_of(project, iteration).filtered)
    run_logger().info("filter: kept %d of %d", output.kept, output.candidates)
    report = atomic.read_jsonl(Path(output.path) / "report.jsonl")
    create_table_artifact(
        key=_artifact_key(project, iteration, "filter"),
        table=[
            {"id": r["id"], "decision": r["decision"], "reasons": "; ".join(r["reasons"])}
            for r in report
        ],
        description=f"Filter decisions, iteration {iteration}: kept {output.kept}",
    )
    return output


@task(name="export-review")
def export_review_task(
    project: Project, iteration: int, generated: Generated, filtered: Filtered
) -> str:
    """Write the review sheet to the iteration's desk and publish the candidates."""
    sheet = export_sheet(generated, filtered, paths_of(project, iteration).review_desk)
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


@task(
    name="review",
    cache_key_fn=stage_cache_key(
        lambda p: review_identity(
            p["generated"],
            p["filtered"],
            p["decisions"],
            paths_of(p["project"], p["iteration"]).reviewed,
            p["project"].params.filter.min_kept,
            p.get("timed_out", False),
        )
    ),
    **CACHED,
)
def review_task(
    project: Project,
    iteration: int,
    generated: Generated,
    filtered: Filtered,
    decisions: HumanDecisions | None,
    timed_out: bool = False,
) -> Reviewed:
    """Merge a person's decisions (if any) with the filter's; record who decided what."""
    output = run_review(
        generated,
        filtered,
        decisions,
        paths_of(project, iteration).reviewed,
        project.params.filter.min_kept,
        timed_out,
    )
    run_logger().info(
        "review: kept %d, %d overridden, via %s", output.kept, output.overridden, output.via
    )
    return output


@task(
    name="caption",
    cache_key_fn=stage_cache_key(
        lambda p: caption_identity(
            p["project"],
            p["generated"],
            p["reviewed"],
            paths_of(p["project"], p["iteration"]).dataset,
            previous=p.get("previous"),
        )
    ),
    **CACHED,
)
def caption_task(
    project: Project,
    iteration: int,
    generated: Generated,
    reviewed: Reviewed,
    previous: Dataset | None = None,
) -> Dataset:
    """Write the captioned, kohya-style dataset folder (``previous``: the round's previous
    dataset, which an accumulating ``caption.dataset`` policy draws from)."""
    out = paths_of(project, iteration).dataset
    output = run_caption(project, generated, reviewed, out, previous)
    run_logger().info(
        "caption: %d images (%d references), generated images by iteration %s",
        output.images,
        output.references,
        output.sources,
    )
    return output


@task(
    name="train",
    cache_key_fn=stage_cache_key(
        lambda p: train_identity(
            p["project"],
            p["dataset"],
            p.get("out") or paths_of(p["project"], p["iteration"]).adapter,
            p["provenance"],
        )
    ),
    **CACHED,
)
def train_task(
    project: Project,
    iteration: int,
    dataset: Dataset,
    provenance: dict[str, str],
    out: Path | None = None,
) -> Adapter:
    """Train the iteration's LoRA adapter (into ``out``: a candidate's folder)."""
    out = out or paths_of(project, iteration).adapter
    output = run_train(project, dataset, out, provenance)
    run_logger().info("train: %d steps, final loss %.4f", output.steps, output.final_loss)
    return output


@task(
    name="evaluate",
    cache_key_fn=stage_cache_key(
        lambda p: evaluate_identity(
            p["project"],
            p["adapter"],
            p["dataset"],
            p.get("out") or paths_of(p["project"], p["iteration"]).evaluation,
        )
    ),
    **CACHED,
)
def evaluate_task(
    project: Project,
    iteration: int,
    adapter: Adapter,
    dataset: Dataset,
    previous: dict[str, float] | None = None,
    rendered: list[EvalShard] | None = None,
    out: Path | None = None,
) -> Evaluation:
    """Score the adapter on held-out contexts; publish the metrics and their change since
    the ``previous`` iteration's (a markdown artifact) and the per-context scores (a table).
    ``rendered``: evaluation shards already rendered by ``eval_shard_task``; ``out``: a
    candidate's folder instead of the iteration's.
    """
    out = out or paths_of(project, iteration).evaluation
    output = run_evaluate(project, adapter, dataset, out, rendered)
    metrics = output.metrics
    run_logger().info(
        "evaluate: identity %.4f (base model %.4f)",
        metrics.get("identity_consistency", float("nan")),
        metrics.get("base_identity_consistency", float("nan")),
    )
    deltas = compare(previous, output.metrics) if previous is not None else None
    which = "" if out == paths_of(project, iteration).evaluation else f"-{out.parent.name}"
    create_markdown_artifact(
        key=_artifact_key(project, iteration, "metrics" + which),
        markdown=metrics_markdown(
            iteration, output.metrics, deltas, Path(output.path) / "contact_sheet.png"
        ),
        description=f"Evaluation metrics, iteration {iteration}",
    )
    metrics = json.loads((Path(output.path) / "metrics.json").read_text())
    create_table_artifact(
        key=_artifact_key(project, iteration, "per-context" + which),
        table=per_context_rows(metrics),
        description=f"Per held-out context, with the LoRA and base_*, iteration {iteration}",
    )
    return output


@task(name="publish", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_transient)
def publish_task(
    project: Project,
    iteration: int,
    results: IterationResults,
    parent_version: str | None,
    extra_summary: dict[str, Any],
    history: list[dict[str, float]] | None = None,
) -> dict[str, str]:
    """DVC-version the iteration and register its adapter (idempotent, so safe to retry).

    With ``history`` (iterations 1..``iteration``), also plot the metrics over iterations
    and publish them as a markdown artifact.
    """
    result = publish_iteration(project, iteration, results, parent_version, extra_summary, history)
    if history:
        plot = paths_of(project, iteration).reports / HISTORY_PLOT
        create_markdown_artifact(
            key=_artifact_key(project, iteration, "history"),
            markdown=history_markdown(history, plot),
            description=f"Metrics over iterations 1-{len(history)}",
        )
    run_logger().info("published %s v%s", project.params.model_name, result["version"])
    return result
