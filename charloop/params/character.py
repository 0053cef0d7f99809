"""One character: its trigger, traits and references."""

from __future__ import annotations

from pydantic import Field, field_validator

from charloop.params.base import StrictModel


class Character(StrictModel):
    """The character the loop makes consistent."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    """Slug used in folder and model names (lowercase letters, digits, '-' and '_')."""
    trigger: str = Field(min_length=2)
    """Unique trigger phrase that the LoRA binds the identity to; always the caption's first tag."""
    description: str = ""
    """Free-text description, recorded in manifests and model cards."""
    traits: list[str] = []
    """Fixed traits that define the identity (hair, eyes, outfit details...)."""
    references: str | None = None
    """Folder of reference images: the identity anchor for filtering (relative to params).
    Unreadable or non-image files in it are skipped with a reason."""

    @field_validator("trigger")
    @classmethod
    def _visible_trigger(cls, value: str) -> str:
        if value != value.strip() or len(value.strip()) < 2:
            raise ValueError(
                "the trigger must be a visible phrase of at least 2 characters with no "
                f"leading or trailing spaces (got {value!r}), e.g. 'zxq kira'"
            )
        if "," in value:
            raise ValueError(f"the trigger cannot contain ',' (the tag separator): {value!r}")
        return value
