"""Lineage: walk a LoRA version back to the base model through its registry tags.

A version is named ``MODEL@alias`` or ``MODEL:version`` (``MODEL`` alone means the
newest version). Each step of the chain carries the dataset hash and size, the metrics
of the iteration's run, and the params that changed since the previous step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from charloop.core.errors import BadInput, Refused

REQUIRED_TAGS = (
    "dataset_hash",
    "dataset_sha256",
    "adapter_sha256",
    "params_hash",
    "base_model",
    "git_commit",
    "iteration",
    "parent_version",
)
_SPEC = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[\w-]+)|:(?P<version>\d+))?$"
)


class LineageError(Refused, ValueError):
    """A version spec that names nothing, or a broken chain."""


class UnknownVersion(BadInput, LineageError):
    """A spec that is malformed or names no registered model, alias or version."""


@dataclass(frozen=True)
class VersionRef:
    """A parsed ``MODEL@alias`` / ``MODEL:version`` / ``MODEL`` spec."""

    name: str
    alias: str | None = None
    version: str | None = None


@dataclass
class LineageStep:
    """One version in a chain, with what a reviewer needs to judge it."""

    version: str
    iteration: int
    tags: dict[str, str]
    metrics: dict[str, float]
    params: dict[str, str]
    aliases: list[str] = field(default_factory=list)
    changed_params: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        parent = self.tags.get("parent_version", "none")
        return None if parent == "none" else parent


def parse_spec(spec: str) -> VersionRef:
    """Parse a version spec.

    Raises:
        LineageError: the spec is not ``MODEL``, ``MODEL@alias`` or ``MODEL:version``.
    """
    match = _SPEC.match(spec.strip())
    if not match:
        raise UnknownVersion(
            f"bad model spec {spec!r}: use MODEL, MODEL@alias or MODEL:version (a model "
            "name is letters, digits, '.', '_', '-')"
        )
    return VersionRef(match["name"], match["alias"], match["version"])


def resolve_version(client: Any, ref: VersionRef) -> Any:
    """The MLflow ModelVersion a spec names.

    Raises:
        LineageError: no such model, alias or version.
    """
    from mlflow.exceptions import MlflowException

    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        if ref.version:
            return client.get_model_version(ref.name, ref.version)
        versions = client.search_model_versions(f"name = '{ref.name}'")
    except MlflowException as exc:
        raise UnknownVersion(f"{_describe(ref)} not found in the registry: {exc.message}") from None
    if not versions:
        raise UnknownVersion(f"model {ref.name!r} not found in the registry (no versions)")
    return max(versions, key=lambda v: int(v.version))


def param_changes(
    before: dict[str, str], after: dict[str, str]
) -> dict[str, tuple[str | None, str | None]]:
    """Params whose value differs between two runs: ``{name: (before, after)}``."""
    keys = sorted(set(before) | set(after))
    return {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}


def chain(client: Any, name: str, version: Any) -> list[LineageStep]:
    """The version and its ancestors, newest first, with params changed per step.

    Raises:
        LineageError: a parent version is missing (the chain is broken).
    """
    steps: list[LineageStep] = []
    seen: set[str] = set()
    current: Any | None = version
    while current is not None:
        if current.version in seen:
            raise LineageError(f"lineage of {name} loops at version {current.version}")
        seen.add(current.version)
        steps.append(_step(client, current))
        parent = steps[-1].parent
        if parent is None:
            break
        try:
            current = client.get_model_version(name, parent)
        except Exception:
            raise LineageError(
                f"{name} v{steps[-1].version} names parent v{parent}, which is not registered"
            ) from None
    for newer, older in pairwise(steps):
        newer.changed_params = param_changes(older.params, newer.params)
    return steps


def missing_tags(step: LineageStep) -> list[str]:
    """Required lineage tags the version lacks."""
    return [tag for tag in REQUIRED_TAGS if not step.tags.get(tag)]


def _step(client: Any, version: Any) -> LineageStep:
    run = client.get_run(version.run_id) if version.run_id else None
    return LineageStep(
        version=str(version.version),
        iteration=int(version.tags.get("iteration", 0)),
        tags=dict(version.tags),
        metrics=dict(run.data.metrics) if run else {},
        params=dict(run.data.params) if run else {},
        aliases=list(getattr(version, "aliases", []) or []),
    )


def _describe(ref: VersionRef) -> str:
    if ref.alias:
        return f"{ref.name}@{ref.alias}"
    return f"{ref.name}:{ref.version}" if ref.version else ref.name
