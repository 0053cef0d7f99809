"""The loop's stopping rule and the change between consecutive iterations' metrics.

Identity consistency is never judged alone: images that collapse onto one picture (the
same pose and framing for every seed) score high identity while the character stops
following the prompt. A round that gains identity while its seed diversity drops by more
than the noise (:func:`collapse`) is not better: the loop stops there, leaves
``candidate`` on the previous version, and promotion refuses it against production (or
its parent when nothing is in production).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

METRIC = "identity_consistency"


@dataclass(frozen=True)
class Verdict:
    """Whether to stop, and why (shown in the summary and logged to MLflow)."""

    stop: bool
    reason: str
    collapse: bool = False
    """The last iteration bought identity with variety: it is not aliased ``candidate``."""


def decide(history: list[dict[str, Any]], epsilon: float, max_iterations: int) -> Verdict:
    """Stop when identity consistency changed by less than ``epsilon``, or the budget is spent.

    Args:
        history: Headline metrics of each finished iteration, oldest first.
        epsilon: Convergence threshold on the absolute change.
        max_iterations: Iteration budget.
    """
    if not history:
        return Verdict(False, "no iteration yet")
    if len(history) >= 2 and (why := collapse(history[-2], history[-1])):
        return Verdict(True, f"collapse, not better than the previous iteration: {why}", True)
    if len(history) >= 2:
        delta = history[-1][METRIC] - history[-2][METRIC]
        if abs(delta) < epsilon:
            return Verdict(True, f"converged: {METRIC} changed by {delta:+.4f} (< {epsilon})")
    if len(history) >= max_iterations:
        return Verdict(True, f"budget: {max_iterations} iteration(s) done")
    return Verdict(False, "continuing")


VARIETY = "layout_diversity"
"""Seed variety the prompt leaves free (pose, framing), read where identity barely shows."""


def collapse(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Why ``after`` gains identity by losing seed variety beyond the noise, or None.

    Variety is ``layout_diversity`` (see :func:`~charloop.stages.evaluate.metrics.
    layout_metrics`); the noise is the larger ``layout_diversity_noise`` (standard error
    across contexts) of the two. Without a noise estimate (one context or one seed) no
    collapse is claimed.
    """
    needed = (METRIC, VARIETY, f"{VARIETY}_noise")
    if not all(isinstance(side.get(k), float) for side in (before, after) for k in needed):
        return None
    gain = after[METRIC] - before[METRIC]
    drop = before[VARIETY] - after[VARIETY]
    noise = max(before[f"{VARIETY}_noise"], after[f"{VARIETY}_noise"])
    if gain <= 0 or drop <= noise:
        return None
    return (
        f"{METRIC} {gain:+.4f} but {VARIETY} {-drop:+.4f} "
        f"(beyond the noise of {noise:.4f}): the images collapse onto one picture"
    )


def compare(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, float]:
    """``current - previous`` for every finite float metric both iterations have.

    Args:
        previous: Headline metrics of the previous iteration.
        current: Headline metrics of this iteration.

    Returns:
        Metric name -> change, in ``current``'s order (metrics only one side has are left out).
    """
    return {
        name: float(value) - float(previous[name])
        for name, value in current.items()
        if _is_number(value) and _is_number(previous.get(name))
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
