"""Captions built from attribute records, with optional attribute dropout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from charloop_world.attributes import (
    CHARACTER_VALUES,
    CONTEXT_VALUES,
    CharacterSpec,
    Context,
    outfit_phrase,
    phrase,
    record,
)
from charloop_world.render import render

SUBJECT = "a character"


def character_phrases(character: CharacterSpec, keep: set[str] | None = None) -> list[str]:
    """The prompt phrases of ``character``'s attributes, only those in ``keep`` (default all).

    Outfit colour and kind combine into one phrase ("blue jacket") when both are kept.
    """
    keep = set(CHARACTER_VALUES) if keep is None else keep
    phrases = []
    for name in CHARACTER_VALUES:
        if name == "outfit_kind" or (name not in keep and name != "outfit_colour"):
            continue
        if name == "outfit_colour":
            colour = character.outfit_colour if "outfit_colour" in keep else None
            kind = character.outfit_kind if "outfit_kind" in keep else None
            text = outfit_phrase(colour, kind)
            if text:
                phrases.append(text)
            continue
        phrases.append(phrase(name, getattr(character, name)))
    return phrases


def context_phrases(context: Context) -> list[str]:
    """Pose, expression, setting and style phrases."""
    return [phrase(name, value) for name, value in context.as_dict().items()]


def caption(
    character: CharacterSpec,
    context: Context | None,
    rng: np.random.Generator | None = None,
    drop_prob: float = 0.0,
) -> str:
    """A caption such as "a character, red hair, ponytail, ..., in a forest, flat colors style".

    Args:
        character: The character's attributes.
        context: The picture's context; None leaves context phrases out.
        rng: Randomness for dropout (required when ``drop_prob`` > 0).
        drop_prob: Each character attribute is independently left out with this probability.
    """
    keep = set(CHARACTER_VALUES)
    if drop_prob > 0:
        if rng is None:
            raise ValueError("drop_prob > 0 needs an rng")
        keep = {name for name in CHARACTER_VALUES if rng.random() >= drop_prob}
    parts = [SUBJECT, *character_phrases(character, keep)]
    if context is not None:
        parts += context_phrases(context)
    return ", ".join(parts)


def render_sample(
    character: CharacterSpec, context: Context, seed: int, drop_prob: float = 0.0
) -> tuple[object, dict[str, str], str]:
    """One render with its attribute record and caption: ``(image, record, caption)``."""
    rng = np.random.default_rng(seed + 7_919)
    image = render(character, context, seed)
    return image, record(character, context), caption(character, context, rng, drop_prob)


def allowed_context_values(avoid: list[str]) -> dict[str, list[str]]:
    """Each context axis's world values whose phrase names none of ``avoid`` (whole words).

    Raises:
        ValueError: every value of an axis is avoided.
    """
    from charloop.scenes.heldout import mentions

    allowed = {
        axis: [v for v in values if not any(mentions(phrase(axis, v), a) for a in avoid)]
        for axis, values in CONTEXT_VALUES.items()
    }
    if empty := [axis for axis, values in allowed.items() if not values]:
        raise ValueError(f"every world value of {empty} is held out: nothing left to render")
    return allowed


def render_references(
    character: CharacterSpec,
    out_dir: str | Path,
    n: int,
    seed: int,
    avoid: tuple[str, ...] | list[str] = (),
) -> list[Path]:
    """Write ``n`` PNG renders of one character over varied contexts (atomic writes).

    Each render gets a kohya-style caption file beside it (``ref_000.txt``) with its context
    tags (style, setting, expression, pose), which ``caption.include_references`` reads, and
    the folder gets ``identity.json`` (the character's attributes, what the validity report
    scores against). Contexts whose phrases name a value in ``avoid`` (the evaluation's
    held-out values) are never drawn, so the references never show a held-out context.

    Returns:
        The written paths, ``ref_000.png``, ``ref_001.png``, ...
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    allowed = allowed_context_values(list(avoid))
    paths = []
    for index in range(n):
        context = Context(**{axis: str(rng.choice(values)) for axis, values in allowed.items()})
        image = render(character, context, int(rng.integers(2**31)))
        path = out / f"ref_{index:03d}.png"
        tmp = out / f".{path.name}.tmp"
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
        tags = context.as_dict()
        text = ", ".join(phrase(k, tags[k]) for k in ("style", "setting", "expression", "pose"))
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path.with_suffix(".txt"))
        paths.append(path)
    identity = out / ".identity.json.tmp"
    identity.write_text(json.dumps(character.as_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(identity, out / "identity.json")
    return paths
