"""World base-model architectures, one per model family (see :mod:`.base`)."""

from __future__ import annotations

import importlib

from charloop_world.arch.base import Batch, Components, WorldArch

ARCH_FAMILIES = ("sd15", "sdxl", "flux")
"""Families a world base model can be built for."""


def get_arch(family: str) -> WorldArch:
    """The architecture of ``family``.

    Raises:
        ValueError: an unknown family (the message names the choices).
    """
    if family not in ARCH_FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose from {', '.join(ARCH_FAMILIES)}")
    module = importlib.import_module(f"charloop_world.arch.{family}")
    arch: WorldArch = module.ARCH
    return arch


__all__ = ["ARCH_FAMILIES", "Batch", "Components", "WorldArch", "get_arch"]
