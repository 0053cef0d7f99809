"""Fail before the work: every check that needs no image, run before the first image.

A loop that dies at publish, after every image was generated and the LoRA trained, has
wasted the run; each check here would have failed there. They open the registry for
writing, check the DVC remote and the work folder, resolve the base model and every other
model the params name (local folder or hub id), check the declared family and prediction
type against the base's config, price the training run's memory plan against the device or
``train.memory.budget_gb`` (:mod:`charloop.models.memory_budget`), read the reference
folders and check that no evaluation context reaches a training caption. Each
failure is a :class:`~charloop.core.errors.BadInput` naming the field and the fix.
(``filter.min_kept`` against what an iteration can produce is checked by the schema.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.errors import BadInput
from charloop.families.detect import resolve_base
from charloop.families.single_file import base_model_ref, is_single_file
from charloop.lineage import versioning
from charloop.models.memory_budget import MemoryReport, check_memory
from charloop.models.pipeline import resolve_device
from charloop.models.trigger_embedding import check_family
from charloop.params.caption import VlmCaptioner
from charloop.params.filter import ClipEmbedder, Dinov2Embedder, WorldEmbedder
from charloop.params.generate import ControlNetParams, IPAdapterParams
from charloop.params.project import Project
from charloop.params.schema import BaseModelSpec
from charloop.params.traits import ClipTraitScorer, WorldTraitScorer
from charloop.scenes.references import load_references
from charloop.scenes.traits import check_traits
from charloop.stages.caption.heldout import check_held_out
from charloop.stages.train.trigger_embedding import starting_text

logger = logging.getLogger(__name__)

_MODEL_FIELDS: dict[type, str] = {
    BaseModelSpec: "path",
    ClipEmbedder: "path",
    Dinov2Embedder: "path",
    WorldEmbedder: "path",
    WorldTraitScorer: "path",
    ClipTraitScorer: "path",
    VlmCaptioner: "path",
    ControlNetParams: "model",
    IPAdapterParams: "model",
}


class ModelNotFound(BadInput, FileNotFoundError):
    """A model the params name is neither a usable local folder nor a reachable hub id."""


class NotWritable(BadInput, PermissionError):
    """The work folder, the registry or the DVC remote cannot be written."""


def model_fields(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(dotted field, model path or hub id)`` in a params tree."""
    for kind, attr in _MODEL_FIELDS.items():
        if isinstance(value, kind):
            yield f"{where}.{attr}".lstrip("."), getattr(value, attr)
    fields = type(value).model_fields if hasattr(type(value), "model_fields") else {}
    for name in fields:
        child = getattr(value, name)
        for index, item in enumerate(child if isinstance(child, list | tuple) else [child]):
            suffix = f"[{index}]" if isinstance(child, list | tuple) else ""
            if hasattr(type(item), "model_fields"):
                yield from model_fields(item, f"{where}.{name}{suffix}".lstrip("."))


def check_model(project: Project, field: str, path: str, revision: str | None = None) -> None:
    """A local folder must exist (a base model must hold ``model_index.json``); a hub id
    must be in the local Hugging Face cache or reachable on the hub.

    Raises:
        ModelNotFound: with the field, what was looked for and the fix.
    """
    ref = project.model_ref(path)
    if Path(ref).is_absolute():
        if (
            field == "base_model.path"
            and not (Path(ref) / "model_index.json").is_file()
            and not is_single_file(ref)
        ):
            raise ModelNotFound(
                f"base_model.path {path!r} resolves to {ref}, which holds no diffusers "
                "pipeline (model_index.json) and is no .safetensors/.ckpt checkpoint; fix "
                "the path or use a hub id"
            )
        if not Path(ref).exists():
            raise ModelNotFound(f"{field} {path!r} resolves to {ref}, which does not exist")
        return
    _check_hub_id(field, ref, revision)


def _check_hub_id(field: str, repo_id: str, revision: str | None) -> None:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snapshot_download(repo_id, revision=revision, local_files_only=True)
        return  # cached: loads offline
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelNotFound(
            f"{field} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
            "is set; download it first or point the field at a local folder"
        )
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=15)
    except RepositoryNotFoundError:
        raise ModelNotFound(
            f"{field} {repo_id!r} is not a model on the hub (or it is gated and no token is "
            "set); check the id, run `hf auth login`, or use a local folder"
        ) from None
    except Exception as exc:  # connection refused, DNS, timeouts, 429...
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelNotFound(
            f"{field} {repo_id!r} is not cached locally and the hub is unreachable ({first}); "
            "connect, set HF_ENDPOINT to a mirror, or use a local folder"
        ) from None


def check_writable(folder: Path, field: str) -> None:
    """``folder`` can be created and written (a file is written and removed)."""
    probe = folder / ".charloop-write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic.write_text(probe, "ok")
        probe.unlink()
    except OSError as exc:
        raise NotWritable(
            f"{field}: cannot write to {folder} ({exc}); choose a writable folder"
        ) from None


def check_registry(project: Project) -> None:
    """Open the tracking store and write to it (create the experiment when missing)."""
    from datetime import UTC, datetime

    from mlflow.tracking import MlflowClient

    from charloop.lineage.registry import ensure_experiment, init_store

    uri = project.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if db.exists() and not os.access(db, os.W_OK):
            raise NotWritable(
                f"registry.tracking_uri: {db} is read-only; fix its permissions or point "
                "tracking_uri at a writable database"
            )
    try:
        init_store(uri)
        exp = ensure_experiment(uri, project.params.experiment_name, project.artifact_location)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        MlflowClient(uri).set_experiment_tag(exp, "charloop.preflight_at", stamp)  # a write
    except Exception as exc:
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise NotWritable(
            f"registry.tracking_uri {uri}: cannot open the registry for writing ({first}); "
            "fix or move the database, or point tracking_uri at a running MLflow server"
        ) from None


def preflight(project: Project) -> MemoryReport:
    """Run every check (see the module docstring); the first failure is raised.

    Returns:
        The training run's memory plan and estimate (logged; the CLI prints it).

    Raises:
        ModelNotFound, EmbeddingUnsupported, NotWritable, NoUsableReferences, HeldOutLeak,
            MemoryBudgetExceeded: each a BadInput (exit 2).
    """
    params = project.params
    for field, path in model_fields(params):
        revision = params.base_model.revision if field == "base_model.path" else None
        check_model(project, field, path, revision)
    # The declared family and prediction type against the base's own config files.
    base_ref = base_model_ref(project)
    family = resolve_base(params.base_model, base_ref).family
    if params.generate.ip_adapter is not None and not family.ip_adapter:
        raise ModelNotFound(
            f"generate.ip_adapter: no IP-Adapter of the h94 format serves a {family.name} "
            "base; remove generate.ip_adapter (use references and the identity filter)"
        )
    if params.train.trigger_embedding.enabled:
        check_family(family.name)
    device = resolve_device(params.base_model.device)
    memory = check_memory(params, base_ref, family, device)  # before anything is written
    logger.info("%s", memory.line())
    # The checks that read input come before the first folder is created.
    for member in params.members:
        if member.references:
            load_references(project.resolve(member.references))
    check_held_out(project)  # evaluation contexts never reach the training captions
    if params.traits is not None:  # parseable, loadable, not contradicted by the references
        check_traits(project)
    if params.train.trigger_embedding.enabled:
        logger.info("trigger embedding: %r starts as %r", project.params.members[0].trigger,
                    starting_text(project))  # fmt: skip
    check_writable(project.character_dir, "loop.workdir")
    if params.dvc.enabled and params.dvc.remote and "://" not in params.dvc.remote:
        check_writable(Path(versioning.remote_url(project.root, params.dvc.remote)), "dvc.remote")
    check_registry(project)
    return memory
