"""What each stage hands to the next: one typed, frozen result per stage.

A result names the stage's sealed folder (``path``), the folder's content digest and the
fingerprint it was made under, plus the stage's facts as typed fields. Stages, tasks, the
flow and publishing read these fields; nothing reads another stage's facts by a string key.
The marker file of a sealed folder stores a result as ``{name, path, digest, fingerprint,
summary: {facts}}`` (:func:`to_record` / :func:`from_record`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter folder and the sha256 of its weights file."""

    path: str
    sha256: str


@dataclass(frozen=True)
class StageResult:
    """A sealed stage folder: where it is, its content digest, its fingerprint."""

    stage: ClassVar[str] = ""
    path: str
    digest: str
    fingerprint: str

    def facts(self) -> dict[str, Any]:
        """The stage-specific fields, JSON-able (what the marker stores as ``summary``)."""
        skip = {"path", "digest", "fingerprint"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class Generated(StageResult):
    """The generate stage: rendered images and their ``manifest.jsonl``."""

    stage: ClassVar[str] = "generate"
    images: int
    shards: int = 1
    shard_pids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class GeneratedShard(StageResult):
    """One shard of a fanned-out generate stage (scratch, merged into :class:`Generated`)."""

    stage: ClassVar[str] = "generate-shard"
    images: int
    shard: int
    pid: int


@dataclass(frozen=True)
class Filtered(StageResult):
    """The filter stage: per-image decisions (``report.jsonl``) and the kept rows."""

    stage: ClassVar[str] = "filter"
    candidates: int
    kept: int
    references_used: int
    references_skipped: dict[str, str] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    """How the identity discriminator anchored (references or a cohesive cluster)."""
    traits: dict[str, Any] | None = None
    """Per character: declared and discovered traits, and their pass rates by the trait
    scorer on the candidates and on the kept set (the dataset's own consistency)."""

    @property
    def kept_traits_all(self) -> float | None:
        """Share of the kept images showing every trait (mean over characters); None
        without trait checks."""
        if not self.traits:
            return None
        return sum(t["kept"]["all"] for t in self.traits.values()) / len(self.traits)


@dataclass(frozen=True)
class Reviewed(StageResult):
    """The review stage: the final kept rows and who decided them."""

    stage: ClassVar[str] = "review"
    kept: int
    overridden: int
    via: str
    """automatic | timeout | cli | prefect | web."""
    reviewer: str | None = None
    comment: str = ""


@dataclass(frozen=True)
class Dataset(StageResult):
    """The caption stage: the captioned, kohya-style training dataset."""

    stage: ClassVar[str] = "caption"
    images: int
    references: int
    captioner: str
    trigger_common_words: list[str] = field(default_factory=list)
    held_out_words_cut: int = 0
    """Held-out words cut from the captioning model's descriptions (see scenes.heldout)."""
    sources: dict[str, int] = field(default_factory=dict)
    """Generated images per iteration that made them (``caption.dataset: accumulate``
    draws on earlier iterations of the round)."""


@dataclass(frozen=True)
class Adapter(StageResult):
    """The train stage: the LoRA (diffusers and kohya files) and its training facts."""

    stage: ClassVar[str] = "train"
    weights_sha256: str
    kohya_sha256: str
    steps: int
    final_loss: float
    images: int
    processes: int
    validation_loss: float | None = None
    validation_images: int = 0
    resumed_from: int | None = None
    members: dict[str, dict[str, Any]] | None = None
    """Per-character training facts of a ``cast.lora: per_character`` adapter."""
    adapter_weights: dict[str, float] | None = None

    @property
    def ref(self) -> AdapterRef:
        """The adapter as the next iteration's generate stage uses it."""
        return AdapterRef(self.path, self.weights_sha256)


@dataclass(frozen=True)
class EvalShard(StageResult):
    """One shard of the evaluation's renders (scratch, merged into :class:`Evaluation`)."""

    stage: ClassVar[str] = "evaluate-shard"
    jobs: list[str]
    pid: int


@dataclass(frozen=True)
class Evaluation(StageResult):
    """The evaluate stage: ``metrics.json``, renders and a contact sheet."""

    stage: ClassVar[str] = "evaluate"
    metrics: dict[str, float]
    """The flat, finite headline metrics (what convergence compares and MLflow logs)."""


@dataclass(frozen=True)
class IterationResults:
    """Every stage result of one loop iteration: what publishing versions and registers."""

    generated: Generated
    filtered: Filtered
    dataset: Dataset
    adapter: Adapter
    evaluation: Evaluation
    reviewed: Reviewed | None = None

    def all(self) -> list[StageResult]:
        """The results in data-flow order (absent review left out)."""
        ordered = [self.generated, self.filtered, self.reviewed, self.dataset]
        return [r for r in [*ordered, self.adapter, self.evaluation] if r is not None]


RESULT_TYPES: dict[str, type[StageResult]] = {
    cls.stage: cls
    for cls in (
        Generated,
        GeneratedShard,
        Filtered,
        Reviewed,
        Dataset,
        Adapter,
        EvalShard,
        Evaluation,
    )
}


def to_record(result: StageResult) -> dict[str, Any]:
    """The marker-file form of a result."""
    return {
        "name": result.stage,
        "path": result.path,
        "digest": result.digest,
        "fingerprint": result.fingerprint,
        "summary": result.facts(),
    }


def from_record(record: dict[str, Any]) -> StageResult:
    """A typed result from its marker-file form.

    Raises:
        ValueError: the record names no known stage or does not fit its result type.
    """
    if not isinstance(record, dict):
        raise ValueError("a stage marker must hold a JSON object")
    cls = RESULT_TYPES.get(str(record.get("name")))
    if cls is None:
        raise ValueError(f"unknown stage {record.get('name')!r} in a stage marker")
    summary = record.get("summary") or {}
    allowed = {f.name for f in fields(cls)}
    if not isinstance(summary, dict) or set(summary) - allowed:
        raise ValueError(f"stage marker of {cls.stage!r} has unexpected facts")
    try:
        return cls(
            path=record["path"],
            digest=record["digest"],
            fingerprint=record["fingerprint"],
            **summary,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"stage marker of {cls.stage!r} is incomplete: {exc}") from None
