"""The caption stage's params: tags, reference art, and the caption backend."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from charloop.params.base import Axis, StrictModel


class TemplateCaptioner(StrictModel):
    """Captions from the context that produced each image only (no model)."""

    type: Literal["template"] = "template"


class VlmCaptioner(StrictModel):
    """A vision-language captioning model (BLIP, GIT, Florence...) through transformers.

    Its description is appended after the template tags; the trigger stays first.
    """

    type: Literal["vlm"] = "vlm"
    path: str
    """Hub id (e.g. 'Salesforce/blip-image-captioning-base') or local folder with the model
    and its processor (AutoProcessor + AutoModelForImageTextToText)."""
    prompt: str | None = None
    """Optional text prefix for conditional captioning models (e.g. 'a picture of')."""
    max_new_tokens: int = Field(default=30, ge=1, le=200)
    """Longest description, in tokens."""
    batch_size: int = Field(default=8, ge=1)
    """Images per captioning call."""


Captioner = Annotated[TemplateCaptioner | VlmCaptioner, Field(discriminator="type")]


class IterationPolicy(StrictModel):
    """Each dataset holds only its own iteration's kept images (and the references)."""

    policy: Literal["iteration"] = "iteration"


class AccumulatePolicy(StrictModel):
    """Each dataset draws from every iteration of its round so far: the best images
    against the references (a person's keep first), capped per scene context; an older
    image stays until a newer one of its context scores higher."""

    policy: Literal["accumulate"] = "accumulate"
    per_context: int = Field(default=2, ge=1)
    """At most this many generated images per scene context (who is in it + its
    style/setting/attire/expression/pose combination), so no context dominates."""
    max_images: int | None = Field(default=None, ge=1)
    """At most this many generated images in all (the best first), or null."""
    older: Literal["as_good", "all"] = "as_good"
    """Which earlier images compete: 'as_good' admits only those scoring at least the
    weakest image this iteration's filter kept (the bar rises as the LoRA improves, so an
    earlier round's weaker pictures leave); 'all' lets every earlier image compete."""
    max_layout_similarity: float | None = Field(default=0.85, gt=0, le=1)
    """Within one scene context, an image whose edge layout (pose, framing: see the
    evaluation's ``layout_diversity``) has a cosine above this with an image already
    chosen is passed over for the next one: the dataset keeps poses and framings varied
    instead of feeding one picture back. Null: no layout check."""


class LeaveFree(StrictModel):
    """Captions that leave some context axes out, so the LoRA keeps them free.

    Every training caption names the image's pose and expression, so a prompt that leaves
    them out is something the LoRA never saw: it falls back on whatever the trigger came to
    mean, and one pose and one expression come back for every seed. Leaving the tag out of
    a share of the captions (as kohya's ``caption_tag_dropout_rate`` does, but fixed per
    image, so the dataset, its digest and a kohya export are what was trained) trains that
    prompt on the data's own mix of values.
    """

    axes: list[Axis] = Field(default_factory=list)
    """Axes whose tag a share of the captions leaves out (e.g. [pose, expression]); each
    axis is drawn independently per image. Empty: every caption names every axis."""
    share: float = Field(default=0.25, ge=0, le=1)
    """Share of the images naming each value of a freed axis whose caption leaves it out
    (rounded; references and generated images counted apart), chosen by a hash of the
    image id: the untagged captions keep the dataset's mix of values."""


DatasetPolicy = Annotated[IterationPolicy | AccumulatePolicy, Field(discriminator="policy")]


class CaptionParams(StrictModel):
    """Caption files written next to each training image."""

    repeats: int = Field(default=1, ge=1)
    """Kohya folder repeats (the folder is named '<repeats>_<trigger>'): how often each
    image is drawn per epoch, by kohya and by charloop's trainer alike."""
    include_traits: bool = False
    """Caption the fixed traits too; off by default so the trigger absorbs them."""
    include_references: bool = False
    """Add each character's reference images (``character.references``) to every
    iteration's dataset, captioned with its trigger (and traits, with include_traits): the
    first LoRA learns the character from the art itself, as an artist's first LoRA does,
    and later ones keep it as an anchor while the generated images add the contexts."""
    reference_repeats: int = Field(default=1, ge=1)
    """Repeats of the reference images (their subset's ``num_repeats``): weight of the
    references against the generated images."""
    separator: str = ", "
    """Separator between tags."""
    dataset: DatasetPolicy = AccumulatePolicy()
    """Which generated images each iteration trains on: ``{policy: accumulate}`` (the best
    of every iteration of the round so far, ranked against the references and capped per
    context) or ``{policy: iteration}`` (only that iteration's kept images)."""
    leave_free: LeaveFree = LeaveFree()
    """Context axes a share of the captions leaves out, so prompts that leave them out
    still vary them across seeds (see :class:`LeaveFree`)."""
    captioner: Captioner = TemplateCaptioner()
    """Caption backend: 'template' (context tags only) or 'vlm' (tags + a model's
    description of the image)."""
