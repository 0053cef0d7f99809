"""Zoomed and mirrored variants of the reference images (``train.augment``).

A variant is a fixed window of its image (and maybe a mirror), drawn from a seed made of
the row id and the variant's number: the same every run, so its latents are cached under
a key of their own like any other image's. Variants become dataset rows of their own that
share the reference's repeats, so the training loop needs no notion of augmentation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from charloop.params.train import AugmentParams
from charloop.stages.layout import is_reference_id

VARIANT_MARK = "~v"
"""Joins a row id and its variant number: ``ref-kira-ref_000~v2``."""


@dataclass(frozen=True)
class Variant:
    """A window of the image (fractions of its width and height) and an optional mirror."""

    scale: float
    """The window's side over the image's (the same for width and height: 1/zoom)."""
    left: float
    top: float
    flip: bool

    def key(self) -> list[float | bool]:
        """JSON-stable form for cache keys and rows."""
        return [round(self.scale, 4), round(self.left, 4), round(self.top, 4), self.flip]

    @classmethod
    def from_key(cls, key: list[Any]) -> Variant:
        return cls(float(key[0]), float(key[1]), float(key[2]), bool(key[3]))

    def apply(self, image: Image.Image) -> Image.Image:
        """The window of ``image`` (same aspect ratio, smaller), mirrored if asked."""
        width, height = image.size
        box_w, box_h = max(1, round(width * self.scale)), max(1, round(height * self.scale))
        left = min(round(width * self.left), width - box_w)
        top = min(round(height * self.top), height - box_h)
        window = image.crop((left, top, left + box_w, top + box_h))
        return window.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else window


def draw_variant(row_id: str, number: int, augment: AugmentParams) -> Variant:
    """Variant ``number`` (1-based) of a row: zoom uniform in [1, zoom], the window
    anywhere inside the image, mirrored on even numbers when ``augment.flip``."""
    rng = random.Random(f"{row_id}{VARIANT_MARK}{number}")  # str seeds are stable
    scale = 1.0 / rng.uniform(1.0, augment.zoom)
    room = 1.0 - scale
    return Variant(
        scale, rng.uniform(0, room), rng.uniform(0, room), augment.flip and number % 2 == 0
    )


def split_repeats(repeats: int, parts: int) -> list[int]:
    """``repeats`` shared among ``parts`` as evenly as possible, the first parts first."""
    base, extra = divmod(repeats, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def with_variants(rows: list[dict[str, Any]], augment: AugmentParams) -> list[dict[str, Any]]:
    """``rows`` with each reference row followed by its variants.

    A reference drawn ``repeats`` times keeps that total, shared among the original and
    up to ``repeats - 1`` variants (each variant row carries its ``variant`` key);
    generated rows and references drawn once are left as they are.
    """
    if augment.variants == 0:
        return rows
    out = []
    for row in rows:
        repeats = int(row.get("repeats", 1))
        count = min(augment.variants, repeats - 1)
        if not is_reference_id(row["id"]) or count < 1:
            out.append(row)
            continue
        shares = split_repeats(repeats, count + 1)
        out.append(row | {"repeats": shares[0]})
        for number in range(1, count + 1):
            variant = draw_variant(row["id"], number, augment)
            out.append(
                row
                | {"id": f"{row['id']}{VARIANT_MARK}{number}", "repeats": shares[number]}
                | {"variant": variant.key()}
            )
    return out
