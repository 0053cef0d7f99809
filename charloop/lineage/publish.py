"""Publish a finished iteration: version its folders with DVC, register it in MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from charloop.core.faults import failpoint
from charloop.core.hashing import sha256_file
from charloop.core.locking import store_lock
from charloop.lineage import registry, reports, versioning
from charloop.lineage.provenance import read_provenance
from charloop.lineage.rounds import mark_published
from charloop.models.encode_cache import component_identity
from charloop.params.project import Project
from charloop.stages.caption.stage import training_data_digest
from charloop.stages.contract import CorruptSeal, verify
from charloop.stages.layout import ADAPTER_FILE_TAGS, TRIGGER_EMBEDDING, IterationPaths
from charloop.stages.results import IterationResults

logger = logging.getLogger(__name__)

HISTORY_PLOT = "metrics_history.png"


def prepare_stores(project: Project) -> None:
    """Create the DVC repo and the MLflow database once, before the loop starts
    (concurrent first-time migrations race). The loop runs :func:`preflight` first."""
    if project.params.dvc.enabled:
        root = versioning.covering_root(project.root, project.workdir)
        versioning.ensure_repo(root, dvc_remote(project))
    registry.init_store(project.tracking_uri)


def verify_seals(results: IterationResults) -> None:
    """Every stage folder must still pass its seal, with the digest the loop saw, before
    DVC versions it or the registry records it.

    Raises:
        CorruptSeal: a folder or its marker changed since its stage finished.
    """
    for result in results.all():
        found = verify(result.path)
        if found.digest != result.digest:
            raise CorruptSeal(
                f"{result.path} changed after its {result.stage} stage finished "
                f"({found.digest[:12]} != {result.digest[:12]}); run the loop again"
            )


def dvc_remote(project: Project) -> str | None:
    """The DVC remote: a URL as written, a folder resolved against the params file."""
    remote = project.params.dvc.remote
    return remote if remote is None else versioning.remote_url(project.root, remote)


def _publish(
    project: Project,
    iteration: int,
    results: IterationResults,
    parent_version: str | None,
    extra_summary: dict[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
) -> dict[str, str]:
    """DVC-track the iteration's folders, push them, and register the adapter.

    Args:
        project: Validated params and root.
        iteration: 1-based iteration number.
        results: The iteration's stage results.
        parent_version: Model version of the previous iteration's adapter, if any.
        extra_summary: Loop facts (convergence verdict...) stored with the run.
        history: Headline metrics of iterations 1..``iteration``; when given, their plot
            is drawn into the iteration's ``reports/`` folder and logged with the run.

    Returns:
        The registry's ``run_id``, ``version`` and ``lineage_key`` plus ``dataset_hash``
        (the training data's digest).
    """
    params = project.params
    paths = IterationPaths.of(project.workdir, iteration)
    verify_seals(results)
    dvc_hashes: dict[str, str] = {}
    if params.dvc.enabled:
        dvc_hashes = versioning.track(paths.versioned)
        if remote := dvc_remote(project):
            name = versioning.remote_name(remote)
            pushed = versioning.push(paths.versioned, name)
            logger.info("dvc: pushed %d file(s) of iteration %d", pushed, iteration)
    failpoint("publish:after-dvc")
    dataset, adapter, evaluation = results.dataset, results.adapter, results.evaluation
    dataset_md5 = dvc_hashes.get(str(paths.dataset), dataset.digest)
    images = {}
    if history:
        images["metrics_history"] = str(reports.plot_history(history, paths.reports / HISTORY_PLOT))
    tags = {
        **read_provenance(adapter),  # the adapter's own lineage facts, as in its headers
        # The training data alone (images, captions): identical data, identical hash.
        "dataset_hash": training_data_digest(dataset.path),
        "dataset_dvc_md5": dataset_md5,  # the folder as DVC stores it: what checkout fetches
        "dataset_images": str(dataset.images),
        # Generated images per iteration that made them (an accumulating dataset draws on
        # earlier iterations); each image's own row is in the dataset's manifest.
        "dataset_sources": ",".join(f"{i}:{n}" for i, n in dataset.sources.items()),
        "adapter_hash": dvc_hashes.get(str(paths.adapter), adapter.digest),
        "adapter_sha256": adapter.weights_sha256,
        "kohya_sha256": adapter.kohya_sha256,
        "generated_hash": dvc_hashes.get(str(paths.generated), results.generated.digest),
        "base_model_hash": component_identity(
            project.model_ref(params.base_model.path), "", params.base_model.revision
        ),
        "git_commit": versioning.git_commit(project.root),
    }
    embedding = Path(adapter.path) / TRIGGER_EMBEDDING
    if embedding.is_file():  # pivotal tuning: the trigger's vectors ship with the LoRA
        tags[ADAPTER_FILE_TAGS[TRIGGER_EMBEDDING]] = sha256_file(embedding)
    for name, facts in (results.filtered.traits or {}).items():
        # Which traits this version was filtered for, and whether its data showed them.
        prefix = "traits" if not params.cast else f"traits.{name}"
        tags[f"{prefix}_declared"] = ", ".join(facts["declared"])
        tags[f"{prefix}_discovered"] = ", ".join(facts["discovered"])
        tags[f"{prefix}_kept_all"] = f"{facts['kept']['all']:.3f}"
    if remote := dvc_remote(project):
        tags["dvc_remote"] = project.portable(remote)  # checkout fetches from there
    if review := results.reviewed:
        tags["review_via"] = review.via
        tags["reviewed_by"] = review.reviewer or ""
    record = registry.IterationRecord(
        model_name=params.model_name,
        experiment=params.experiment_name,
        artifact_location=project.artifact_location,
        iteration=iteration,
        adapter_dir=adapter.path,
        evaluation_dir=evaluation.path,
        metrics=dict(evaluation.metrics),
        params=params.model_dump(mode="json"),
        tags=tags,
        parent_version=parent_version,
        dataset_path=str(paths.dataset),
        dataset_dvc_md5=dataset_md5,
        summary={
            "stages": {result.stage: result.facts() for result in results.all()},
            **(extra_summary or {}),
        },
        images=images,
    )
    candidate = bool((extra_summary or {}).get("best_so_far", True))
    result = registry.register_iteration(project.tracking_uri, record, candidate)
    # From now on the iteration is history: its stages refuse to redo (new inputs retrain
    # in a new round, see charloop.lineage.rounds).
    mark_published(paths.root, params.model_name, result["version"])
    return {**result, "dataset_hash": tags["dataset_hash"]}


def publish_iteration(
    project: Project,
    iteration: int,
    results: IterationResults,
    parent_version: str | None,
    extra_summary: dict[str, Any] | None = None,
    history: list[dict[str, float]] | None = None,
) -> dict[str, str]:
    """:func:`_publish` under the project's store lock, so loops sharing a DVC repo and an
    MLflow database never write to them at the same time."""
    with store_lock(project.root):
        return _publish(project, iteration, results, parent_version, extra_summary, history)
