"""Where an iteration's data lives: numbered folders read in the order data flows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from charloop.models.trigger_embedding import TRIGGER_EMBEDDING

ADAPTER_WEIGHTS = "pytorch_lora_weights.safetensors"
"""The diffusers-format LoRA file in an adapter folder (what ``load_lora_weights`` reads)."""

REFERENCE_ID_PREFIX = "ref-"
"""Dataset rows of reference images have ids ``ref-<character>-<file stem>``; generated
images' ids start with their iteration (``i001-...``)."""


def is_reference_id(row_id: str) -> bool:
    """Whether a dataset row is one of the character's reference images."""
    return row_id.startswith(REFERENCE_ID_PREFIX)


KOHYA_WEIGHTS = "lora_kohya.safetensors"
"""The same LoRA in kohya format (A1111/Forge, ComfyUI, InvokeAI, sd-scripts read it)."""

ADAPTER_FILE_TAGS = {
    ADAPTER_WEIGHTS: "adapter_sha256",
    KOHYA_WEIGHTS: "kohya_sha256",
    TRIGGER_EMBEDDING: "trigger_embedding_sha256",
}
"""Each shipped adapter file and the registry tag that holds its sha256."""

PROVENANCE_FILE = "provenance.json"
"""The adapter's lineage facts as JSON, beside the weights (also in their headers)."""

PROVENANCE_PREFIX = "charloop."
"""Prefix of the provenance keys in an adapter's safetensors headers."""

TRAIN_LOG = "train_log.json"
"""Loss, learning rate and validation loss per step, in an adapter folder."""

CANDIDATES = "candidates"
"""Folder of an iteration's candidate LoRAs (``train.candidates``); not DVC-tracked: the
chosen one is versioned as the iteration's ``05_adapter``."""

PUBLISHED = "_published.json"
"""In an iteration folder once it is registered: ``{"model", "version"}``."""


def published_version(iteration_root: Path) -> str | None:
    """The model version registered for an iteration folder, None if not registered."""
    marker = iteration_root / PUBLISHED
    if not marker.is_file():
        return None
    return str(json.loads(marker.read_text(encoding="utf-8"))["version"])


def shard_dir(out_dir: Path, shard: int) -> Path:
    """Scratch folder of one shard of a fanned-out stage (not versioned)."""
    return out_dir.parent / ".shards" / f"{out_dir.name}-{shard:02d}"


@dataclass(frozen=True)
class IterationPaths:
    """Folders of one iteration under ``<workdir>/<character>/iter-NNN/``."""

    root: Path

    @classmethod
    def of(cls, workdir: Path, iteration: int) -> IterationPaths:
        return cls(workdir / f"iter-{iteration:03d}")

    @property
    def generated(self) -> Path:
        return self.root / "01_generated"

    @property
    def filtered(self) -> Path:
        return self.root / "02_filtered"

    @property
    def reviewed(self) -> Path:
        return self.root / "03_reviewed"

    @property
    def dataset(self) -> Path:
        return self.root / "04_dataset"

    @property
    def adapter(self) -> Path:
        return self.root / "05_adapter"

    @property
    def evaluation(self) -> Path:
        return self.root / "06_evaluation"

    @property
    def review_desk(self) -> Path:
        """Where a person works on the review: the exported sheet and applied decisions.

        Not a stage folder: its files are inputs to the review stage, edited by hand.
        """
        return self.root / "review"

    def candidate(self, seed: int) -> IterationPaths:
        """The folders (``adapter``, ``evaluation``) of the LoRA trained with ``seed`` when
        ``train.candidates`` > 1; the chosen one is copied to this iteration's own."""
        return IterationPaths(self.root / CANDIDATES / f"seed-{seed}")

    @property
    def selection(self) -> Path:
        """Which candidate became the iteration's adapter, and every candidate's score."""
        return self.root / CANDIDATES / "selection.json"

    @property
    def reports(self) -> Path:
        """Reports drawn when the iteration is published (metrics-over-iterations plot).

        Not a stage folder and not DVC-tracked: redrawn from the metrics on every publish.
        """
        return self.root / "reports"

    @property
    def versioned(self) -> list[Path]:
        """Every folder DVC tracks for this iteration."""
        return [
            self.generated,
            self.filtered,
            self.reviewed,
            self.dataset,
            self.adapter,
            self.evaluation,
        ]
