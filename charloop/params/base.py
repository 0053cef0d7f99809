"""The base of every params section, and the context axes."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, model_validator

Axis = Literal["style", "setting", "attire", "expression", "pose"]
"""One context axis, as a params field names it (``seen_axes``, ``leave_free.axes``)."""
AXES: tuple[str, ...] = get_args(Axis)
"""Context axes in prompt order; ``contexts`` holds one list per axis (plural names)."""


def _numeric_not_bool(annotation: Any) -> bool:
    """Whether a field takes a number but not a boolean (``int``, ``float | None``...)."""
    if get_origin(annotation) in (Union, types.UnionType):
        options = set(get_args(annotation))
    else:
        options = {annotation}
    return bool(options & {int, float}) and bool not in options


class StrictModel(BaseModel):
    """Base for every params section: unknown keys are errors, values are immutable,
    numbers are finite, and a boolean is never taken for a number (YAML's ``true`` would
    otherwise pass as 1)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(value, bool) else None
                if field is not None and _numeric_not_bool(field.annotation):
                    raise ValueError(f"{name}: expected a number, got the boolean {value}")
        return data
