"""Where an iteration's data lives: numbered folders read in the order data flows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
    def dataset(self) -> Path:
        return self.root / "03_dataset"

    @property
    def adapter(self) -> Path:
        return self.root / "04_adapter"

    @property
    def evaluation(self) -> Path:
        return self.root / "05_evaluation"

    @property
    def versioned(self) -> list[Path]:
        """Every folder DVC tracks for this iteration."""
        return [self.generated, self.filtered, self.dataset, self.adapter, self.evaluation]
