"""The outer loop's params: budget, when a round counts as better, where data goes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from charloop.params.base import StrictModel


class LoopParams(StrictModel):
    """The outer generate-train loop."""

    max_iterations: int = Field(default=2, ge=1)
    """Stop after this many iterations."""
    convergence_epsilon: float = Field(default=0.005, ge=0)
    """A round is better only when its round metric (``metric``) beats the best round so
    far by more than this and more than the metric's seed noise, without collapsing seed
    variety."""
    metric: Literal["auto", "reference_match", "identity_consistency", "trait_pass"] = "auto"
    """What a round must beat the best round on: 'reference_match' (how closely the
    held-out renders match the nearest reference pictures: the character is right),
    'identity_consistency' (how alike the renders are: the character is stable; the only
    choice without references) or 'trait_pass' (the trait scorer's mean pass rate on the
    held-out renders: each trait shown; needs a 'traits:' section). 'auto':
    reference_match when the character has references. Measured on the world, see
    docs/world.md#loop-to-loop-spread-measured."""
    patience: int = Field(default=1, ge=1)
    """Rounds in a row that may fail to beat the best before the loop stops; the round
    after one that did not improve generates from the best round's LoRA, not the last."""
    workdir: str = "runs"
    """Folder for iteration data, relative to the params file. Each set of result-affecting
    params gets its own lineage branch folder under ``<workdir>/<character>/``."""
    lock_timeout_s: float = Field(default=0.0, ge=0)
    """How long a second loop on the same character waits for the first (0: refuse at once)."""

    def unmeasurable(self, references: bool, traits: bool) -> str | None:
        """Why ``metric`` cannot be measured with these params (no references, no traits
        section), or None."""
        if self.metric == "reference_match" and not references:
            return (
                "loop.metric: reference_match compares the renders with character.references: "
                "set the references folder, or use loop.metric: auto or identity_consistency"
            )
        if self.metric == "trait_pass" and not traits:
            return (
                "loop.metric: trait_pass is the trait scorer's pass rate: add a 'traits:' "
                "section, or use loop.metric: auto"
            )
        return None
