"""Cross-field checks of a whole params file that need arithmetic, not just field rules."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from charloop.params.schema import Params


def _combinations(params: Params, max_prompts: int | None) -> int:
    product = math.prod(len(values) for values in params.contexts.axis_values().values())
    return product if max_prompts is None else min(product, max_prompts)


def images_per_iteration(params: Params) -> int:
    """How many images one iteration's generate stage renders (what the filter can keep)."""
    gen = params.generate
    count = len(params.members) * _combinations(params, gen.max_prompts) * gen.images_per_prompt
    if params.cast is not None:
        joint = params.cast.joint
        per_pair = _combinations(params, joint.max_prompts) * joint.images_per_prompt
        count += len(params.cast.pair_list()) * per_pair
    return count


def min_kept_problem(params: Params) -> str | None:
    """Why ``filter.min_kept`` can never be met, or None when it can."""
    produced = images_per_iteration(params)
    if params.filter.min_kept <= produced:
        return None
    return (
        f"filter.min_kept={params.filter.min_kept} is more than the {produced} images an "
        "iteration generates; lower filter.min_kept or raise generate.images_per_prompt / "
        "generate.max_prompts (or add contexts)"
    )
