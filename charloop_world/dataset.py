"""Pre-rendered world datasets: uint8 image arrays with attribute records, cached on disk."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charloop_world.attributes import (
    ALL_VALUES,
    CharacterSpec,
    Context,
    record,
    sample_character,
    sample_context,
)
from charloop_world.render import render

logger = logging.getLogger(__name__)


@dataclass
class WorldDataset:
    """Renders and their records.

    Attributes:
        images: ``(n, 64, 64, 3)`` uint8.
        records: Attribute record of each render.
        identity: Character index of each render (renders of one character share it).
    """

    images: np.ndarray
    records: list[dict[str, str]]
    identity: np.ndarray

    def labels(self, attribute: str) -> np.ndarray:
        """Value index of ``attribute`` for every render."""
        values = ALL_VALUES[attribute]
        return np.asarray([values.index(r[attribute]) for r in self.records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.records)


def _render_spec(spec: tuple[CharacterSpec, Context, int]) -> np.ndarray:
    return np.asarray(render(*spec))


def make_dataset(
    n_characters: int, per_character: int, seed: int, workers: int = 1
) -> WorldDataset:
    """Render ``per_character`` pictures of each of ``n_characters`` random characters.

    The specs are drawn in one sequence from ``seed``, then rendered by ``workers``
    processes, so the dataset is the same whatever the number of workers.
    """
    rng = np.random.default_rng(seed)
    specs, records, identity = [], [], []
    for index in range(n_characters):
        character = sample_character(rng)
        for _ in range(per_character):
            context = sample_context(rng)
            specs.append((character, context, int(rng.integers(2**31))))
            records.append(record(character, context))
            identity.append(index)
    if workers > 1:
        from multiprocessing import get_context

        with get_context("fork").Pool(workers) as pool:
            images = pool.map(_render_spec, specs, chunksize=256)
    else:
        images = [_render_spec(spec) for spec in specs]
    return WorldDataset(np.stack(images), records, np.asarray(identity, dtype=np.int64))


def cached_dataset(
    cache_dir: str | Path, n_characters: int, per_character: int, seed: int, workers: int = 1
) -> WorldDataset:
    """:func:`make_dataset`, cached as ``.npz`` + JSON under ``cache_dir``."""
    cache = Path(cache_dir)
    stem = cache / f"world-{n_characters}x{per_character}-s{seed}"
    npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
    if npz.exists() and meta.exists():
        data = np.load(npz)
        records = json.loads(meta.read_text())
        return WorldDataset(data["images"], records, data["identity"])
    logger.info("rendering %d x %d world images", n_characters, per_character)
    dataset = make_dataset(n_characters, per_character, seed, workers)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = stem.with_name(stem.name + ".tmp.npz")
    np.savez(tmp, images=dataset.images, identity=dataset.identity)
    os.replace(tmp, npz)
    tmp_meta = meta.with_name(meta.name + ".tmp")
    tmp_meta.write_text(json.dumps(dataset.records))
    os.replace(tmp_meta, meta)
    return dataset


def characters_of(dataset: WorldDataset) -> list[CharacterSpec]:
    """The character of each render."""
    from charloop_world.attributes import character_from_dict

    return [character_from_dict(r) for r in dataset.records]


def contexts_of(dataset: WorldDataset) -> list[Context]:
    """The context of each render."""
    from charloop_world.attributes import context_from_dict

    return [context_from_dict(r) for r in dataset.records]
