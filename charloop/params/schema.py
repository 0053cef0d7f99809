"""The params.yaml schema: one pydantic model, every field documented.

Every section forbids unknown keys so a typo fails loudly instead of being ignored.
Pluggable backends (the image embedder) are discriminated unions on ``type``.
"""

from __future__ import annotations

import math
import re

from pydantic import Field, model_validator

from charloop.params.base import AXES, Axis, StrictModel
from charloop.params.base_model import BaseModelSpec
from charloop.params.caption import Captioner, CaptionParams, TemplateCaptioner, VlmCaptioner
from charloop.params.cast import Cast, JointScenes
from charloop.params.character import Character
from charloop.params.filter import (
    ClipEmbedder,
    Dinov2Embedder,
    Embedder,
    FilterParams,
    ReviewParams,
    WorldEmbedder,
)
from charloop.params.generate import ControlNetParams, GenerateParams, IPAdapterParams
from charloop.params.loop import LoopParams
from charloop.params.promote import PromoteParams
from charloop.params.scale import ScaleParams
from charloop.params.schedule import ScheduleParams
from charloop.params.train import TrainParams
from charloop.params.traits import TraitsParams

__all__ = [
    "AXES",
    "BaseModelSpec",
    "CaptionParams",
    "Captioner",
    "Cast",
    "Character",
    "ClipEmbedder",
    "ControlNetParams",
    "Dinov2Embedder",
    "Embedder",
    "FilterParams",
    "GenerateParams",
    "IPAdapterParams",
    "JointScenes",
    "PromoteParams",
    "ReviewParams",
    "StrictModel",
    "TemplateCaptioner",
    "TrainParams",
    "TraitsParams",
    "VlmCaptioner",
    "WorldEmbedder",
]


class Contexts(StrictModel):
    """Values of each context axis; prompts cover their combinations."""

    styles: list[str] = Field(min_length=1)
    """Rendering styles, e.g. 'flat colors', 'watercolor'."""
    settings: list[str] = Field(min_length=1)
    """Places and backgrounds, e.g. 'in a forest'."""
    attire: list[str] = Field(default=[""], min_length=1)
    """Outfits; use [''] to leave attire to the traits."""
    expressions: list[str] = Field(default=[""], min_length=1)
    """Facial expressions, e.g. 'smiling'."""
    poses: list[str] = Field(default=[""], min_length=1)
    """Body poses, e.g. 'standing', 'sitting'."""

    def axis_values(self) -> dict[str, list[str]]:
        """Values per axis, keyed by the singular axis name of ``AXES``."""
        return {
            "style": self.styles,
            "setting": self.settings,
            "attire": self.attire,
            "expression": self.expressions,
            "pose": self.poses,
        }


class HeldOutContext(StrictModel):
    """One evaluation context; unset axes are left out of the prompt."""

    style: str = ""
    """Style words in the prompt ('sketch style'); '' leaves the axis out."""
    setting: str = ""
    """Where the scene is ('in a library'); '' leaves the axis out."""
    attire: str = ""
    """What the character wears; '' leaves the axis out."""
    expression: str = ""
    """Facial expression ('surprised'); '' leaves the axis out."""
    pose: str = ""
    """Body pose ('sitting'); '' leaves the axis out."""


class EvaluateParams(StrictModel):
    """Evaluation on held-out contexts with fixed seeds."""

    contexts: list[HeldOutContext] = Field(min_length=1)
    """Held-out contexts, ideally absent from training prompts."""
    seeds: list[int] = Field(default=[1000, 1001], min_length=1)
    """Fixed seeds; every context is rendered once per seed."""
    embedder: Embedder = ClipEmbedder()
    """Image embedding backend for identity consistency."""
    seen_axes: list[Axis] = []
    """Axes whose evaluation values may appear in training captions. By default every
    evaluation value the generation matrix lacks is claimed unseen, and a training caption
    (generated or reference) that contains one is refused; an axis named here is no longer
    claimed unseen (metrics.json and the validity report say so)."""


REGISTRY_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
"""Allowed registry names: safe in MLflow filter strings, URLs and folder names."""


class RegistryParams(StrictModel):
    """MLflow tracking and model registry."""

    tracking_uri: str | None = None
    """MLflow tracking URI (http://mlflow:5000 for a shared server); null: the
    CHARLOOP_TRACKING_URI environment variable, else 'sqlite:///.charloop/mlflow.db'.
    (Not MLFLOW_TRACKING_URI: mlflow.set_tracking_uri rewrites that one in-process.)
    Relative sqlite paths are resolved against the params file."""
    artifact_location: str = ".charloop/mlartifacts"
    """Artifact store for new experiments (a folder, s3://..., or mlflow-artifacts:/...)."""
    experiment: str | None = Field(default=None, pattern=REGISTRY_NAME, max_length=128)
    """Experiment name; default 'charloop-<character>'. Letters, digits, '.', '_', '-'."""
    model_name: str | None = Field(default=None, pattern=REGISTRY_NAME, max_length=128)
    """Registered model name; default '<character>-lora'. Letters, digits, '.', '_', '-'
    (quotes and slashes break MLflow's search filters and artifact paths)."""


class DvcParams(StrictModel):
    """DVC versioning of datasets and adapters."""

    enabled: bool = True
    """Track every iteration's data and adapter with DVC."""
    remote: str | None = ".charloop/dvc-remote"
    """Remote URL or folder for `dvc push` (s3://bucket/path works); null disables pushing."""


class Params(StrictModel):
    """Root of params.yaml."""

    character: Character | None = None
    """The character the loop makes consistent (or use ``cast`` for several)."""
    cast: Cast | None = None
    """Several characters trained to stay distinct in shared scenes (instead of
    ``character``)."""
    contexts: Contexts
    base_model: BaseModelSpec = BaseModelSpec()
    generate: GenerateParams = GenerateParams()
    traits: TraitsParams | None = None
    """Traits as checks (declared and discovered from the references), scored on every
    candidate, evaluation image and kept set; null: no trait checks."""
    filter: FilterParams = FilterParams()
    review: ReviewParams = ReviewParams()
    caption: CaptionParams = CaptionParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams
    loop: LoopParams = LoopParams()
    registry: RegistryParams = RegistryParams()
    dvc: DvcParams = DvcParams()
    promote: PromoteParams = PromoteParams()
    schedule: ScheduleParams = ScheduleParams()
    scale: ScaleParams = ScaleParams()

    @model_validator(mode="after")
    def _one_subject(self) -> Params:
        if (self.character is None) == (self.cast is None):
            raise ValueError(
                "set exactly one of 'character' (one character) or 'cast' (several); "
                f"got {'both' if self.character else 'neither'}"
            )
        if self.cast is not None and self.generate.ip_adapter is not None:
            raise ValueError(
                "generate.ip_adapter conditions every image on one reference set, so it cannot "
                "keep cast members apart: remove generate.ip_adapter for a cast"
            )
        return self

    @model_validator(mode="after")
    def _round_metric_measurable(self) -> Params:
        references = all(m.references for m in self.members)
        if why := self.loop.unmeasurable(references, self.traits is not None):
            raise ValueError(why)
        return self

    @model_validator(mode="after")
    def _traits_check_has_scorer(self) -> Params:
        if self.filter.check("traits") is not None and self.traits is None:
            raise ValueError(
                "the traits discriminator needs a trait scorer: add a 'traits:' section "
                "(e.g. traits: {scorer: {type: world, path: models/world-tagger}}) or remove "
                "{type: traits} from filter.discriminators"
            )
        return self

    @model_validator(mode="after")
    def _trigger_embedding_supported(self) -> Params:
        why = "a cast has several triggers" if self.cast is not None else None
        if self.base_model.family == "flux":
            why = "it works with CLIP text encoders only (SD1.5, SDXL): FLUX's T5 reads text"
        if self.train.trigger_embedding.enabled and why:
            raise ValueError(f"train.trigger_embedding: {why}; set its enabled: false")
        return self

    @model_validator(mode="after")
    def _min_kept_reachable(self) -> Params:
        if self.filter.min_kept > (produced := self.images_per_iteration()):
            raise ValueError(
                f"filter.min_kept={self.filter.min_kept} is more than the {produced} images "
                "an iteration generates; lower filter.min_kept or raise "
                "generate.images_per_prompt / generate.max_prompts (or add contexts)"
            )
        return self

    @model_validator(mode="after")
    def _template_placeholders_known(self) -> Params:
        allowed = {"trigger", "traits", "description", *AXES}
        used = set(re.findall(r"{(\w+)}", self.generate.prompt_template))
        unknown = sorted(used - allowed)
        if unknown:
            raise ValueError(
                f"generate.prompt_template uses unknown placeholders {unknown}; "
                f"allowed: {sorted(allowed)}"
            )
        if "{trigger}" not in self.generate.prompt_template:
            raise ValueError("generate.prompt_template must contain {trigger}")
        if self.generate.ip_adapter is not None and not all(m.references for m in self.members):
            raise ValueError(
                "generate.ip_adapter needs character.references (every cast member's): set it "
                "to a folder of reference images, or remove generate.ip_adapter"
            )
        if self.caption.include_references and not all(m.references for m in self.members):
            raise ValueError(
                "caption.include_references needs character.references (every cast "
                "member's): set it to a folder of reference images, or turn it off"
            )
        return self

    @property
    def members(self) -> list[Character]:
        """The characters: the one ``character``, or the cast's members."""
        if self.cast is not None:
            return list(self.cast.members)
        assert self.character is not None  # validated: exactly one of character and cast
        return [self.character]

    @property
    def subject(self) -> str:
        """The character's or the cast's name (folders, model and experiment names)."""
        return self.cast.name if self.cast is not None else self.members[0].name

    @property
    def trigger_label(self) -> str:
        """The trigger (one character) or ``name=trigger`` per member joined by '; ' (cast),
        as recorded in lineage tags and adapter headers."""
        if self.cast is None:
            return self.members[0].trigger
        return "; ".join(f"{m.name}={m.trigger}" for m in self.members)

    def member(self, name: str) -> Character:
        """The character called ``name``.

        Raises:
            KeyError: no such member.
        """
        for character in self.members:
            if character.name == name:
                return character
        raise KeyError(f"no character named {name!r}; known: {[m.name for m in self.members]}")

    def images_per_iteration(self) -> int:
        """How many images one iteration's generate stage renders (what filter can keep)."""
        combos = math.prod(len(v) for v in self.contexts.axis_values().values())
        gen, joint = self.generate, self.cast.joint if self.cast else None
        count = len(self.members) * min(combos, gen.max_prompts or combos) * gen.images_per_prompt
        if self.cast is not None and joint is not None:
            per_pair = min(combos, joint.max_prompts or combos) * joint.images_per_prompt
            count += len(self.cast.pair_list()) * per_pair
        return count

    @property
    def model_name(self) -> str:
        """Registered model name."""
        return self.registry.model_name or f"{self.subject}-lora"

    @property
    def experiment_name(self) -> str:
        """MLflow experiment name."""
        return self.registry.experiment or f"charloop-{self.subject}"
