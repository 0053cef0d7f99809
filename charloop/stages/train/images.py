"""Training images: fitted to their training size (square or bucket) and VAE-encoded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from charloop.families.base import centre_crop

if TYPE_CHECKING:
    from charloop.stages.train.augment import Variant

ENCODE_BATCH = 8

Size = tuple[int, int]
"""(height, width) in pixels."""


def as_size(target: int | Size) -> Size:
    return (target, target) if isinstance(target, int) else target


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file (header read only)."""
    with Image.open(path) as handle:
        return handle.size


def load_image_tensor(
    path: Path, target: int | Size, variant: Variant | None = None
) -> torch.Tensor:
    """An RGB image (or a ``variant``'s window of it) scaled to cover ``target`` (a side,
    or (height, width)) and centre-cropped to it, in [-1, 1], CHW."""
    height, width = as_size(target)
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    if variant is not None:
        image = variant.apply(image)
    crop = centre_crop(image.size, (height, width))
    scale = max(height / image.height, width / image.width)
    image = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    top, left = crop.crop_top_left
    image = image.crop((left, top, left + width, top + height))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def encode_images(
    pipe: Any,
    files: list[Path],
    target: int | Size,
    variants: Sequence[Variant | None] | None = None,
) -> torch.Tensor:
    """Scaled VAE latent means of image files (or the ``variants`` of them, one per file,
    None for the image itself) fitted to ``target``, encoded in batches (float32, on CPU).

    A VAE that overflows in float16 (SDXL's: ``force_upcast``) encodes in float32.
    """
    vae = pipe.vae
    upcast = bool(vae.config.get("force_upcast", False)) and vae.dtype == torch.float16
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae = vae.to(torch.float32)
    out = []
    try:
        for start in range(0, len(files), ENCODE_BATCH):
            batch = range(start, min(start + ENCODE_BATCH, len(files)))
            pixels = torch.stack(
                [
                    load_image_tensor(files[i], target, variants[i] if variants else None)
                    for i in batch
                ]
            ).to(pipe.device, dtype=dtype)
            mean = vae.encode(pixels).latent_dist.mean
            shift = vae.config.get("shift_factor") or 0.0  # FLUX's VAE centres its latents
            latents = (mean - shift) * vae.config.scaling_factor
            out.append(latents.float().cpu())
    finally:
        if upcast:
            vae.to(torch.float16)
    return torch.cat(out)
