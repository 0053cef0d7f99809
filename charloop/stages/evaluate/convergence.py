"""The loop's stopping rule, the best round so far, and the change between iterations.

A round is *better* only when it beats the best round so far by more than the noise: its
round metric (``loop.metric``: ``reference_match`` with references, else
``identity_consistency``) must exceed the best's by more than ``epsilon`` and more than
the seed noise of either, without collapsing (:func:`collapse`): images that fall onto one
picture (the same pose and framing for every seed) score high while the character stops
following the prompt, so a gain bought with seed variety is no gain. The best round is
the one aliased ``candidate`` and the one the next round generates from; the loop stops
after ``patience`` rounds in a row that are not better, or when the budget is spent.
Promotion judges collapse again against production (or the version's parent when nothing
is in production).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

METRIC = "identity_consistency"
NOISE_OF = {
    "identity_consistency": "identity_noise",
    "reference_match": "reference_match_noise",
    "trait_pass": "trait_pass_noise",
}
"""Each round metric's seed noise (standard error across seeds)."""


def round_metric(choice: str, metrics: dict[str, Any]) -> str:
    """The metric rounds are compared on: ``choice``, or for 'auto' ``reference_match``
    when the evaluation measured it (the character has references)."""
    if choice != "auto":
        return choice
    return "reference_match" if isinstance(metrics.get("reference_match"), float) else METRIC


@dataclass(frozen=True)
class Verdict:
    """Whether to stop, and why (shown in the summary and logged to MLflow)."""

    stop: bool
    reason: str
    collapse: bool = False
    """The last iteration bought identity with variety (it is not the best)."""
    best: int = 0
    """Index in the history of the best round so far (the last one when it improved)."""

    def improved(self, history_length: int) -> bool:
        """The last round is the new best: it is aliased ``candidate``."""
        return self.best == history_length - 1


def margin(best: dict[str, Any], new: dict[str, Any], epsilon: float, metric: str) -> float:
    """How far ``new`` must beat ``best`` on ``metric``: ``epsilon`` or the seed noise of
    either round, whichever is larger."""
    key = NOISE_OF.get(metric, f"{metric}_noise")
    noises = [side[key] for side in (best, new) if isinstance(side.get(key), float)]
    return max([epsilon, *noises])


def beats(
    best: dict[str, Any], new: dict[str, Any], epsilon: float, metric: str = METRIC
) -> str | None:
    """Why ``new`` is not better than ``best`` on ``metric``, or None when it is."""
    if why := collapse(best, new, metric):
        return f"collapse: {why}"
    gain, needed = new[metric] - best[metric], margin(best, new, epsilon, metric)
    if gain > needed:
        return None
    return f"{metric} {gain:+.4f} vs the best round, not above the noise ({needed:.4f})"


def best_round(history: list[dict[str, Any]], epsilon: float, metric: str = METRIC) -> int:
    """Index of the best round: the first, replaced by each later round that beats it."""
    best = 0
    for index in range(1, len(history)):
        if beats(history[best], history[index], epsilon, metric) is None:
            best = index
    return best


def decide(
    history: list[dict[str, Any]],
    epsilon: float,
    max_iterations: int,
    patience: int = 1,
    metric: str = "auto",
) -> Verdict:
    """Stop after ``patience`` rounds in a row that do not beat the best, or at the budget.

    Args:
        history: Headline metrics of each finished iteration of the round, oldest first.
        epsilon: Smallest gain that counts, besides the seed noise.
        max_iterations: Iteration budget.
        patience: Rounds in a row without a gain before the loop stops.
        metric: ``loop.metric`` (see :func:`round_metric`).
    """
    if not history:
        return Verdict(False, "no iteration yet")
    metric = round_metric(metric, history[0])
    before = best_round(history[:-1], epsilon, metric) if len(history) > 1 else None
    why = beats(history[before], history[-1], epsilon, metric) if before is not None else None
    best = len(history) - 1 if why is None or before is None else before
    collapsed = why is not None and why.startswith("collapse")
    stalled = len(history) - 1 - best
    if why is not None and stalled >= patience:
        reason = f"no gain over iteration {best + 1} of the round for {stalled}: {why}"
        return Verdict(True, reason, collapsed, best)
    if len(history) >= max_iterations:
        return Verdict(True, f"budget: {max_iterations} iteration(s) done", collapsed, best)
    if why is not None:
        return Verdict(False, f"not better ({why}); next from the best round", collapsed, best)
    return Verdict(False, "continuing", collapsed, best)


VARIETY = "layout_diversity"
"""Seed variety the prompt leaves free (pose, framing), read where identity barely shows."""


def collapse(before: dict[str, Any], after: dict[str, Any], metric: str = METRIC) -> str | None:
    """Why ``after`` gains on ``metric`` by losing seed variety beyond the noise, or None.

    Variety is ``layout_diversity`` (see :func:`~charloop.stages.evaluate.metrics.
    layout_metrics`); the noise is the larger ``layout_diversity_noise`` (standard error
    across contexts) of the two. Without a noise estimate (one context or one seed) no
    collapse is claimed.
    """
    needed = (metric, VARIETY, f"{VARIETY}_noise")
    if not all(isinstance(side.get(k), float) for side in (before, after) for k in needed):
        return None
    gain = after[metric] - before[metric]
    drop = before[VARIETY] - after[VARIETY]
    noise = max(before[f"{VARIETY}_noise"], after[f"{VARIETY}_noise"])
    if gain <= 0 or drop <= noise:
        return None
    return (
        f"{metric} {gain:+.4f} but {VARIETY} {-drop:+.4f} "
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
