"""Trait settings of params.yaml: which scorer reads traits, discovery and aimed generation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from charloop.params.base import StrictModel

DEFAULT_VOCABULARY: list[str] = [
    *(f"{c} hair" for c in ("black", "brown", "blonde", "red", "white", "blue", "pink", "teal")),
    *("short hair", "long hair", "ponytail", "twintails", "braid", "bangs"),
    *(f"{c} eyes" for c in ("blue", "green", "brown", "red", "amber", "purple")),
    *("glasses", "hat", "scarf", "earrings", "hair ribbon", "freckles", "beard"),
    *("jacket", "dress", "robe", "armor", "hoodie", "school uniform", "cape"),
]
"""Tags the CLIP scorer proposes for the references when no ``vocabulary`` is given."""


class WorldTraitScorer(StrictModel):
    """The world tagger (``charloop world build tagger``): one head per world attribute;
    traits are its tag phrases ('teal hair', 'wearing a hat', 'pink jacket')."""

    type: Literal["world"] = "world"
    path: str = "models/world-tagger"
    """Folder of the tagger (relative to the params file)."""


class ClipTraitScorer(StrictModel):
    """Zero-shot CLIP (``transformers``): a trait's score is how much closer the image is
    to 'a picture of a character with <trait>' than to the neutral prompt, as a
    probability (softmax of the two cosines at CLIP's logit scale)."""

    type: Literal["clip"] = "clip"
    path: str = "models/tiny-clip"
    """CLIP model folder or hub id, e.g. 'openai/clip-vit-large-patch14'."""
    template: str = "a picture of a character with {trait}"
    """Prompt a trait is scored with; must contain '{trait}'."""
    neutral: str = "a picture of a character"
    """The prompt each trait prompt is compared against."""
    vocabulary: list[str] = Field(default_factory=lambda: list(DEFAULT_VOCABULARY))
    """Candidate tags that reference tagging (``discover``) proposes."""

    @field_validator("template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{trait}" not in value:
            raise ValueError(f"the template must contain '{{trait}}' (got {value!r})")
        return value


TraitScorer = Annotated[WorldTraitScorer | ClipTraitScorer, Field(discriminator="type")]


class AimParams(StrictModel):
    """Generation aimed at what failed: while the LoRA a round renders with fails a trait,
    part of each prompt's images describe the character in words instead (every trait,
    no trigger, the base model alone); captions do not name the discovered traits, so
    training binds them to the trigger. See docs/traits.md for why and the measurements."""

    share: float = Field(default=0.75, ge=0, le=1)
    """Share of each prompt's images that are described (0: off)."""
    min_failure: float = Field(default=0.1, ge=0, le=1)
    """A trait fails when it is missing from at least this share of the evaluation's
    images with the LoRA; a round with no failing trait renders every image with the LoRA.
    Before the first evaluation, every discovered trait counts as failing."""


class TraitsParams(StrictModel):
    """Traits as first-class checks: the declared ``character.traits`` plus the tags every
    reference shows, scored on every candidate (the ``traits`` discriminator), on every
    evaluation image and on the kept set; aimed generation names the failing ones."""

    scorer: TraitScorer = WorldTraitScorer()
    """What reads traits from a picture: the world tagger or zero-shot CLIP."""
    discover: bool = True
    """Tag the references and add what they show (``discover_score``) to the traits."""
    discover_score: float = Field(default=0.5, gt=0, lt=1)
    """A tag becomes a trait when its mean score over the references is at least this: a
    tagger that misreads a few references (small eyes, a dark style) does not hide a
    trait the set shows."""
    min_score: float = Field(default=0.5, gt=0, lt=1)
    """A trait passes on an image when the scorer gives it at least this probability."""
    ignore: list[str] = []
    """Discovered tags to leave out (declared traits are always kept)."""
    aim: AimParams = AimParams()
    """Aimed generation."""
