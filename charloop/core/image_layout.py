"""Edge layouts: where a figure stands, its pose and the framing, with colour barely counting.

Shared by the evaluation's ``layout_diversity`` and the dataset's layout-varied selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageFilter


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


LAYOUT_SIZE = 16
"""Side of the edge thumbnail that layout diversity compares."""


def layout_features(images: list[Any]) -> np.ndarray:
    """Unit vectors of each image's edge layout: grey levels at 64x64, their edges, pooled
    to 16x16 and mean-centred. Colour (what an identity mostly is) barely shows; where the
    figure stands, its pose and the framing do."""
    rows = []
    for image in images:
        edges = (
            image.convert("L")
            .resize((64, 64), Image.Resampling.LANCZOS)
            .filter(ImageFilter.FIND_EDGES)
        )
        pooled = np.asarray(
            edges.resize((LAYOUT_SIZE,) * 2, Image.Resampling.BOX), dtype=np.float64
        )
        centred = pooled.ravel() - pooled.mean()
        rows.append(_unit(centred))
    return np.array(rows)
