"""Which family a base model is, and whether the declared one agrees.

A diffusers folder (or hub repository) says what it is in ``model_index.json``
(``_class_name``) and how it was trained in ``scheduler/scheduler_config.json``
(``prediction_type``, ``rescale_betas_zero_snr``). Reading those two small files is
enough to refuse an SDXL folder declared as SD1.5, a folder missing a text encoder, or a
v-prediction base declared as epsilon, before any weight is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from charloop.core.errors import BadInput
from charloop.families import FAMILIES, ModelFamily, family_of_pipeline_class, get_family


class FamilyMismatch(BadInput, ValueError):
    """The declared family (or prediction type) disagrees with the model's own config."""


@dataclass(frozen=True)
class BaseFacts:
    """What a base model's config files say about it."""

    pipeline_class: str | None
    components: tuple[str, ...]
    prediction_type: str | None  # None: the scheduler config does not say
    zero_terminal_snr: bool


def _read_json(ref: str, name: str, revision: str | None) -> dict[str, Any] | None:
    local = Path(ref) / name
    if Path(ref).is_dir():
        return json.loads(local.read_text(encoding="utf-8")) if local.is_file() else None
    try:  # a hub id: fetch just this file (cached by huggingface_hub)
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(ref, name, revision=revision)
    except Exception:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


@lru_cache(maxsize=32)
def base_facts(ref: str, revision: str | None = None) -> BaseFacts:
    """The facts of diffusers folder or hub repository ``ref`` (None/empty where unknown)."""
    index = _read_json(ref, "model_index.json", revision) or {}
    scheduler = _read_json(ref, "scheduler/scheduler_config.json", revision) or {}
    components = tuple(
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and value[0] is not None
    )
    return BaseFacts(
        pipeline_class=index.get("_class_name"),
        components=components,
        prediction_type=scheduler.get("prediction_type"),
        zero_terminal_snr=bool(scheduler.get("rescale_betas_zero_snr", False)),
    )


def resolve_family(declared: str, ref: str, revision: str | None = None) -> ModelFamily:
    """The family of base ``ref``: the declared one, checked against the folder, or the
    folder's own when ``declared`` is 'auto'.

    Raises:
        FamilyMismatch: the folder is another family, lacks one of the family's text
            encoders, or (with 'auto') names no pipeline charloop knows.
    """
    facts = base_facts(ref, revision)
    found = family_of_pipeline_class(facts.pipeline_class) if facts.pipeline_class else None
    if declared == "auto":
        if found is None:
            known = ", ".join(f"{f.pipeline_class} ({n})" for n, f in FAMILIES.items())
            raise FamilyMismatch(
                f"base_model.family is 'auto' but {ref} names pipeline "
                f"{facts.pipeline_class or 'none (no model_index.json)'}; charloop knows "
                f"{known}. Declare base_model.family, or point base_model.path at a "
                "diffusers folder"
            )
        family = found
    else:
        family = get_family(declared)
        if found is not None and found is not family:
            raise FamilyMismatch(
                f"base_model.family is {declared!r} but {ref} is a {facts.pipeline_class} "
                f"({found.name}); set base_model.family: {found.name} (or auto)"
            )
    if facts.pipeline_class is not None:
        needed = (*family.text_encoders, *family.tokenizers)
        missing = [c for c in needed if c not in facts.components]
        if Path(ref).is_dir():  # listed in model_index.json but the folder is gone
            missing += [c for c in needed if c not in missing and not (Path(ref) / c).is_dir()]
        if missing:
            raise FamilyMismatch(
                f"{ref} is declared {family.name} but has no {', '.join(missing)} "
                f"(an {family.name} base needs {', '.join(family.text_encoders)}); "
                "the folder is incomplete"
            )
    return family


def check_prediction(declared: str, ref: str, revision: str | None = None) -> str:
    """The prediction type to train and sample with: the scheduler config's, or the
    declared one when the config does not say.

    Raises:
        FamilyMismatch: the declared type contradicts the scheduler config.
    """
    said = base_facts(ref, revision).prediction_type
    if declared == "auto":
        return said or "epsilon"
    if said is not None and said != declared:
        raise FamilyMismatch(
            f"base_model.prediction is {declared!r} but {ref}'s scheduler config says "
            f"{said!r}; set base_model.prediction: {said} (or auto)"
        )
    return declared


@dataclass(frozen=True)
class ResolvedBase:
    """A base model's family and noise-schedule facts, checked against its config."""

    family: ModelFamily
    prediction_type: str
    zero_terminal_snr: bool

    def scheduler_overrides(self, config: Any) -> dict[str, Any]:
        """``from_config`` overrides that make a scheduler match these facts ({} if it does)."""
        out: dict[str, Any] = {}
        if config.get("prediction_type", "epsilon") != self.prediction_type:
            out["prediction_type"] = self.prediction_type
        if bool(config.get("rescale_betas_zero_snr", False)) != self.zero_terminal_snr:
            out["rescale_betas_zero_snr"] = self.zero_terminal_snr
            if self.zero_terminal_snr:  # sample from the last (pure-noise) timestep
                out["timestep_spacing"] = "trailing"
        return out


def resolve_base(spec: Any, ref: str) -> ResolvedBase:
    """Family, prediction type and terminal-SNR handling of ``base_model`` params ``spec``
    whose ``path`` resolved to ``ref``.

    Raises:
        FamilyMismatch: (a BadInput) a declared value the model's config contradicts.
    """
    family = resolve_family(spec.family, ref, spec.revision)
    prediction = check_prediction(spec.prediction, ref, spec.revision)
    ztsnr = spec.zero_terminal_snr
    if ztsnr is None:
        ztsnr = base_facts(ref, spec.revision).zero_terminal_snr
    return ResolvedBase(family, prediction, bool(ztsnr))
