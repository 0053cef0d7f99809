"""Loading params.yaml: parse, validate, and explain every error by field path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from charloop.core.errors import BadInput
from charloop.core.hashing import sha256_json
from charloop.params.schema import Params
from charloop.params.train import MemoryParams

RESULT_SECTIONS = (
    "character",
    "cast",
    "contexts",
    "base_model",
    "generate",
    "traits",
    "filter",
    "caption",
    "train",
    "evaluate",
)
"""Sections that change what the loop produces: every field in them is in the lineage hash,
except the :data:`PRESENTATION_FIELDS`. An optional section left out (``cast: null``, or
``character`` in a cast) does not count, so adding an optional section to the schema
never moves an existing project to a new branch."""

WORKFLOW_SECTIONS = ("review", "loop", "registry", "dvc", "promote", "schedule", "scale")
"""Sections that change how and where the loop runs, not what an iteration produces: who
reviews (each decision is recorded per image), how many iterations, where results are
stored, promotion gates, schedules and scale-out. Not in the lineage hash."""

PRESENTATION_FIELDS = ("train.cache_dir", "train.checkpoint_every")
"""Fields inside result sections that change no result (where caches and checkpoints go):
set to their defaults before hashing, so changing them keeps the branch."""

MEMORY_PLACEMENT_FIELDS = ("offload_encoders", "pipeline_offload", "budget_gb")
"""``train.memory`` fields that move tensors between devices or bound the plan without
changing a number: left out of the lineage hash, like :data:`PRESENTATION_FIELDS`."""

LATER_FIELDS: dict[str, Any] = {
    "train.trigger_embedding.pull": 0.0,
    "train.trigger_embedding.free_vectors": 0,
    "train.augment": {"variants": 0, "zoom": 1.25, "flip": False},
    "train.candidates": 1,
    "train.validation.hold_out_references": True,
}
"""Fields added after projects were written, with the value that behaves as before: at
that value a field is left out of the lineage hash, so an upgrade keeps every existing
branch (and its finished iterations)."""

LATER_RULE_FIELDS: dict[str, dict[str, Any]] = {"traits": {"keep_best": None}}
"""The same for filter discriminator fields, by rule type."""


class ParamsError(BadInput):
    """params.yaml could not be used; ``problems`` lists one line per error."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Project:
    """Validated params plus the folder that relative paths are resolved against."""

    params: Params
    root: Path
    params_file: Path

    def resolve(self, path: str) -> Path:
        """Resolve a params path (absolute, or relative to the params file's folder)."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.root / candidate).resolve()

    def model_ref(self, path: str) -> str:
        """A local folder resolved to an absolute path, or the hub id unchanged."""
        local = self.resolve(path)
        return str(local) if local.exists() or _looks_local(path) else path

    def portable(self, path: str | Path) -> str:
        """``path`` as recorded in fingerprints and manifests: relative to the project
        (the params file's folder) when inside it, so a copied or moved project keeps its
        fingerprints and reuses every finished stage; otherwise unchanged."""
        candidate = Path(path)
        if candidate.is_absolute() and candidate.is_relative_to(self.root):
            return candidate.relative_to(self.root).as_posix() or "."
        return str(path)

    def portable_ref(self, path: str) -> str:
        """:meth:`model_ref`, recorded portably (see :meth:`portable`)."""
        return self.portable(self.model_ref(path))

    @property
    def character_dir(self) -> Path:
        """Folder of every lineage branch of this character (and its loop lock)."""
        return self.resolve(self.params.loop.workdir) / self.params.subject

    @property
    def branch(self) -> str:
        """Lineage branch: changing any result-affecting param starts a new one, so data
        made with different params is never mixed in one iteration folder."""
        return f"params-{params_hash(self.params)[:8]}"

    @property
    def workdir(self) -> Path:
        """Folder that holds this lineage branch's iterations."""
        return self.character_dir / self.branch

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI with a relative sqlite path made absolute."""
        uri = (
            self.params.registry.tracking_uri
            or os.environ.get("CHARLOOP_TRACKING_URI")
            or "sqlite:///.charloop/mlflow.db"
        )
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + str(self.resolve(uri[len(prefix) :]))
        return uri

    @property
    def artifact_location(self) -> str:
        """Artifact store URI with a relative folder made absolute."""
        location = self.params.registry.artifact_location
        if "://" in location or location.startswith("mlflow-artifacts:"):
            return location
        return self.resolve(location).as_uri()


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") != 1


def params_hash(params: Params) -> str:
    """Digest of the fields that determine results (:data:`RESULT_SECTIONS`, without the
    :data:`PRESENTATION_FIELDS`)."""
    data = params.model_dump(mode="json")
    for name in PRESENTATION_FIELDS:
        section, field = name.split(".")
        data[section][field] = type(getattr(params, section)).model_fields[field].default
    # train.memory counts only when it can change the LoRA (quantized weights, 8-bit
    # states, auto), so projects written before it existed keep their branch.
    memory = {k: v for k, v in data["train"].pop("memory").items()
              if k not in MEMORY_PLACEMENT_FIELDS}  # fmt: skip
    defaults = MemoryParams().model_dump(mode="json")
    if any(memory[k] != defaults[k] for k in memory):
        data["train"]["memory"] = memory
    _drop_later_fields(data)
    return sha256_json({k: data[k] for k in RESULT_SECTIONS if data[k] is not None})[:16]


def _drop_later_fields(data: dict[str, Any]) -> None:
    """Remove from ``data`` (a params dump) every :data:`LATER_FIELDS` and
    :data:`LATER_RULE_FIELDS` field that holds its behaves-as-before value."""
    for name, before in LATER_FIELDS.items():
        *parents, last = name.split(".")
        node = data
        for key in parents:
            node = node[key]
        if node.get(last) == before:
            del node[last]
    for rule in data["filter"]["discriminators"]:
        for key, before in LATER_RULE_FIELDS.get(rule["type"], {}).items():
            if rule.get(key) == before:
                del rule[key]


def load_project(path: str | Path = "params.yaml") -> Project:
    """Read and validate a params file.

    Raises:
        ParamsError: the file is missing, is not YAML, or fails the schema; every
            problem is listed with its field path and what is allowed.
    """
    params_file = Path(path).resolve()
    data = _read_yaml(params_file)
    try:
        params = Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(str(path), format_errors(exc)) from None
    return Project(params=params, root=params_file.parent, params_file=params_file)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(str(path), ["file not found; pass --params PATH to a params.yaml"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(str(path), [f"not valid YAML{where}: {exc}"]) from None
    if not isinstance(data, dict):
        raise ParamsError(str(path), ["top level must be a mapping of sections"])
    return data


def format_errors(exc: ValidationError, model: type[BaseModel] = Params) -> list[str]:
    """One line per validation error: dotted field path, the problem, and what is allowed."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        field = ".".join(loc) or "<root>"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, error["loc"][:-1])
            message = "unknown field" + (
                f"; allowed fields: {', '.join(allowed)}" if allowed else ""
            )
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{field}: {message}")
    return lines


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model(s) reached by walking ``loc`` from ``model``."""
    candidates: list[Any] = [model]
    for part in loc:
        if isinstance(part, int):  # list index
            continue
        reached: list[Any] = []
        for candidate in candidates:
            fields = candidate.model_fields
            if part in fields:
                reached.extend(_models_in(fields[part].annotation))
            elif "type" in fields and fields["type"].default == part:
                reached.append(candidate)  # discriminated-union tag level, e.g. 'clip'
        if not reached:
            return []
        candidates = reached
    return sorted({name for candidate in candidates for name in candidate.model_fields})


def _models_in(annotation: Any) -> list[Any]:
    """Pydantic models inside an annotation such as ``Model``, ``list[Model]`` or a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]
