"""A CLIP tokenizer built in code whose vocabulary holds the world's words whole."""

from __future__ import annotations

from typing import Any

from charloop.models.tiny import PROMPT_WORDS, clip_vocab
from charloop_world.attributes import WORLD_WORDS

MODEL_MAX_LENGTH = 64


def build_world_tokenizer() -> Any:
    """A ``CLIPTokenizer`` where every world word (and the tiny prompt words) is one token.

    Unknown words (a trigger such as "zxq kira") still tokenize, through byte fallback.
    """
    from transformers import CLIPTokenizer

    words = tuple(dict.fromkeys(WORLD_WORDS + PROMPT_WORDS))
    vocab, merges = clip_vocab(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=MODEL_MAX_LENGTH,
    )
