"""A CLIP tokenizer built in code whose vocabulary holds the world's words whole."""

from __future__ import annotations

import json
from typing import Any

from charloop.tiny_models import PROMPT_WORDS
from charloop.world.attributes import WORLD_WORDS

MODEL_MAX_LENGTH = 64


def _clip_vocab(words: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level CLIP BPE vocab and merges, trained so ``words`` are whole tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100_000, initial_alphabet=symbols, end_of_word_suffix="</w>", show_progress=False
    )
    bpe.train_from_iterator([" ".join(words)], trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def build_world_tokenizer() -> Any:
    """A ``CLIPTokenizer`` where every world word (and the tiny prompt words) is one token.

    Unknown words (a trigger such as "zxq kira") still tokenize, through byte fallback.
    """
    from transformers import CLIPTokenizer

    words = tuple(dict.fromkeys(WORLD_WORDS + PROMPT_WORDS))
    vocab, merges = _clip_vocab(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        model_max_length=MODEL_MAX_LENGTH,
    )
