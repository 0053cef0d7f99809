"""Promotion settings of params.yaml: the gates a version must pass to reach production."""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import Field, field_validator

from charloop.params.base import StrictModel


class PromoteParams(StrictModel):
    """Gates and approval for ``charloop promote``."""

    min_metrics: dict[str, float] = {}
    """Lowest allowed value per metric (e.g. {identity_consistency: 0.6})."""
    max_metrics: dict[str, float] = {}
    """Highest allowed value per metric (e.g. {nearest_train_similarity: 0.95})."""
    max_regression: dict[str, float] = {"identity_consistency": 0.02}
    """How much lower than the current production version a metric may be."""
    require_approval: bool = False
    """Pause the promotion flow for a person's approval (approver, comment)."""
    approval_timeout_s: int = Field(default=3600, ge=1)
    """How long to wait for approval before refusing."""
    approval_poll_s: int = Field(default=10, ge=1)
    """How often the paused promotion checks for an answer."""
    release_dir: str = "releases"
    """Where the production adapter is exported (both formats and a model card): a folder
    inside the project, relative to the params file (no absolute path, no '..')."""

    @field_validator("release_dir")
    @classmethod
    def _inside_project(cls, value: str) -> str:
        path = PurePosixPath(value.replace("\\", "/"))
        if not value.strip() or path.is_absolute() or ".." in path.parts or value.startswith("~"):
            raise ValueError(
                f"release_dir {value!r} must be a folder inside the project, relative to the "
                "params file, without '..' (e.g. 'releases'); copy releases elsewhere yourself"
            )
        return value
