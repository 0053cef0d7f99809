"""Base-model families behind one interface (:class:`charloop.families.base.ModelFamily`).

``FAMILIES`` maps each ``base_model.family`` value to its module's ``FAMILY``; ``detect``
reads a model folder's ``model_index.json`` to tell which one a base is.
"""

from __future__ import annotations

from charloop.families.base import ModelFamily
from charloop.families.flux import FAMILY as FLUX_FAMILY
from charloop.families.sd15 import FAMILY as SD15_FAMILY
from charloop.families.sdxl import FAMILY as SDXL_FAMILY

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD15_FAMILY, SDXL_FAMILY, FLUX_FAMILY)}
"""Every family charloop serves, by ``base_model.family`` name."""


def get_family(name: str) -> ModelFamily:
    """The family called ``name``.

    Raises:
        ValueError: an unknown family name.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def family_of_pipeline_class(class_name: str) -> ModelFamily | None:
    """The family whose text-to-image (or ControlNet) pipeline class is ``class_name``."""
    for family in FAMILIES.values():
        if class_name in (family.pipeline_class, family.controlnet_pipeline_class):
            return family
    return None


def family_of_pipe(pipe: object) -> ModelFamily:
    """The family of a loaded pipeline (text-to-image or ControlNet), by its class.

    Raises:
        ValueError: a pipeline class no family serves.
    """
    family = family_of_pipeline_class(type(pipe).__name__)
    if family is None:
        raise ValueError(f"no model family serves a {type(pipe).__name__}")
    return family


__all__ = ["FAMILIES", "ModelFamily", "family_of_pipe", "family_of_pipeline_class", "get_family"]
