"""Every embedded tiny model, built deterministically (``charloop build-tiny-models``)."""

from __future__ import annotations

from pathlib import Path

from charloop.models.tiny import build_tiny_clip, build_tiny_sd15, build_tiny_sdxl
from charloop.models.tiny_flux import build_tiny_flux


def build_all(models_dir: str | Path = "models", seed: int = 0) -> list[Path]:
    """Build every embedded default model under ``models_dir``."""
    models_dir = Path(models_dir)
    return [
        build_tiny_sd15(models_dir / "tiny-sd15", seed),
        build_tiny_sdxl(models_dir / "tiny-sdxl", seed),
        build_tiny_flux(models_dir / "tiny-flux", seed),
        build_tiny_clip(models_dir / "tiny-clip", seed),
    ]
