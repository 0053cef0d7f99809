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
from charloop.models.encode_cache import EncodeCache, component_identity

logger = logging.getLogger(__name__)

ENCODE_BATCH = 8


@dataclass(frozen=True)
class EncodedDataset:
    """Model inputs for a set of dataset rows.

    ``text_embeddings`` is None when the text encoder is trained (its output changes
    every step); ``input_ids`` are always there.
    """

    ids: list[str]
    latents: torch.Tensor
    input_ids: torch.Tensor
    text_embeddings: torch.Tensor | None
    repeats: list[int] | None = None
    """Times each row is drawn per epoch (kohya's ``num_repeats``); None: once each."""

    def __len__(self) -> int:
        return len(self.ids)

    def epoch_pool(self) -> list[int]:
        """Row indices of one epoch, each repeated its ``repeats`` times."""
        if self.repeats is None:
            return list(range(len(self.ids)))
        return [i for i, r in enumerate(self.repeats) for _ in range(r)]


@dataclass(frozen=True)
class ModelIdentity:
    """Where the VAE, tokenizer and text encoder come from (part of every cache key)."""

    ref: str
    revision: str | None = None

    def of(self, component: str) -> str:
        return component_identity(self.ref, component, self.revision)


def load_image_tensor(path: Path, resolution: int) -> torch.Tensor:
    """An RGB image resized and centre-cropped to ``resolution``, scaled to [-1, 1], CHW."""
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    scale = resolution / min(image.size)
    image = image.resize(
        (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
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


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_text(pipe: Any, captions: list[str]) -> torch.Tensor:
    """Text-encoder hidden states for captions (float32, on CPU)."""
    ids = tokenize(pipe.tokenizer, captions).to(pipe.device)
    return pipe.text_encoder(ids)[0].float().cpu()


@torch.no_grad()
def encode_images(pipe: Any, files: list[Path], resolution: int) -> torch.Tensor:
    """Scaled VAE latent means of image files, encoded in batches (float32, on CPU)."""
    out = []
    for start in range(0, len(files), ENCODE_BATCH):
        pixels = torch.stack(
            [load_image_tensor(f, resolution) for f in files[start : start + ENCODE_BATCH]]
        ).to(pipe.device, dtype=pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        out.append(latents.float().cpu())
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
        pipe: The loaded base pipeline (VAE, tokenizer, text encoder).
        dataset_dir: The caption stage's folder.
        rows: Rows of ``metadata.jsonl`` to encode.
        resolution: Training resolution (part of the latent key).
        identity: The base model's identity (part of every key).
        cache: On-disk cache, or None to encode everything in memory.
        with_text_embeddings: False when the text encoder is trained.
    """
    files = [dataset_dir / row["file_name"] for row in rows]
    captions = [row["text"] for row in rows]
    if not rows:
        empty = torch.empty(0)
        return EncodedDataset([], empty, empty.long(), None)
    if cache is None:
        latents = encode_images(pipe, files, resolution)
        texts = encode_text(pipe, captions) if with_text_embeddings else None
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
        texts = None
        if with_text_embeddings:
            encoder = (identity.of("text_encoder"), identity.of("tokenizer"))
            text_keys = [{"caption": c, "text_encoder": encoder} for c in captions]
            texts = cache.get_many(
                "text", text_keys, lambda idx: encode_text(pipe, [captions[i] for i in idx])
            )
    repeats = [int(row.get("repeats", 1)) for row in rows]
    return EncodedDataset(
        [row["id"] for row in rows],
        latents,
        tokenize(pipe.tokenizer, captions),
        texts,
        None if set(repeats) <= {1} else repeats,
    )
