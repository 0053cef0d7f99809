"""Joint cast scenes cut into one vertical strip per character, and strips matched to
characters (by layout, or by the assignment with the highest total similarity)."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image


def strips(image: Image.Image, count: int) -> list[Image.Image]:
    """``count`` equal vertical strips of ``image``, left to right."""
    width, height = image.size
    edges = [round(i * width / count) for i in range(count + 1)]
    return [image.crop((edges[i], 0, edges[i + 1], height)) for i in range(count)]


def assign_strips(similarity: np.ndarray, laid_out: bool) -> list[int]:
    """Which character (column) each strip (row) shows.

    Args:
        similarity: strips x characters cosine matrix (characters in scene order).
        laid_out: Strip ``i`` is character ``i`` by construction (side-by-side layout).
    """
    count = similarity.shape[0]
    if laid_out:
        return list(range(count))
    best = max(
        itertools.permutations(range(count)),
        key=lambda perm: sum(similarity[i, perm[i]] for i in range(count)),
    )
    return list(best)
