"""Params for pluggable backends: image embedders and filter discriminators."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from charloop.params.base import StrictModel


class ClipEmbedder(StrictModel):
    """CLIP image (and text) embeddings through transformers."""

    type: Literal["clip"] = "clip"
    path: str = "models/tiny-clip"
    """Hub id (e.g. 'openai/clip-vit-base-patch32') or local folder with a CLIPModel."""


class Dinov2Embedder(StrictModel):
    """DINOv2 CLS embeddings through transformers (image only: no prompt fidelity)."""

    type: Literal["dinov2"] = "dinov2"
    path: str = "facebook/dinov2-small"
    """Hub id or local folder with a Dinov2Model."""


class WorldEmbedder(StrictModel):
    """The identity embedder trained on the procedural world (``charloop_world``): the
    default for the embedded world model; image only (no prompt fidelity)."""

    type: Literal["world"] = "world"
    path: str = "models/world-embedder"
    """Local folder written by ``charloop world build embedder``."""


Embedder = Annotated[ClipEmbedder | Dinov2Embedder | WorldEmbedder, Field(discriminator="type")]


class DuplicatesCheck(StrictModel):
    """Rejects exact copies (same sha256) and perceptual near-duplicates (dHash)."""

    type: Literal["duplicates"] = "duplicates"
    max_distance: int = Field(default=3, ge=0, le=64)
    """Images whose 64-bit dHashes differ in at most this many bits are duplicates."""


class QualityCheck(StrictModel):
    """Rejects dark, washed-out, flat or blurry images from pixel statistics."""

    type: Literal["quality"] = "quality"
    min_contrast: float = Field(default=0.02, ge=0)
    """Minimum luminance standard deviation (0-1 scale)."""
    min_sharpness: float = Field(default=1e-4, ge=0)
    """Minimum variance of the Laplacian of luminance (0-1 scale); lower means blurry."""
    exposure_range: tuple[float, float] = (0.05, 0.95)
    """Allowed mean luminance (0-1): darker or brighter images are rejected."""

    @model_validator(mode="after")
    def _exposure_ordered(self) -> QualityCheck:
        low, high = self.exposure_range
        if not 0 <= low < high <= 1:
            raise ValueError("exposure_range must be [low, high] with 0 <= low < high <= 1")
        return self


class ScoreThreshold(StrictModel):
    min_similarity: float | None = Field(default=None, ge=-1, le=1)
    """Absolute cosine floor (depends on the embedder: set it per model), or null."""
    max_outlier_z: float | None = Field(default=2.0, gt=0)
    """Reject scores more than this many standard deviations below the batch mean, or null."""
    keep_best: float | None = Field(default=None, gt=0, le=1)
    """Keep only this fraction of the batch, best scores first (The Chosen One's selection
    of the most cohesive subset), or null. Ties at the cut are kept."""
    rank_among: Literal["all", "passing"] = "all"
    """What ``keep_best`` and the outlier z-score are taken over: every candidate, or only
    those no earlier discriminator rejected (after a traits check: the best of the
    images that show every trait)."""


class IdentityCheck(ScoreThreshold):
    """Embedding similarity to the character: to its reference images, or without
    references to the centroid of the batch's most cohesive cluster."""

    type: Literal["identity"] = "identity"
    score: Literal["nearest_references", "centroid"] = "nearest_references"
    """With references: 'nearest_references' scores the mean cosine to the ``nearest``
    most similar reference images (an image must match whole pictures of the character,
    not the blur of their average: a picture with the right outfit but the wrong eyes is
    close to no reference); 'centroid' scores the cosine to their mean."""
    nearest: int = Field(default=3, ge=1)
    """How many references 'nearest_references' averages over (all, when there are fewer)."""
    cluster_divisor: int = Field(default=20, ge=1)
    """k-means uses k = max(1, images // cluster_divisor) clusters (The Chosen One: 20)."""
    min_cluster_size: int = Field(default=3, ge=1)
    """Clusters smaller than this cannot be the anchor (unless none is large enough)."""


class PromptAdherenceCheck(ScoreThreshold):
    """Image-text similarity to the image's prompt without the trigger (needs a CLIP embedder)."""

    type: Literal["prompt_adherence"] = "prompt_adherence"


class TraitsCheck(StrictModel):
    """Every trait (declared and discovered, see the ``traits`` section) scored on every
    image; an image missing more than ``max_missed`` of them is rejected, and its report
    names each trait it missed."""

    type: Literal["traits"] = "traits"
    max_missed: int = Field(default=0, ge=0)
    """How many traits an image may miss and still pass (0: it must show every one)."""
    keep_best: float | None = Field(default=None, gt=0, le=1)
    """Of the images that pass, keep only this fraction, the surest first: ranked by the
    joint trait score (the sum of the log scores, recorded as ``trait certainty``), so an
    image that barely shows one trait goes before one that clearly shows all; null keeps
    every passing image. Ties at the cut are kept."""


Discriminator = Annotated[
    DuplicatesCheck | QualityCheck | IdentityCheck | PromptAdherenceCheck | TraitsCheck,
    Field(discriminator="type"),
]


class FilterParams(StrictModel):
    """Automatic discriminators, run in order."""

    discriminators: list[Discriminator] = [DuplicatesCheck(), QualityCheck(), IdentityCheck()]
    """Checks, each a scored rule with its own thresholds; reasons are recorded per image."""
    embedder: Embedder = ClipEmbedder()
    """Image embedder for the identity and prompt-adherence checks."""
    embed_batch_size: int = Field(default=64, ge=1)
    """Images per embedder forward pass."""
    min_kept: int = Field(default=1, ge=1)
    """Fewer kept images than this stops the iteration with a clear error."""

    @model_validator(mode="after")
    def _prompt_check_needs_text_tower(self) -> FilterParams:
        wants_text = any(d.type == "prompt_adherence" for d in self.discriminators)
        if wants_text and self.embedder.type != "clip":
            raise ValueError(
                "the prompt_adherence discriminator needs a text tower: set filter.embedder "
                "to {type: clip, ...} or remove prompt_adherence"
            )
        return self

    def check(self, kind: str) -> StrictModel | None:
        """The configured discriminator of type ``kind``, if any."""
        return next((d for d in self.discriminators if d.type == kind), None)


class ReviewParams(StrictModel):
    """The optional human review gate between filter and caption.

    When enabled the loop pauses after the filter (a Prefect pause with a form listing the
    candidates) unless decisions were already applied with ``charloop review apply``.
    """

    enabled: bool = False
    """Pause for a person's accept/reject decisions after the automatic filter."""
    timeout_s: int = Field(default=3600, ge=1)
    """How long the paused flow waits for decisions."""
    on_timeout: Literal["keep_automatic", "fail"] = "keep_automatic"
    """With no decisions in time: keep the filter's decisions, or stop the run (re-run after
    `charloop review apply`; finished stages are reused)."""
    poll_interval_s: int = Field(default=10, ge=1)
    """How often the paused flow checks for decisions."""
