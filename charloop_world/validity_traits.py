"""What the validity report adds about traits and data: the loop's own trait read of each
model's renders (beside the oracle's), and the oracle's read of each iteration's kept set
(so a report says whether the data or the training limits a round)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from charloop.core import atomic
from charloop.params.project import Project
from charloop.scenes.references import open_image
from charloop.scenes.traits import pass_rates, resolve_traits, trait_scores
from charloop.stages.layout import IterationPaths


def loop_trait_read(project: Project, images: list[Image.Image]) -> dict[str, Any] | None:
    """The loop's trait scorer on ``images`` (percentages): each trait's pass rate, their
    mean and the share showing every trait; None without a ``traits`` section."""
    settings = project.params.traits
    if settings is None:
        return None
    traits = resolve_traits(project)[project.params.members[0].name].all
    rates = pass_rates(trait_scores(project, images, traits), traits, settings.min_score)
    per_trait = {t: 100 * v for t, v in rates["traits"].items()}
    return {
        "traits": per_trait,
        "mean": float(np.mean(list(per_trait.values()))) if per_trait else 0.0,
        "all": 100 * rates["all"],
    }


def kept_images(root: Path) -> list[Image.Image]:
    """The images an iteration's filter kept (its generated PNGs named in ``kept.jsonl``)."""
    paths = IterationPaths(root)
    kept = paths.filtered / "kept.jsonl"
    if not kept.is_file():
        return []
    return [open_image(paths.generated / row["file"]) for row in atomic.read_jsonl(kept)]


def data_reads(
    project: Project, oracle: Any, truth: dict[str, str], images: list[Image.Image],
    root: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """A model's ``loop_traits`` (its renders, by the loop's scorer) and, for an iteration
    (``root``), its ``kept_set`` (the images its filter kept, by the oracle)."""
    from charloop_world.validity import score

    out: dict[str, Any] = {"loop_traits": loop_trait_read(project, images)}
    if root is not None and (kept := kept_images(root)):
        seeds = list(range(len(kept)))  # one row per image: no per-seed spread
        out["kept_set"] = score(oracle, kept, truth, seeds).summary()
    return out


def markdown_lines(models: dict[str, Any]) -> list[str]:
    """Table rows: per model, the loop's own trait read and the oracle's read of the kept
    set the model was trained on."""
    rows = [
        (name, row)
        for name, row in models.items()
        if row.get("loop_traits") is not None or row.get("kept_set") is not None
    ]
    if not rows:
        return []
    lines = [
        "",
        "The loop's own trait read (its trait scorer, not the oracle) of the same images, and "
        "the oracle's read of the kept set each iteration trained on (the data's own "
        "consistency; references not included):",
        "",
        "| model | loop: trait pass % | loop: all traits % | kept set: images | kept set: "
        "consistency % | kept set: all attributes % |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows:
        loop, kept = row.get("loop_traits") or {}, row.get("kept_set") or {}

        def cell(data: dict[str, Any], key: str) -> str:
            return f"{data[key]:.1f}" if key in data else "-"

        lines.append(
            f"| {name} | {cell(loop, 'mean')} | {cell(loop, 'all')} | "
            f"{kept.get('images', '-')} | {cell(kept, 'consistency')} | "
            f"{cell(kept, 'all_attributes')} |"
        )
    return lines
