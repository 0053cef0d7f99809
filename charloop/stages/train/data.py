"""Training inputs: the dataset's images and captions, encoded once and cached on disk."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from charloop.core import atomic
from charloop.core.hashing import sha256_bytes, sha256_file
from charloop.families import family_of_pipe
from charloop.families.base import TextParts, centre_crop
from charloop.models.encode_cache import EncodeCache, component_identity
from charloop.stages.layout import is_reference_id
from charloop.stages.train.augment import Variant
from charloop.stages.train.buckets import nearest_bucket
from charloop.stages.train.images import Size, encode_images, image_size

Source = tuple[Path, Variant | None]
"""An image file, or a variant of it (``train.augment``)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedDataset:
    """Model inputs for a set of dataset rows.

    ``text`` is None when the text encoders are trained (their output changes every
    step); ``input_ids`` (one tensor per tokenizer) are always there. ``sizes`` holds each
    image's crop geometry (original size, crop offset, target size) for families that
    condition on it.
    """

    ids: list[str]
    latents: torch.Tensor | list[torch.Tensor]
    input_ids: list[torch.Tensor]
    text: TextParts | None
    repeats: list[int] | None = None
    """Times each row is drawn per epoch (kohya's ``num_repeats``); None: once each."""
    sizes: torch.Tensor | None = None
    buckets: list[int] | None = None
    """Each row's aspect-ratio bucket (batches stay within one), or None: all squares."""

    def __len__(self) -> int:
        return len(self.ids)

    def epoch_pool(self) -> list[int]:
        """Row indices of one epoch, each repeated its ``repeats`` times."""
        if self.repeats is None:
            return list(range(len(self.ids)))
        return [i for i, r in enumerate(self.repeats) for _ in range(r)]

    def latent_batch(self, batch: list[int]) -> torch.Tensor:
        """The latents of ``batch`` rows, stacked (rows of one batch share a size)."""
        if isinstance(self.latents, torch.Tensor):
            return self.latents[batch]
        return torch.stack([self.latents[i] for i in batch])

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


def read_rows(dataset_dir: Path) -> list[dict[str, Any]]:
    """The dataset's ``metadata.jsonl`` rows (file_name, text, id)."""
    return atomic.read_jsonl(dataset_dir / "metadata.jsonl")


def split_validation(
    rows: list[dict[str, Any]], count: int, seed: int, references: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold ``count`` rows out for validation, chosen by a seeded hash of their ids.

    The choice depends only on the ids and the seed, so adding images to a dataset moves
    few rows between the splits. At least one row always stays in training. With
    ``references`` false, reference images are held out only when there are too few
    generated rows: they are what the character is, and with eight of them, two held out
    is a quarter of the character never shown to the LoRA.
    """
    count = min(count, len(rows) - 1)
    if count <= 0:
        return rows, []
    ranked = sorted(
        rows,
        key=lambda row: (
            not references and is_reference_id(str(row["id"])),
            sha256_bytes(f"{seed}:{row['id']}".encode()),
        ),
    )
    held = {row["id"] for row in ranked[:count]}
    return [r for r in rows if r["id"] not in held], [r for r in rows if r["id"] in held]


def encode_rows(
    pipe: Any,
    dataset_dir: Path,
    rows: list[dict[str, Any]],
    resolution: int,
    identity: ModelIdentity,
    cache: EncodeCache | None = None,
    with_text_embeddings: bool = True,
    buckets: list[Size] | None = None,
    tokenizers: Any = None,
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
        buckets: Aspect-ratio bucket sizes (each image trains at its nearest), or None
            for centre-cropped squares.
        tokenizers: An object with the family's tokenizer attributes to read token ids
            with instead of ``pipe``'s (a trigger embedding's extended copies), or None.
    """
    family = family_of_pipe(pipe)
    sources = [_source(dataset_dir, row) for row in rows]
    captions = [row["text"] for row in rows]
    if not rows:
        empty = torch.empty(0)
        return EncodedDataset([], empty, [empty.long()], None)
    file_sizes = [_size(source) for source in sources]  # headers only, read once
    targets = [nearest_bucket(size, buckets) for size in file_sizes] if buckets else None
    latents = _latents(pipe, sources, resolution, targets, identity, cache)
    texts: TextParts | None = None
    if with_text_embeddings and cache is None:
        texts = family.encode_prompts(pipe, captions)
    elif with_text_embeddings and cache is not None:
        encoder = tuple(identity.of(c) for c in (*family.text_encoders, *family.tokenizers))
        text_keys = [{"caption": c, "text_encoder": encoder} for c in captions]
        texts = cache.get_parts(
            "prompt",  # every part of a caption's encoding in one entry
            text_keys,
            lambda idx: family.encode_prompts(pipe, [captions[i] for i in idx]),
        )
    repeats = [int(row.get("repeats", 1)) for row in rows]
    fitted = targets or [(resolution, resolution)] * len(sources)
    sizes = torch.stack(
        [centre_crop(size, t).as_tensor() for size, t in zip(file_sizes, fitted, strict=True)]
    )
    return EncodedDataset(
        [row["id"] for row in rows],
        latents,
        family.token_ids(tokenizers or pipe, captions),
        texts,
        None if set(repeats) <= {1} else repeats,
        sizes,
        [buckets.index(t) for t in targets] if buckets and targets else None,
    )


def _source(dataset_dir: Path, row: dict[str, Any]) -> Source:
    variant = row.get("variant")
    return dataset_dir / row["file_name"], Variant.from_key(variant) if variant else None


def _size(source: Source) -> tuple[int, int]:
    """(width, height) of the image a source stands for (a variant's window)."""
    width, height = image_size(source[0])
    variant = source[1]
    if variant is None:
        return width, height
    return max(1, round(width * variant.scale)), max(1, round(height * variant.scale))


def _latents(
    pipe: Any,
    files: list[Source],
    resolution: int,
    targets: list[Size] | None,
    identity: ModelIdentity,
    cache: EncodeCache | None,
) -> torch.Tensor | list[torch.Tensor]:
    """Latents of ``files``: one stacked tensor (squares), or one per file (buckets)."""
    if targets is None:  # squares keep the key they were always cached under
        square = (resolution, resolution)
        return _encode_group(pipe, files, square, {"resolution": resolution}, identity, cache)
    out: list[torch.Tensor | None] = [None] * len(files)
    for target in sorted(set(targets)):
        rows = [i for i, t in enumerate(targets) if t == target]
        group = [files[i] for i in rows]
        setting: dict[str, object] = {"size": list(target)}
        encoded = _encode_group(pipe, group, target, setting, identity, cache)
        for row, latent in zip(rows, encoded, strict=True):
            out[row] = latent
    return [latent for latent in out if latent is not None]


def _encode_group(
    pipe: Any,
    files: list[Source],
    target: Size,
    setting: Mapping[str, object],
    identity: ModelIdentity,
    cache: EncodeCache | None,
) -> torch.Tensor:
    """Latents of files fitted to one size; ``setting`` is that size's part of the key."""
    paths, variants = [f for f, _ in files], [v for _, v in files]

    def encode(idx: list[int]) -> torch.Tensor:
        return encode_images(pipe, [paths[i] for i in idx], target, [variants[i] for i in idx])

    if cache is None:
        return encode(list(range(len(files))))
    vae = identity.of("vae")
    keys = [_latent_key(f, v, vae, setting) for f, v in files]
    return cache.get_many("latents", keys, encode)


def _latent_key(
    path: Path, variant: Variant | None, vae: str, setting: Mapping[str, object]
) -> dict[str, object]:
    """An image's latent cache key; a variant's adds its window (the image's own key is
    unchanged, so caches made before augmentation stay valid)."""
    key: dict[str, object] = {"image": sha256_file(path), "vae": vae, **setting}
    return key | {"variant": variant.key()} if variant else key
