"""The ``cast`` section: several characters trained to stay distinct in shared scenes."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, model_validator

from charloop.params.base import StrictModel
from charloop.params.character import Character


class JointScenes(StrictModel):
    """Scenes where two cast members appear together (training them apart makes them blend)."""

    pairs: Literal["all"] | list[tuple[str, str]] = "all"
    """Which pairs of members share scenes: 'all' pairs, or a list such as [[kira, milo]]."""
    max_prompts: int | None = Field(default=4, ge=1)
    """Context combinations per pair (a covering sample of the context matrix); null: all."""
    images_per_prompt: int = Field(default=2, ge=1)
    """Images per pair and context combination."""
    layout: Literal["none", "side_by_side"] = "side_by_side"
    """'side_by_side' places the first member on the left and the second on the right: the
    prompt says so and, with ``generate.controlnet``, the control image is two half-width
    control maps side by side. The filter then checks each half against its own member.
    'none' lets the model place them; the filter matches halves to members by similarity."""


class Cast(StrictModel):
    """Several characters trained together, each with its own trigger (use instead of
    ``character``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    """Slug of the cast, used in folder and model names."""
    members: list[Character] = Field(min_length=2)
    """The characters; each needs a distinct name and trigger."""
    joint: JointScenes = JointScenes()
    """Joint scenes of pairs of members."""
    lora: Literal["joint", "per_character"] = "joint"
    """'joint': one LoRA trained on every solo and joint image. 'per_character': one LoRA per
    member on its solo images, combined at inference with ``adapter_weights`` (the adapter
    folder holds each member's LoRA and their exact weighted combination)."""
    adapter_weights: dict[str, float] = {}
    """Per-member weight when combining per-character LoRAs (default 1.0 each)."""

    @model_validator(mode="after")
    def _members_distinct(self) -> Cast:
        names = [m.name for m in self.members]
        triggers = [m.trigger for m in self.members]
        for label, values in (("name", names), ("trigger", triggers)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"cast.members: {label} {repeated} repeated; make each unique")
        for a, b in itertools.permutations(triggers, 2):
            if a in b:
                raise ValueError(
                    f"cast.members: trigger {a!r} is part of {b!r}; a caption with {b!r} "
                    f"would also teach {a!r}. Pick triggers that do not contain each other"
                )
        unknown = sorted(set(self.adapter_weights) - set(names))
        if unknown:
            raise ValueError(f"cast.adapter_weights: unknown members {unknown}; known: {names}")
        if self.joint.pairs != "all":
            for pair in self.joint.pairs:
                missing = sorted(set(pair) - set(names))
                if missing or pair[0] == pair[1]:
                    raise ValueError(
                        f"cast.joint.pairs: {list(pair)} must name two different members of {names}"
                    )
        return self

    def pair_list(self) -> list[tuple[str, str]]:
        """The member pairs that get joint scenes, in declaration order."""
        if self.joint.pairs == "all":
            return list(itertools.combinations([m.name for m in self.members], 2))
        return [tuple(pair) for pair in self.joint.pairs]  # type: ignore[misc]

    def weight(self, member: str) -> float:
        """The inference weight of ``member``'s LoRA in the per-character combination."""
        return self.adapter_weights.get(member, 1.0)
