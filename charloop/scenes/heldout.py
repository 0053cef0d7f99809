"""Held out means held out: evaluation contexts must never reach the training captions.

For each evaluation context (``evaluate.contexts``), the values the generation matrix
(``contexts``) does not contain are *claimed unseen*, unless ``evaluate.seen_axes`` names
their axis. A claimed value that appears (as whole words, any case) in a training caption,
generated or reference, is a leak, and so is a whole evaluation context: all of its values
in one caption, or a combination the generation matrix can draw. ``charloop validate``,
the loop's preflight and the caption stage refuse leaks (a captioning model's description
is redacted instead: its words are not the user's to fix), so the evaluation scores only
what the LoRA was never shown; ``metrics.json`` and the validity report say which axes of
each context were unseen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from charloop.core.errors import BadInput
from charloop.params.schema import Params

WHOLE = "whole context"


@dataclass(frozen=True)
class Leak:
    """An evaluation value (or a whole context) found in a training caption."""

    context: str
    axis: str
    value: str
    where: str

    def describe(self) -> str:
        what = "the whole context" if self.axis == WHOLE else f"{self.axis} {self.value!r}"
        return f"held-out context [{self.context}]: {what} appears in {self.where}"


class HeldOutLeak(BadInput, ValueError):
    """Evaluation contexts reach the training captions; the message lists each leak."""

    def __init__(self, leaks: list[Leak]) -> None:
        self.leaks = leaks
        lines = "\n".join(f"  - {leak.describe()}" for leak in leaks)
        axes = sorted({leak.axis for leak in leaks if leak.axis != WHOLE})
        super().__init__(
            f"{len(leaks)} held-out leak(s):\n{lines}\nfix: remove those words from the "
            "training captions (reference .txt sidecars, traits, contexts), choose other "
            "evaluate.contexts, or declare the axes seen with "
            f"evaluate.seen_axes: {axes or ['style']} (the evaluation then no longer "
            "claims them unseen)"
        )


def label(context: dict[str, str]) -> str:
    """A context in words: its non-empty values."""
    return ", ".join(v for v in context.values() if v)


def claimed_unseen(params: Params, context: dict[str, str]) -> dict[str, str]:
    """Axis -> value of ``context`` the evaluation claims the LoRA never saw."""
    matrix = params.contexts.axis_values()
    seen = set(params.evaluate.seen_axes)
    return {
        axis: value
        for axis, value in context.items()
        if value and axis not in seen and value not in matrix[axis]
    }


def claimed_unseen_values(params: Params) -> list[str]:
    """Every value some evaluation context claims unseen, sorted."""
    return sorted(
        {
            value
            for held_out in params.evaluate.contexts
            for value in claimed_unseen(params, held_out.model_dump()).values()
        }
    )


def held_out_axes(params: Params, context: dict[str, str]) -> dict[str, list[str]]:
    """Which axes of ``context`` were unseen in training and which were seen."""
    unseen = claimed_unseen(params, context)
    return {
        "unseen_axes": sorted(unseen),
        "seen_axes": sorted(a for a, v in context.items() if v and a not in unseen),
    }


def mentions(text: str, value: str) -> bool:
    """Whether ``value`` occurs in ``text`` as whole words, ignoring case."""
    return bool(value.strip()) and re.search(_pattern(value), text.lower()) is not None


def _pattern(value: str) -> str:
    return r"(?<![a-z0-9])" + re.escape(value.strip().lower()) + r"(?![a-z0-9])"


def redact(params: Params, text: str) -> tuple[str, list[str]]:
    """``text`` without the claimed-unseen values it names, and the values removed.

    For what a captioning model writes: its words are not the user's to edit, so a held-out
    word is cut from the description instead of refusing the dataset.
    """
    removed = [v for v in claimed_unseen_values(params) if mentions(text, v)]
    for value in sorted(removed, key=len, reverse=True):  # "sketch style" before "sketch"
        text = re.sub(_pattern(value), "", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+,", ",", re.sub(r"\s{2,}", " ", text))
    return text.strip(" ,"), removed


def in_generation_matrix(params: Params, context: dict[str, str]) -> bool:
    """Whether the generation matrix can draw every value of ``context`` together."""
    axes = params.contexts.axis_values()
    return all(value in axes[axis] for axis, value in context.items() if value)


def find_leaks(params: Params, captions: Iterable[tuple[str, str]]) -> list[Leak]:
    """Every leak of an evaluation context into ``captions`` (``(where, text)`` pairs)."""
    captions = list(captions)
    seen = set(params.evaluate.seen_axes)
    leaks: list[Leak] = []
    for held_out in params.evaluate.contexts:
        context = {k: v for k, v in held_out.model_dump().items() if v}
        name = label(context)
        claims_any = bool(set(context) - seen)
        if claims_any and in_generation_matrix(params, context):
            leaks.append(Leak(name, WHOLE, name, "the generation matrix (contexts)"))
        for where, text in captions:
            leaks += [
                Leak(name, axis, value, where)
                for axis, value in claimed_unseen(params, context).items()
                if mentions(text, value)
            ]
            if claims_any and len(context) > 1 and all(mentions(text, v) for v in context.values()):
                leaks.append(Leak(name, WHOLE, name, where))
    return list(dict.fromkeys(leaks))


def refuse_leaks(params: Params, captions: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`HeldOutLeak` when any evaluation context reaches ``captions``."""
    if leaks := find_leaks(params, captions):
        raise HeldOutLeak(leaks)
