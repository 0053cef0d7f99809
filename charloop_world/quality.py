"""Quality check of the world base model, read by the oracle.

Two measures: per-attribute accuracy of generations from prompts listing every attribute,
and the spread of values of an attribute the prompt leaves out.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from charloop_world.attributes import CHARACTER_VALUES, sample_character, sample_context
from charloop_world.build_base import generate
from charloop_world.captions import SUBJECT, caption, character_phrases, context_phrases

logger = logging.getLogger(__name__)


def prompt_accuracy(
    pipe: Any, oracle: Any, n: int = 96, seed: int = 0, batch: int = 16, **gen: Any
) -> dict[str, float]:
    """Attribute -> fraction of generations (full prompts) whose oracle reading matches."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {}
    for start in range(0, n, batch):
        pairs = [(sample_character(rng), sample_context(rng)) for _ in range(min(batch, n - start))]
        images = generate(pipe, [caption(ch, cx) for ch, cx in pairs], seed + start, **gen)
        for (ch, cx), read in zip(pairs, oracle.read(images), strict=True):
            for name, value in {**ch.as_dict(), **cx.as_dict()}.items():
                hits.setdefault(name, []).append(read[name] == value)
    return {name: float(np.mean(v)) for name, v in hits.items()}


def omitted_distribution(
    pipe: Any, oracle: Any, attribute: str, n: int = 64, seed: int = 0, batch: int = 16, **gen: Any
) -> dict[str, Any]:
    """Generate with one fixed character whose prompt leaves ``attribute`` out.

    Returns:
        ``counts`` (value -> count read by the oracle over ``n`` seeds), the ``prompt``, and
        ``kept_accuracy``: how often the attributes still in the prompt are read right.
    """
    rng = np.random.default_rng(seed)
    character, context = sample_character(rng), sample_context(rng)
    keep = set(CHARACTER_VALUES) - {attribute}
    prompt = ", ".join([SUBJECT, *character_phrases(character, keep), *context_phrases(context)])
    reads: list[dict[str, str]] = []
    for start in range(0, n, batch):
        reads += oracle.read(generate(pipe, [prompt] * min(batch, n - start), seed + start, **gen))
    counts = Counter(r[attribute] for r in reads)
    kept = [r[k] == getattr(character, k) for r in reads for k in keep]
    return {
        "prompt": prompt,
        "counts": {v: counts.get(v, 0) for v in CHARACTER_VALUES[attribute]},
        "kept_accuracy": float(np.mean(kept)),
    }


def quality_report(
    base: str | Path, oracle_path: str | Path, n: int = 96, seed: int = 0
) -> tuple[str, dict[str, float]]:
    """Markdown section with both measures (also logged), and the per-attribute accuracy."""
    from charloop_world.build_base import load_pipeline
    from charloop_world.oracle import load_oracle

    pipe, oracle = load_pipeline(base), load_oracle(oracle_path)
    accuracy = prompt_accuracy(pipe, oracle, n=n, seed=seed)
    chance = {
        name: 1 / len(values) for name, values in {**CHARACTER_VALUES, **_context_values()}.items()
    }
    rows = "\n".join(f"| {k} | {v:.3f} | {chance[k]:.3f} |" for k, v in accuracy.items())
    lines = [
        "## Quality (read by the world oracle)",
        "",
        f"{n} generations (20 steps, guidance 5) from prompts listing every attribute;",
        "fraction where the oracle reads the prompted value:",
        "",
        "| attribute | accuracy | chance |",
        "|---|---|---|",
        rows,
        "",
    ]
    for attribute in ("hair_colour", "outfit_kind"):
        spread = omitted_distribution(pipe, oracle, attribute, n=48, seed=seed + 1)
        lines += [
            f"Prompt without {attribute} (`{spread['prompt']}`), 48 seeds, values read: "
            f"{spread['counts']} (attributes kept in the prompt read right: "
            f"{spread['kept_accuracy']:.3f}).",
            "",
        ]
    text = "\n".join(lines)
    logger.info("%s", text)
    return text, accuracy


def _context_values() -> dict[str, tuple[str, ...]]:
    from charloop_world.attributes import CONTEXT_VALUES

    return CONTEXT_VALUES


def update_card(base: str | Path, oracle_path: str | Path, n: int = 96, seed: int = 0) -> str:
    """Measure quality and rewrite the base model's ``MODEL_CARD.md`` with it; the
    accuracies are also kept in ``build_stats.json`` (``quality``) for tests to read."""
    import json

    from charloop_world.build_base import write_card

    stats_file = Path(base) / "build_stats.json"
    stats = json.loads(stats_file.read_text())
    text, accuracy = quality_report(base, oracle_path, n=n, seed=seed)
    stats["quality"] = {name: round(value, 3) for name, value in accuracy.items()}
    stats_file.write_text(json.dumps(stats, indent=1))
    write_card(Path(base), stats, quality=text)
    return text
