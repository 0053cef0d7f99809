"""Aspect-ratio buckets: sizes of about ``resolution`` squared pixels, one per aspect ratio.

Follows kohya sd-scripts' ``make_bucket_resolutions``: sides are multiples of ``step``,
the square bucket plus every (w, h) whose area fits ``resolution``², from the shortest
side allowed by ``max_ratio`` to the longest; an image goes to the bucket whose aspect
ratio is nearest its own, is scaled to cover it and centre-cropped. Batches are drawn
within one bucket, so every batch stacks into one tensor.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def bucket_sizes(resolution: int, step: int, max_ratio: float) -> list[tuple[int, int]]:
    """Bucket (height, width) sizes, square first, then by width."""
    area = resolution * resolution
    side = max(step, resolution // step * step)
    sizes = {(side, side)}
    width = step
    while width <= resolution * max_ratio:
        height = min(int(area // width // step * step), int(resolution * max_ratio) // step * step)
        if height >= step and max(width, height) / min(width, height) <= max_ratio + 1e-9:
            sizes |= {(height, width), (width, height)}
        width += step
    square = (side, side)
    return [square, *sorted(sizes - {square}, key=lambda s: (s[1], s[0]))]


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) a (width, height) image's."""
    width, height = size
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[1] / b[0]) - ratio), b != buckets[0]))


def bucket_batches(
    generator: torch.Generator, pool: list[int], buckets: list[int], size: int
) -> list[list[int]]:
    """One epoch of batches: ``pool`` shuffled, grouped by bucket (order kept within each),
    cut into batches of at most ``size``, the batches shuffled."""
    shuffled = [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
    groups: dict[int, list[int]] = {}
    for row in shuffled:
        groups.setdefault(buckets[row], []).append(row)
    batches = [
        rows[start : start + size]
        for _, rows in sorted(groups.items())
        for start in range(0, len(rows), size)
    ]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def next_batch(
    generator: torch.Generator,
    order: list[Any],
    size: int,
    pool: list[int],
    buckets: list[int] | None = None,
) -> list[int]:
    """Take the next ``size`` indices, reshuffling ``pool`` (one epoch's row indices,
    repeats included) deterministically when the epoch ends.

    With aspect-ratio ``buckets`` (one per row), ``order`` holds the epoch's batches
    instead, each within one bucket (:func:`bucket_batches`).
    """
    if buckets is not None:
        if not order:
            order += bucket_batches(generator, pool, buckets, size)
        return list(order.pop(0))
    while len(order) < size:
        order += [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]
    batch = order[:size]
    del order[:size]
    return batch
