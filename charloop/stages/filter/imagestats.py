"""Pure image statistics used by the filter: luminance, contrast, sharpness, perceptual hash."""

from __future__ import annotations

import numpy as np
from PIL import Image


def luminance(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as a float32 array (H, W)."""
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: a standard blur score (higher is sharper)."""
    lap = (
        -4 * gray[1:-1, 1:-1] + gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
    )
    return float(lap.var())


def dhash(image: Image.Image, size: int = 8) -> int:
    """64-bit difference hash: robust to small edits, so near-duplicates have close hashes."""
    small = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS))
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def quality_scores(image: Image.Image) -> dict[str, float]:
    """Exposure (mean luminance), contrast (its std) and sharpness (Laplacian variance)."""
    gray = luminance(image)
    return {
        "exposure": float(gray.mean()),
        "contrast": float(gray.std()),
        "sharpness": laplacian_variance(gray),
    }
