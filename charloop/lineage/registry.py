"""MLflow: one run per iteration and one registered model version per adapter.

Every version carries the tags that answer "which data made this LoRA?": the dataset's
DVC md5 and content digest, the adapter's hashes, the parent version, the params hash,
the base model and the code commit. Registration is idempotent: a version whose lineage
key already exists is returned instead of duplicated (a resumed loop registers once).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charloop.core.faults import failpoint
from charloop.core.hashing import sha256_json

logger = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"


@dataclass(frozen=True)
class IterationRecord:
    """Everything the registry needs about one finished iteration."""

    model_name: str
    experiment: str
    artifact_location: str
    iteration: int
    adapter_dir: str
    evaluation_dir: str
    metrics: dict[str, float]
    params: dict[str, Any]
    tags: dict[str, str]
    parent_version: str | None = None
    dataset_path: str = ""
    dataset_dvc_md5: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    """Extra PNGs to log as step images (MLflow key -> file), e.g. the metrics plot."""

    @property
    def lineage_key(self) -> str:
        """Identity of this registration: same inputs and adapter, same key."""
        return sha256_json(
            {
                "model": self.model_name,
                "iteration": self.iteration,
                "params_hash": self.tags.get("params_hash"),
                "adapter_sha256": self.tags.get("adapter_sha256"),
                "dataset_hash": self.dataset_dvc_md5,
                "parent": self.parent_version,
            }
        )[:24]


def init_store(tracking_uri: str) -> None:
    """Create (and migrate) the tracking database once, before any concurrent use."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(tracking_uri).search_experiments(max_results=1)


_RUN_ARTIFACTS = re.compile(r"/(?P<run>[0-9a-f]{32})/artifacts(?P<rest>/.*)?$")


def local_artifact(uri: str, artifact_root: str | None) -> str:
    """``uri``, or its place under ``artifact_root`` when the project was moved.

    MLflow stores absolute artifact URIs when a run is created; a copied or moved project
    keeps its artifacts under its own ``registry.artifact_location``, so a ``file:`` URI
    that no longer exists is looked up there (``<root>/<run id>/artifacts/...``).
    """
    if artifact_root is None or not uri.startswith("file:"):
        return uri
    from mlflow.utils.file_utils import local_file_uri_to_path

    match = _RUN_ARTIFACTS.search(uri)
    if Path(local_file_uri_to_path(uri)).exists() or match is None:
        return uri
    moved = f"{artifact_root.rstrip('/')}/{match['run']}/artifacts{match['rest'] or ''}"
    return moved if Path(local_file_uri_to_path(moved)).exists() else uri


def ensure_experiment(tracking_uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) when missing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as MLflow params: dotted keys, string values (lists as JSON-ish text)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def find_version(client: Any, model_name: str, lineage_key: str) -> Any | None:
    """The model version registered with ``lineage_key``, if any.

    Only a missing registered model means "none yet"; any other registry error (a bad
    filter, a database fault) is raised, since treating it as "none" would register
    every iteration again.
    """
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(
            f"name = '{model_name}' and tags.lineage_key = '{lineage_key}'"
        )
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return versions[0] if versions else None


def _end_abandoned_runs(client: Any, experiment_id: str, key: str) -> None:
    """Mark runs of ``key`` left RUNNING by a killed attempt as KILLED (the loop lock
    guarantees no live attempt of the same iteration is logging now)."""
    for run in client.search_runs(
        [experiment_id],
        filter_string=f"tags.lineage_key = '{key}' and attributes.status = 'RUNNING'",
    ):
        client.set_terminated(run.info.run_id, status="KILLED")
        logger.warning(
            "registry: run %s was left RUNNING by a killed attempt; marked KILLED", run.info.run_id
        )


def register_iteration(
    tracking_uri: str, record: IterationRecord, candidate: bool = True
) -> dict[str, str]:
    """Log the iteration's run and register its adapter as a new model version, aliased
    ``candidate`` unless ``candidate`` is False (a round that did not beat the best so far
    leaves the alias on the best).

    Returns:
        ``{"run_id", "version", "lineage_key"}`` of the (possibly pre-existing) version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    key = record.lineage_key
    if existing := find_version(client, record.model_name, key):
        logger.info("registry: %s v%s already registered", record.model_name, existing.version)
        return {"run_id": existing.run_id, "version": str(existing.version), "lineage_key": key}

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, record.experiment, record.artifact_location)
    # A run logged by an attempt that died before creating its version is reused, not
    # duplicated: the lineage key identifies it.
    logged = client.search_runs(
        [experiment_id],
        filter_string=f"tags.lineage_key = '{key}' and attributes.status = 'FINISHED'",
    )
    if logged:
        run_id, artifact_uri = logged[0].info.run_id, logged[0].info.artifact_uri
        logger.info("registry: reusing run %s logged by an interrupted attempt", run_id)
    else:
        _end_abandoned_runs(client, experiment_id, key)
        run_id, artifact_uri = _log_run(experiment_id, record, key)
    failpoint("register:after-run")
    try:
        client.create_registered_model(
            record.model_name, description="charloop LoRA iterations for one character"
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    tags = {**record.tags, "lineage_key": key, "iteration": str(record.iteration)}
    tags["parent_version"] = record.parent_version or "none"
    version = client.create_model_version(
        record.model_name, source=f"{artifact_uri}/adapter", run_id=run_id, tags=tags
    )
    if candidate:
        client.set_registered_model_alias(record.model_name, CANDIDATE_ALIAS, version.version)
    logger.info("registry: registered %s v%s", record.model_name, version.version)
    return {"run_id": run_id, "version": str(version.version), "lineage_key": key}


def _log_run(experiment_id: str, record: IterationRecord, key: str) -> tuple[str, str]:
    """Log the iteration's params, metrics, dataset input, adapter and images as one run."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from PIL import Image

    run_name = f"{record.model_name}-iter-{record.iteration:03d}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({**record.tags, "lineage_key": key, "iteration": str(record.iteration)})
        mlflow.log_params(flatten(record.params))
        mlflow.log_metrics(record.metrics, step=record.iteration)
        _log_training_curves(Path(record.adapter_dir) / "train_log.json")
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a folder
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(record.dataset_path).resolve()))
        dataset = MetaDataset(  # type: ignore[abstract]  # concrete at runtime
            source,
            name="captioned-dataset",
            digest=record.tags.get("dataset_hash", record.dataset_dvc_md5)[:36],
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_artifacts(record.adapter_dir, artifact_path="adapter")
        for name in ("metrics.json", "contact_sheet.png"):  # the sheet is a release's sample grid
            mlflow.log_artifact(str(Path(record.evaluation_dir) / name), "evaluation")
        with Image.open(Path(record.evaluation_dir) / "contact_sheet.png") as sheet:
            mlflow.log_image(sheet.copy(), key="contact_sheet", step=record.iteration)
        for image_key, image_path in record.images.items():
            with Image.open(image_path) as image:
                mlflow.log_image(image.copy(), key=image_key, step=record.iteration)
        if record.summary:
            mlflow.log_dict(record.summary, "summary.json")
        return str(run.info.run_id), str(run.info.artifact_uri)


def _log_training_curves(train_log: Path) -> None:
    """Per-step training loss, learning rate and validation loss (step = optimizer step)."""
    import json

    import mlflow
    from mlflow.entities import Metric

    if not train_log.is_file():
        return
    log = json.loads(train_log.read_text())
    stamp = 0  # fixed timestamps keep re-logged curves identical
    metrics = [Metric("train/loss", v, stamp, i + 1) for i, v in enumerate(log.get("loss", []))]
    metrics += [
        Metric("train/learning_rate", v, stamp, i + 1)
        for i, v in enumerate(log.get("learning_rate", []))
    ]
    metrics += [
        Metric("train/validation_loss", row["loss"], stamp, row["step"])
        for row in log.get("validation_loss", [])
    ]
    run = mlflow.active_run()
    if run is not None and metrics:
        mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=metrics)


def log_experiment_run(
    tracking_uri: str,
    experiment: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
) -> str:
    """Log one run (no model version) for side-by-side comparison, e.g. a DVC experiment.

    Returns:
        The run id.
    """
    import mlflow

    experiment_id = ensure_experiment(tracking_uri, experiment)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=tags.get("dvc_exp_name")) as run:
        mlflow.set_tags(tags)
        mlflow.log_params(flatten(params))
        mlflow.log_metrics(metrics)
        return str(run.info.run_id)
