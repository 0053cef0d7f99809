"""The base of every params section, and the context axes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

AXES = ("style", "setting", "attire", "expression", "pose")
"""Context axes in prompt order; ``contexts`` holds one list per axis (plural names)."""


class StrictModel(BaseModel):
    """Base for every params section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
