"""Traits: what every picture of a character must show, declared or discovered.

A character's traits are its declared ``character.traits`` plus the tags the trait scorer
finds on its references: artists list a few traits and let the references carry the rest
(a tag is discovered when its mean score over the references reaches
``traits.discover_score``). :func:`resolve_traits` computes them once per process (the
scorer and the references are read again only when they change); :func:`check_traits`
refuses, before any image is drawn, a trait the scorer cannot parse, a scorer that does
not load, and a declared trait every reference fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from charloop.core.errors import BadInput
from charloop.core.hashing import tree_digest
from charloop.models.trait_scorer import TraitScorer, load_trait_scorer
from charloop.params.project import Project
from charloop.params.schema import Character
from charloop.params.traits import TraitsParams
from charloop.scenes.references import load_references

logger = logging.getLogger(__name__)

_RESOLVED: dict[tuple[Any, ...], dict[str, TraitSet]] = {}


@dataclass(frozen=True)
class TraitSet:
    """One character's traits: declared, discovered on the references, and all of them."""

    declared: list[str]
    discovered: list[str] = field(default_factory=list)
    reference_scores: dict[str, float] = field(default_factory=dict)
    """Share of the references that show each trait (declared and discovered)."""

    @property
    def all(self) -> list[str]:
        """Declared traits first, then the discovered ones."""
        return [*self.declared, *self.discovered]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (stage facts, lineage tags, the review desk)."""
        return {
            "declared": self.declared,
            "discovered": self.discovered,
            "references_showing": {k: round(v, 3) for k, v in self.reference_scores.items()},
        }


class TraitError(BadInput):
    """A trait or trait scorer that cannot work: named with the file and the fix."""


def scorer_of(project: Project) -> TraitScorer:
    """The project's trait scorer (``traits.scorer``), loaded once per process.

    Raises:
        TraitError: the model does not load.
    """
    spec = _params(project).scorer
    ref = project.model_ref(spec.path)
    try:
        return load_trait_scorer(spec, ref)
    except Exception as exc:  # any loader failure is the same fix: point at a usable model
        where = (
            "a folder built by `charloop world build tagger`"
            if spec.type == "world"
            else "a CLIP model folder or hub id"
        )
        raise TraitError(
            f"traits.scorer.path: the {spec.type} trait scorer {ref!r} does not load "
            f"({type(exc).__name__}: {exc}); in {project.params_file}, point it at {where}"
        ) from exc


def _params(project: Project) -> TraitsParams:
    traits = project.params.traits
    if traits is None:
        raise ValueError("the params have no 'traits' section")
    return traits


def resolve_traits(project: Project) -> dict[str, TraitSet]:
    """Every member's traits (see the module docstring), computed once per process for the
    same scorer, settings and references.

    Raises:
        TraitError: see :func:`check_traits`.
    """
    settings = _params(project)
    folders = {m.name: _folder(project, m) for m in project.params.members}
    key = (
        settings.model_dump_json(),
        project.model_ref(settings.scorer.path),
        tuple((m.name, tuple(m.traits)) for m in project.params.members),
        tuple((n, tree_digest(f) if f else None) for n, f in folders.items()),
    )
    if key not in _RESOLVED:
        scorer = scorer_of(project)
        _RESOLVED[key] = {
            m.name: _member_traits(project, scorer, settings, m, folders[m.name])
            for m in project.params.members
        }
    return _RESOLVED[key]


def check_traits(project: Project) -> dict[str, TraitSet]:
    """Preflight: resolve every member's traits; refuse what cannot work (exit 2)."""
    resolved = resolve_traits(project)
    for name, traits in resolved.items():
        logger.info(
            "traits of %s: declared %s; discovered on the references %s",
            name, traits.declared or "none", traits.discovered or "none",
        )  # fmt: skip
    return resolved


def _folder(project: Project, member: Character) -> Path | None:
    return project.resolve(member.references) if member.references else None


def _member_traits(
    project: Project,
    scorer: TraitScorer,
    settings: TraitsParams,
    member: Character,
    folder: Path | None,
) -> TraitSet:
    for trait in member.traits:
        if scorer.parse(trait) is None:
            raise TraitError(
                f"character.traits: the {settings.scorer.type} trait scorer cannot read "
                f"{trait!r} (in {project.params_file}); " + _vocabulary_hint(scorer, settings)
            )
    images = load_references(folder).images if folder else []
    if not images:
        return TraitSet(list(member.traits))
    vocabulary = [t for t in scorer.vocabulary if scorer.parse(t) is not None]
    candidates = list(dict.fromkeys([*member.traits, *vocabulary]))
    scores = scorer.score(images, candidates)
    shown = (scores >= settings.min_score).mean(axis=0)
    share = dict(zip(candidates, (float(s) for s in shown), strict=True))
    mean = dict(zip(candidates, (float(s) for s in scores.mean(axis=0)), strict=True))
    for trait in member.traits:
        if share[trait] == 0:
            raise TraitError(
                f"character.traits: {trait!r} (in {project.params_file}) is shown by none of "
                f"the {len(images)} references in {folder}: the references contradict it; "
                "fix the trait or the references"
            )
    ignored = {" ".join(t.lower().split()) for t in settings.ignore}
    discovered = []
    if settings.discover:
        declared_parts = [scorer.parse(t) for t in member.traits]
        for tag in vocabulary:
            parts = scorer.parse(tag)
            if (
                mean[tag] >= settings.discover_score
                and tag not in ignored
                and (tag not in member.traits and parts not in declared_parts)
            ):
                discovered.append(tag)
        discovered = scorer.merge(discovered)  # the most specific tags the scorer has
        if merged := [t for t in discovered if t not in share]:
            rates = (scorer.score(images, merged) >= settings.min_score).mean(axis=0)
            share.update(zip(merged, (float(r) for r in rates), strict=True))
    kept = [*member.traits, *discovered]
    return TraitSet(list(member.traits), discovered, {t: share[t] for t in kept})


def _vocabulary_hint(scorer: TraitScorer, settings: TraitsParams) -> str:
    if settings.scorer.type == "world":
        return (
            "use one of its tags: " + ", ".join(repr(t) for t in scorer.vocabulary[:12]) + ", ..."
        )
    return "use a short, non-empty phrase that fits the scorer's text length"


def traits_identity(project: Project) -> dict[str, Any] | None:
    """What of the traits settings determines a stage's output (its fingerprint part)."""
    settings = project.params.traits
    if settings is None:
        return None
    return settings.model_dump() | {"scorer_ref": project.portable_ref(settings.scorer.path)}


def trait_scores(project: Project, images: list[Image.Image], traits: list[str]) -> np.ndarray:
    """``(n_images, n_traits)`` scores of ``traits`` on ``images`` by the project's scorer."""
    return scorer_of(project).score(images, traits)


def verdicts(scores: np.ndarray, traits: list[str], min_score: float) -> list[dict[str, bool]]:
    """Per image: trait -> shown (score at least ``min_score``)."""
    return [{t: bool(s >= min_score) for t, s in zip(traits, row, strict=True)} for row in scores]


def pass_rates(scores: np.ndarray, traits: list[str], min_score: float) -> dict[str, Any]:
    """Share of images showing each trait, and of images showing every one (``all``)."""
    if not len(scores) or not traits:
        return {"traits": {t: 0.0 for t in traits}, "all": 0.0, "images": len(scores)}
    shown = scores >= min_score
    return {
        "traits": {t: float(v) for t, v in zip(traits, shown.mean(0), strict=True)},
        "all": float(shown.all(1).mean()),
        "images": len(scores),
    }


def evaluation_traits(
    project: Project, names: list[tuple[str, ...]], lora: list[Image.Image], base: list[Image.Image]
) -> dict[str, Any] | None:
    """Trait pass rates of the evaluation's solo renders, with and without the LoRA.

    Args:
        names: Each render's characters (only solo renders are scored).
        lora: Renders with the LoRA.
        base: The same jobs without it.

    Returns:
        Per character ``{"traits", "lora", "base"}`` (see :func:`pass_rates`) and, over
        every character, ``all`` / ``all_base`` (share of renders showing every trait),
        ``mean`` (mean per-trait pass rate with the LoRA) and ``per_image`` (render index
        -> share of its traits shown with the LoRA, for the seed noise); None without a
        traits section.
    """
    settings = project.params.traits
    if settings is None:
        return None
    resolved = resolve_traits(project)
    out: dict[str, Any] = {"characters": {}}
    shown_all: dict[str, list[bool]] = {"lora": [], "base": []}
    means = []
    per_image: dict[int, float] = {}
    for name, traits in resolved.items():
        solo = [i for i, n in enumerate(names) if list(n) == [name]]
        if not solo or not traits.all:
            continue
        entry: dict[str, Any] = {"traits": traits.all}
        for key, images in (("lora", lora), ("base", base)):
            scores = trait_scores(project, [images[i] for i in solo], traits.all)
            entry[key] = pass_rates(scores, traits.all, settings.min_score)
            shown_all[key] += [
                bool(v) for v in np.all(scores >= settings.min_score, axis=1).ravel()
            ]
            if key == "lora":
                shares = (scores >= settings.min_score).mean(1)
                per_image |= {i: float(v) for i, v in zip(solo, shares, strict=True)}
        means += list(entry["lora"]["traits"].values())
        out["characters"][name] = entry
    if not means:
        return None
    out["all"] = float(np.mean(shown_all["lora"]))
    out["all_base"] = float(np.mean(shown_all["base"]))
    out["mean"] = float(np.mean(means))
    out["per_image"] = per_image
    return out
