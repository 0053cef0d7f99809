"""Caption batches for base-model training: random renders with freshly drawn captions.

Captions are re-drawn every time (attribute dropout, some empty for classifier-free
guidance) and tokenized. On a GPU this CPU work would stall the device, so it runs in
DataLoader worker processes; with ``workers=0`` it runs inline (the CPU build).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from charloop.families.base import tokenize
from charloop_world.attributes import character_from_dict, context_from_dict
from charloop_world.captions import caption


class CaptionBatches(torch.utils.data.IterableDataset):
    """An endless stream of ``(render indices, token ids per tokenizer)`` batches.

    Args:
        records: Attribute record of every render.
        tokenizers: The base model's tokenizers (each caption is tokenized by every one).
        batch_size: Renders per batch.
        drop_prob: Probability of leaving each character attribute out of a caption.
        empty_prob: Fraction of empty captions.
        seed: Seed; each worker process draws from its own stream of it.
    """

    def __init__(
        self,
        records: list[dict[str, str]],
        tokenizers: list[Any],
        batch_size: int,
        drop_prob: float,
        empty_prob: float,
        seed: int,
    ) -> None:
        super().__init__()
        self.characters = [character_from_dict(r) for r in records]
        self.contexts = [context_from_dict(r) for r in records]
        self.tokenizers = tokenizers
        self.batch_size = batch_size
        self.drop_prob = drop_prob
        self.empty_prob = empty_prob
        self.seed = seed

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One batch drawn from ``rng``."""
        index = rng.integers(0, len(self.characters), self.batch_size)
        texts = [
            ""
            if rng.random() < self.empty_prob
            else caption(self.characters[i], self.contexts[i], rng, self.drop_prob)
            for i in index
        ]
        return torch.from_numpy(index), [tokenize(t, texts) for t in self.tokenizers]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id + 1])
        while True:
            yield self.batch(rng)


def caption_batches(
    source: CaptionBatches, workers: int = 0
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Iterate ``source`` inline (``workers=0``) or from ``workers`` processes, pinned."""
    if workers <= 0:
        return iter(source)
    loader = torch.utils.data.DataLoader(
        source,
        batch_size=None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4,
        persistent_workers=True,
    )
    return iter(loader)
