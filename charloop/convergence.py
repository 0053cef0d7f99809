"""The loop's stopping rule, from the metrics of consecutive iterations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRIC = "identity_consistency"


@dataclass(frozen=True)
class Verdict:
    """Whether to stop, and why (shown in the summary and logged to MLflow)."""

    stop: bool
    reason: str


def decide(history: list[dict[str, Any]], epsilon: float, max_iterations: int) -> Verdict:
    """Stop when identity consistency changed by less than ``epsilon``, or the budget is spent.

    Args:
        history: Headline metrics of each finished iteration, oldest first.
        epsilon: Convergence threshold on the absolute change.
        max_iterations: Iteration budget.
    """
    if not history:
        return Verdict(False, "no iteration yet")
    if len(history) >= 2:
        delta = history[-1][METRIC] - history[-2][METRIC]
        if abs(delta) < epsilon:
            return Verdict(True, f"converged: {METRIC} changed by {delta:+.4f} (< {epsilon})")
    if len(history) >= max_iterations:
        return Verdict(True, f"budget: {max_iterations} iteration(s) done")
    return Verdict(False, "continuing")
