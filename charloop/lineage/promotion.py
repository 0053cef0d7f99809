"""Promotion: gates a version must pass, alias moves, audit tags, rollback.

Aliases: fresh iterations get ``candidate``; an approved version gets ``production`` and
the version it replaces gets ``previous``. Every move writes audit tags on the versions
(who, when, why), so the registry is the audit trail.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from charloop.core.errors import Refused
from charloop.lineage import audit
from charloop.lineage.adapter_files import adapter_file_problems
from charloop.lineage.chain import LineageError, LineageStep, UnknownVersion, chain, missing_tags
from charloop.lineage.registry import local_artifact
from charloop.params.promote import PromoteParams
from charloop.stages.evaluate.convergence import collapse, round_metric
from charloop.stages.layout import ADAPTER_FILE_TAGS

logger = logging.getLogger(__name__)

PRODUCTION = "production"
PREVIOUS = "previous"


@dataclass(frozen=True)
class Gate:
    """One promotion check and its outcome, in words a reviewer can act on."""

    name: str
    passed: bool
    detail: str


class PromotionRefused(Refused, RuntimeError):
    """A gate failed (or approval was denied); nothing in the registry changed."""

    def __init__(self, model: str, version: str, failed: list[Gate]) -> None:
        self.failed = failed
        lines = "\n".join(f"  - {g.name}: {g.detail}" for g in failed)
        super().__init__(f"promotion of {model} v{version} refused:\n{lines}")


def metric_gates(
    candidate: dict[str, float],
    production: dict[str, float] | None,
    rules: PromoteParams,
    parent: dict[str, float] | None = None,
) -> list[Gate]:
    """Minimums, maximums and the allowed regression against production, per metric, and
    no collapse: against production, else (a first promotion) against the version's
    parent, so a round that bought identity with variety is never promoted unnoticed."""
    gates = [
        _bound_gate("min", metric, candidate.get(metric), bound)
        for metric, bound in sorted(rules.min_metrics.items())
    ]
    gates += [
        _bound_gate("max", metric, candidate.get(metric), bound)
        for metric, bound in sorted(rules.max_metrics.items())
    ]
    if production is not None:
        for metric, margin in sorted(rules.max_regression.items()):
            if metric not in production or metric not in candidate:
                continue
            drop = production[metric] - candidate[metric]
            ok = drop <= margin
            detail = (
                f"{metric} {candidate[metric]:.4f} vs production {production[metric]:.4f}: "
                f"{'down' if drop > 0 else 'up'} {abs(drop):.4f} (allowed drop {margin})"
            )
            gates.append(Gate(f"no regression {metric}", ok, detail))
    against, which = (production, "production") if production is not None else (parent, "parent")
    if against is not None:
        why = collapse(against, candidate, round_metric("auto", candidate))
        detail = f"vs {which}: " + (why or "the gain is not bought with seed variety")
        gates.append(Gate("no collapse", why is None, detail))
    return gates


def _bound_gate(kind: str, metric: str, value: float | None, bound: float) -> Gate:
    """A 'min' or 'max' gate on one metric, saying by how much it misses."""
    name = f"{kind} {metric}"
    if value is None:
        return Gate(name, False, f"{metric} missing")
    if kind == "min":
        ok, word, miss = value >= bound, (">=" if value >= bound else "<"), bound - value
        gap = f"(short by {miss:.4f})"
    else:
        ok, word, miss = value <= bound, ("<=" if value <= bound else ">"), value - bound
        gap = f"(over by {miss:.4f})"
    detail = f"{metric} {value:.4f} {word} {kind} {bound}" + ("" if ok else f" {gap}")
    return Gate(name, ok, detail)


def lineage_gate(client: Any, name: str, version: Any) -> tuple[Gate, list[LineageStep]]:
    """Complete when every step back to iteration 1 exists and carries every lineage tag."""
    try:
        steps = chain(client, name, version)
    except LineageError as exc:
        return Gate("lineage complete", False, str(exc)), []
    gaps = {s.version: missing_tags(s) for s in steps if missing_tags(s)}
    if gaps:
        return Gate("lineage complete", False, f"versions missing tags: {gaps}"), steps
    return Gate("lineage complete", True, f"{len(steps)} version(s) back to the base"), steps


def download_adapter(
    client: Any, version: Any, dest: Path, artifact_root: str | None = None
) -> Path:
    """Fetch a version's adapter folder from the artifact store into ``dest``
    (``artifact_root``: the project's, where a moved project's artifacts are; see
    ``local_artifact``)."""
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        artifact_uri=local_artifact(version.source, artifact_root),
        dst_path=str(dest),
        tracking_uri=client.tracking_uri,
    )
    return Path(path)


class AdapterMismatch(Refused):
    """The stored adapter files no longer hash to what was registered (exit 3)."""

    def __init__(self, version: Any, problems: list[str]):
        self.problems = problems
        super().__init__(f"v{version.version}: " + "; ".join(problems))


@contextmanager
def verified_adapter(client: Any, version: Any, artifact_root: str | None = None) -> Iterator[Path]:
    """The version's adapter folder, downloaded into a temporary folder and checked against
    the sha256 of every file recorded at registration; the folder is removed on exit.

    Each caller downloads its own copy, so no local path travels between tasks (workers of
    a pool do not share a disk) and what is exported is what was checked just before.

    Raises:
        AdapterMismatch: a stored file is missing or differs from the registered hash.
    """
    with tempfile.TemporaryDirectory(prefix="charloop-adapter-") as scratch:
        folder = download_adapter(client, version, Path(scratch), artifact_root)
        if problems := adapter_file_problems(folder, dict(version.tags)):
            raise AdapterMismatch(version, problems)
        yield folder


def adapter_gate(client: Any, version: Any, artifact_root: str | None = None) -> Gate:
    """Every stored adapter file must hash to the sha256 recorded at registration."""
    try:
        with verified_adapter(client, version, artifact_root):
            pass
    except AdapterMismatch as exc:
        return Gate("adapter hash", False, "; ".join(exc.problems))
    except Exception as exc:
        return Gate("adapter hash", False, f"adapter not retrievable: {exc}")
    checked = [t for t in ADAPTER_FILE_TAGS.values() if t in version.tags]
    return Gate("adapter hash", True, f"{', '.join(checked)} match")


def production_version(client: Any, name: str) -> Any | None:
    """The version aliased ``production``, or None."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except Exception:
        return None


def superseded_version(client: Any, name: str) -> str | None:
    """The version a retrain supersedes: production, else the newest (None: no version)."""
    from mlflow.exceptions import MlflowException

    if (current := production_version(client, name)) is not None:
        return str(current.version)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return max((str(v.version) for v in versions), key=int, default=None)


def move_to_production(
    client: Any, name: str, version: str, approver: str, reason: str
) -> str | None:
    """Alias ``version`` as production (the replaced one becomes ``previous``) and audit it.

    Returns:
        The version that was production before, or None.
    """
    current = production_version(client, name)
    before = str(current.version) if current is not None else None
    if before is not None and before != version:
        client.set_registered_model_alias(name, PREVIOUS, before)
        client.set_model_version_tag(name, before, "demoted_at", _now())
    client.set_registered_model_alias(name, PRODUCTION, version)
    _clear_stale(client, name, version)
    for key, value in {
        "approved_by": approver,
        "approved_at": _now(),
        "promotion_reason": reason,
    }.items():  # the current approval; every earlier one stays in the audit log
        client.set_model_version_tag(name, version, key, value)
    audit.record(client, name, "promoted", version, approver, reason, f"previous: {before}")
    logger.info("registry: %s v%s is production (was %s)", name, version, before)
    return before


def _clear_stale(client: Any, name: str, version: str) -> None:
    """Drop demotion marks from a version that is production again (history: the audit)."""
    tags = client.get_model_version(name, version).tags
    for key in ("demoted_at", "rolled_back_at"):
        if key in tags:
            client.delete_model_version_tag(name, version, key)


def rollback(client: Any, name: str, approver: str, reason: str) -> tuple[str, str]:
    """Swap ``production`` and ``previous``; returns (restored, demoted) versions.

    Raises:
        LineageError: there is no ``previous`` version to restore.
    """
    try:
        client.get_registered_model(name)
    except Exception as exc:
        raise UnknownVersion(f"no registered model {name!r} ({exc})") from None
    try:
        previous = client.get_model_version_by_alias(name, PREVIOUS)
    except Exception:
        current = production_version(client, name)
        version = str(current.version) if current is not None else ""
        detail = f"no '{PREVIOUS}' version to roll back to"
        audit.record(client, name, "rollback-refused", version, approver, reason, detail)
        raise LineageError(f"{name} has no '{PREVIOUS}' version to roll back to") from None
    current = production_version(client, name)
    restored = str(previous.version)
    client.set_registered_model_alias(name, PRODUCTION, restored)
    _clear_stale(client, name, restored)
    demoted = str(current.version) if current is not None else ""
    if demoted:
        client.set_registered_model_alias(name, PREVIOUS, demoted)
        client.set_model_version_tag(name, demoted, "rolled_back_at", _now())
    for key, value in {
        "restored_by": approver,
        "restored_at": _now(),
        "rollback_reason": reason,
    }.items():
        client.set_model_version_tag(name, restored, key, value)
    audit.record(client, name, "rolled-back", restored, approver, reason, f"demoted: {demoted}")
    return restored, demoted


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
