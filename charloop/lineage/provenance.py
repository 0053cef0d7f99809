"""Provenance: the lineage facts an adapter carries, built in one place.

The Prefect flow, ``charloop stage train`` (what ``dvc.yaml`` runs) and ``dvc repro`` all
call :func:`build_provenance`, so an adapter has the same keys in its safetensors headers
(``charloop.<key>``), its ``provenance.json`` and its registry tags whichever way it was
made. Values are strings (safetensors metadata holds strings only); "none" marks a root.
"""

from __future__ import annotations

import json
from pathlib import Path

from charloop.params.project import Project, params_hash
from charloop.stages.layout import PROVENANCE_FILE, PROVENANCE_PREFIX
from charloop.stages.results import Adapter, AdapterRef, Dataset

PROVENANCE_KEYS = (
    "iteration",
    "character",
    "trigger",
    "base_model",
    "base_model_family",
    "dataset_sha256",
    "parent_adapter_sha256",
    "parent_version",
    "params_hash",
)
"""Every key of an adapter's provenance, in header order."""


def build_provenance(
    project: Project,
    iteration: int,
    dataset: Dataset,
    parent: AdapterRef | None = None,
    parent_version: str | None = None,
) -> dict[str, str]:
    """The provenance of the adapter trained on ``dataset`` in ``iteration``.

    Args:
        project: Validated params and root.
        iteration: 1-based iteration number.
        dataset: The caption stage's result the adapter is trained on.
        parent: The previous iteration's adapter (its LoRA rendered the data), or None.
        parent_version: The registry version of ``parent``, when it is registered.
    """
    params = project.params
    facts = {
        "iteration": str(iteration),
        "character": params.subject,
        "trigger": params.trigger_label,
        "base_model": params.base_model.path,
        "base_model_family": base_family(project),
        "dataset_sha256": dataset.digest,
        "parent_adapter_sha256": parent.sha256 if parent else "none",
        "parent_version": parent_version or "none",
        "params_hash": params_hash(params),
    }
    assert tuple(facts) == PROVENANCE_KEYS  # one list of keys, documented above
    return facts


def base_family(project: Project) -> str:
    """The base model's family name ('sd15', 'sdxl'), resolved as the stages resolve it."""
    from charloop.families.detect import resolve_base

    spec = project.params.base_model
    return resolve_base(spec, project.model_ref(spec.path)).family.name


def header_keys(provenance: dict[str, str]) -> dict[str, str]:
    """The provenance as safetensors header entries (``charloop.<key>``)."""
    return {PROVENANCE_PREFIX + k: v for k, v in provenance.items()}


def read_provenance(adapter: Adapter) -> dict[str, str]:
    """The provenance an adapter folder was written with (its ``provenance.json``).

    Raises:
        FileNotFoundError: the folder has no provenance file.
    """
    data = json.loads((Path(adapter.path) / PROVENANCE_FILE).read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}
