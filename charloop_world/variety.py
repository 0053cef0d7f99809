"""Variety across seeds for what the prompt leaves free, read by the oracle.

A LoRA can raise consistency by drawing one picture for every seed: the same pose, the
same expression, the same framing. The validity report measures that on prompts that
leave pose and expression out (each held-out context with its pose and expression blank):

- ``pose_variety`` / ``expression_variety``: the entropy of the oracle's reads of pose (or
  expression) across one context's seeds, as a share of the largest possible (1: the seeds
  spread evenly over every value; 0: every seed shows the same one), averaged over contexts;
- ``layout_variety``: the evaluation's ``layout_diversity`` (edge layouts, 1 - mean pairwise
  cosine) on the same images;
- ``context_fidelity``: on the full held-out prompts, the share of (image, named context
  axis) pairs where the oracle reads the value the prompt asked for: a LoRA that keeps
  drawing its training pose when asked for another loses it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from PIL import Image

from charloop.core.image_layout import layout_features
from charloop.scenes.prompts import context_id
from charloop.scenes.render import ImageJob
from charloop.stages.evaluate.metrics import layout_metrics, standard_error
from charloop_world.attributes import (
    CONTEXT_VALUES,
    EXPRESSIONS,
    Context,
    character_from_dict,
    phrase,
    sample_character,
)
from charloop_world.render import render as render_world

FREE_AXES = ("pose", "expression")
"""What the variety prompts leave out."""

CONTEXT_AXES = ("setting", "style", "pose", "expression")


def world_value(axis: str, phrase_text: str) -> str | None:
    """The world value whose prompt phrase is ``phrase_text`` ('in a library' -> 'library')."""
    return next((v for v in CONTEXT_VALUES[axis] if phrase(axis, v) == phrase_text), None)


def free_jobs(jobs: list[ImageJob]) -> list[ImageJob]:
    """The same scenes and seeds with pose and expression left to the model."""
    out = []
    for job in jobs:
        context = {axis: value for axis, value in job.context.items() if axis not in FREE_AXES}
        prompt = ", ".join(
            part
            for part in job.prompt.split(", ")
            if part not in {job.context.get(axis) for axis in FREE_AXES}
        )
        out.append(
            ImageJob(
                f"free-{job.id}",
                prompt,
                job.negative_prompt,
                job.seed,
                context,
                job.characters,
            )
        )
    return out


def normalised_entropy(values: list[str], choices: int) -> float:
    """Entropy of ``values`` over ``choices`` possible values, as a share of log(choices)."""
    if choices < 2 or not values:
        return 0.0
    counts = np.array(list(Counter(values).values()), dtype=float)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(choices))


def variety(
    reads: list[dict[str, str]],
    images: list[Image.Image],
    jobs: list[ImageJob],
    vocabulary: dict[str, list[str]],
) -> dict[str, float]:
    """Pose, expression and layout variety across the seeds of each context, each with its
    noise (``*_noise``: the standard error across contexts)."""
    groups = [context_id(job.context) for job in jobs]
    out: dict[str, float] = {}
    for axis in FREE_AXES:
        per_context = [
            normalised_entropy(
                [read[axis] for read, g in zip(reads, groups, strict=True) if g == group],
                len(vocabulary.get(axis, [])),
            )
            for group in dict.fromkeys(groups)
        ]
        out[f"{axis}_variety"] = float(np.mean(per_context)) * 100
        if len(per_context) >= 2:
            out[f"{axis}_variety_noise"] = standard_error(per_context) * 100
    layout = layout_metrics(layout_features(images), groups)
    out["layout_variety"] = layout.get("layout_diversity", float("nan")) * 100
    if "layout_diversity_noise" in layout:
        out["layout_variety_noise"] = layout["layout_diversity_noise"] * 100
    return out


def context_fidelity(reads: list[dict[str, str]], jobs: list[ImageJob]) -> float:
    """Share (%) of the named context values the oracle reads back."""
    hits = total = 0
    for read, job in zip(reads, jobs, strict=True):
        for axis, value in job.context.items():
            if value and axis in CONTEXT_AXES and (wanted := world_value(axis, value)):
                total += 1
                hits += read.get(axis) == wanted
    return 100.0 * hits / total if total else float("nan")


def variety_columns(row: dict[str, Any]) -> list[str]:
    """The report's variety cells of one model."""
    keys = ("layout_variety", "pose_variety", "expression_variety", "context_fidelity")
    return [f"{row[k]:.1f}" if isinstance(row.get(k), float) else "-" for k in keys]


VARIETY_KEYS = ("layout_variety", "pose_variety", "expression_variety")
KEPT_ENOUGH = 90.0
"""A round keeps variety when each measure is at least this share (%) of the baseline's,
or falls short by no more than the noise."""


def variety_kept(row: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Each variety of ``row`` as a share (%) of ``baseline``'s (left out where the
    baseline has none: a measure that is 0 without a LoRA cannot be lost)."""
    return {
        key: 100.0 * row[key] / baseline[key]
        for key in VARIETY_KEYS
        if isinstance(row.get(key), float) and isinstance(baseline.get(key), float)
        if baseline[key] > 0
    }


def variety_lost(row: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """The varieties ``row`` keeps less than ``KEPT_ENOUGH`` % of, short of ``baseline``'s
    by more than the noise (the larger ``*_noise`` of the two; none known: no noise)."""
    lost = []
    for key, share in variety_kept(row, baseline).items():
        noises = [side.get(f"{key}_noise") for side in (row, baseline)]
        noise = max([n for n in noises if isinstance(n, float)], default=0.0)
        if share < KEPT_ENOUGH and baseline[key] - row[key] > noise:
            lost.append(key)
    return lost


def variety_lines(models: dict[str, dict[str, Any]], baseline: str) -> list[str]:
    """The report's lines on how much variety each round keeps of ``baseline``'s."""
    lines = []
    for name, row in models.items():
        kept = row.get("variety_kept")
        if not kept or name == baseline:
            continue
        cells = ", ".join(f"{k.removesuffix('_variety')} {v:.0f} %" for k, v in kept.items())
        short = [k.removesuffix("_variety") for k in row.get("variety_lost", [])]
        flag = f" **lost beyond the noise: {', '.join(short)}**" if short else ""
        lines.append(f"- {name}: {cells}{flag}")
    return lines


def world_layout_variety(jobs: list[ImageJob], truth: dict[str, str] | None) -> float:
    """Layout variety (0-100) of the world's own renders of ``jobs``' scenes and seeds:
    the true character (``truth``) in each, or with None a random character per seed.

    What the renderer draws when the prompt leaves pose and expression free: standing, an
    expression drawn from the seed, the seed's jitter of position and scale. With the
    character fixed this is the variety a perfectly consistent LoRA would show; with a
    random one it is the plain base model's kind of variety, characters included.
    """
    images = []
    for job in jobs:
        rng = np.random.default_rng(job.seed)
        fixed = character_from_dict(truth) if truth else sample_character(rng)
        scene = {a: world_value(a, job.context.get(a, "")) for a in ("setting", "style")}
        expression = str(rng.choice(EXPRESSIONS))
        context = Context(**{k: v for k, v in scene.items() if v}, expression=expression)
        images.append(render_world(fixed, context, job.seed))
    groups = [context_id(job.context) for job in jobs]
    return layout_metrics(layout_features(images), groups)["layout_diversity"] * 100
