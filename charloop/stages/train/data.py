"""Training inputs: the dataset's images and captions, encoded once and cached on disk."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from charloop.core import atomic
from charloop.core.hashing import sha256_bytes, sha256_file
from charloop.families import ModelFamily, family_of_pipeline_class
from charloop.families.base import CropGeometry, TextParts, centre_crop
from charloop.models.encode_cache import EncodeCache, component_identity

logger = logging.getLogger(__name__)

ENCODE_BATCH = 8


@dataclass(frozen=True)
class EncodedDataset:
    """Model inputs for a set of dataset rows.

    ``text`` is None when the text encoders are trained (their output changes every
    step); ``input_ids`` (one tensor per tokenizer) are always there. ``sizes`` holds each
    image's crop geometry (original size, crop offset, target size) for families that
    condition on it.
    """

    ids: list[str]
    latents: torch.Tensor
    input_ids: list[torch.Tensor]
    text: TextParts | None
    repeats: list[int] | None = None
    """Times each row is drawn per epoch (kohya's ``num_repeats``); None: once each."""
    sizes: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def epoch_pool(self) -> list[int]:
        """Row indices of one epoch, each repeated its ``repeats`` times."""
        if self.repeats is None:
            return list(range(len(self.ids)))
        return [i for i, r in enumerate(self.repeats) for _ in range(r)]

    def text_batch(self, batch: list[int], device: torch.device) -> TextParts | None:
        """The cached prompt embeddings of ``batch`` rows on ``device`` (None if uncached)."""
        if self.text is None:
            return None
        return {name: part[batch].to(device) for name, part in self.text.items()}


@dataclass(frozen=True)
class ModelIdentity:
    """Where the VAE, tokenizer and text encoder come from (part of every cache key)."""

    ref: str
    revision: str | None = None

    def of(self, component: str) -> str:
        return component_identity(self.ref, component, self.revision)


def image_geometry(path: Path, resolution: int) -> CropGeometry:
    """How ``load_image_tensor`` fits the file to the training size (header read only)."""
    with Image.open(path) as handle:
        return centre_crop(handle.size, (resolution, resolution))


def load_image_tensor(path: Path, resolution: int) -> torch.Tensor:
    """An RGB image resized and centre-cropped to ``resolution``, scaled to [-1, 1], CHW."""
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    crop = centre_crop(image.size, (resolution, resolution))
    scale = max(resolution / image.height, resolution / image.width)
    image = image.resize(
        (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    top, left = crop.crop_top_left
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def read_rows(dataset_dir: Path) -> list[dict[str, Any]]:
    """The dataset's ``metadata.jsonl`` rows (file_name, text, id)."""
    return atomic.read_jsonl(dataset_dir / "metadata.jsonl")


def split_validation(
    rows: list[dict[str, Any]], count: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold ``count`` rows out for validation, chosen by a seeded hash of their ids.

    The choice depends only on the ids and the seed, so adding images to a dataset moves
    few rows between the splits. At least one row always stays in training.
    """
    count = min(count, len(rows) - 1)
    if count <= 0:
        return rows, []
    ranked = sorted(rows, key=lambda row: sha256_bytes(f"{seed}:{row['id']}".encode()))
    held = {row["id"] for row in ranked[:count]}
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def pipe_family(pipe: Any) -> ModelFamily:
    """The family of a loaded pipeline (by its class)."""
    family = family_of_pipeline_class(type(pipe).__name__)
    if family is None:
        raise ValueError(f"no model family serves a {type(pipe).__name__}")
    return family


@torch.no_grad()
def encode_images(pipe: Any, files: list[Path], resolution: int) -> torch.Tensor:
    """Scaled VAE latent means of image files, encoded in batches (float32, on CPU).

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
            pixels = torch.stack(
                [load_image_tensor(f, resolution) for f in files[start : start + ENCODE_BATCH]]
            ).to(pipe.device, dtype=dtype)
            latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            out.append(latents.float().cpu())
    finally:
        if upcast:
            vae.to(torch.float16)
    return torch.cat(out)


def encode_rows(
    pipe: Any,
    dataset_dir: Path,
    rows: list[dict[str, Any]],
    resolution: int,
    identity: ModelIdentity,
    cache: EncodeCache | None = None,
    with_text_embeddings: bool = True,
) -> EncodedDataset:
    """Encode dataset rows, serving what the cache already holds.

    Args:
        pipe: The loaded base pipeline (VAE, tokenizers, text encoders); its class
            tells the family.
        dataset_dir: The caption stage's folder.
        rows: Rows of ``metadata.jsonl`` to encode.
        resolution: Training resolution (part of the latent key).
        identity: The base model's identity (part of every key).
        cache: On-disk cache, or None to encode everything in memory.
        with_text_embeddings: False when the text encoders are trained.
    """
    family = pipe_family(pipe)
    files = [dataset_dir / row["file_name"] for row in rows]
    captions = [row["text"] for row in rows]
    if not rows:
        empty = torch.empty(0)
        return EncodedDataset([], empty, [empty.long()], None)
    texts: TextParts | None = None
    if cache is None:
        latents = encode_images(pipe, files, resolution)
        if with_text_embeddings:
            texts = family.encode_prompts(pipe, captions)
    else:
        vae = identity.of("vae")
        latent_keys = [
            {"image": sha256_file(f), "vae": vae, "resolution": resolution} for f in files
        ]
        latents = cache.get_many(
            "latents",
            latent_keys,
            lambda idx: encode_images(pipe, [files[i] for i in idx], resolution),
        )
        if with_text_embeddings:
            encoder = tuple(identity.of(c) for c in (*family.text_encoders, *family.tokenizers))
            text_keys = [{"caption": c, "text_encoder": encoder} for c in captions]
            texts = cache.get_parts(
                "prompt",  # every part of a caption's encoding in one entry
                text_keys,
                lambda idx: family.encode_prompts(pipe, [captions[i] for i in idx]),
            )
    repeats = [int(row.get("repeats", 1)) for row in rows]
    sizes = torch.stack([image_geometry(f, resolution).as_tensor() for f in files])
    return EncodedDataset(
        [row["id"] for row in rows],
        latents,
        family.token_ids(pipe, captions),
        texts,
        None if set(repeats) <= {1} else repeats,
        sizes,
    )
