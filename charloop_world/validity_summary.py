"""The validity report's row names and what it concludes from them (the margins)."""

from __future__ import annotations

from typing import Any

BASE = "base model"
DESCRIBED = "base model, described"
"""The base model told who to draw in words (every true attribute, no trigger): its
variety is what the prompt leaves free with the character held fixed, the value a LoRA's
variety is held to (the plain base model draws a different character for every seed, and
that difference counts as variety too)."""


def margins(results: dict[str, Any]) -> dict[str, Any]:
    """The last and the best model's margin over the base model, and which is the best."""
    base = results[BASE]["consistency"]
    rounds = [name for name in results if name != DESCRIBED]
    last = rounds[-1]
    best = max(rounds, key=lambda name: results[name]["consistency"])
    return {
        "margin": results[last]["consistency"] - base,
        "best": best,
        "best_margin": results[best]["consistency"] - base,
    }
