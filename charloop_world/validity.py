"""Validity report: does the loop make the character more consistent, judged by an oracle?

On the embedded world (``charloop_world``) every picture's attributes can be read back by
the attribute oracle, so consistency needs no human: render the held-out contexts with
many seeds on the base model (no LoRA) and with each iteration's LoRA, let the oracle read
each image, and score how many of the character's true attributes it shows.

- ``consistency``: mean share of the character's attributes the oracle reads as the
  character's values (100: every image shows every attribute);
- ``all_attributes``: share of images that show every attribute;
- both per seed, so the noise across seeds is reported next to the margin;
- variety across seeds for what the prompt leaves free, and context fidelity
  (:mod:`charloop_world.variety`), with the base model's values beside each LoRA's;
- the same for the base model told who to draw (``DESCRIBED``: every true attribute in
  words, no trigger), which each round's variety is held to, with the world's own layout
  variety for the character and for random ones beside it.

The character's true attributes come from ``identity.json`` in its references folder
(written by ``charloop world references``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from charloop.core import atomic
from charloop.core.contact_sheet import contact_sheet
from charloop.lineage.rounds import round_candidate
from charloop.models.pipeline import load_pipeline, lora_applied
from charloop.params.project import Project
from charloop.scenes.heldout import held_out_axes, label
from charloop.scenes.prompts import context_id, scene_prompt
from charloop.scenes.render import ImageJob, render
from charloop.stages.layout import ADAPTER_WEIGHTS, IterationPaths
from charloop_world.attributes import character_from_dict
from charloop_world.captions import character_phrases
from charloop_world.validity_summary import BASE, DESCRIBED, margins
from charloop_world.validity_traits import data_reads, markdown_lines
from charloop_world.variety import (
    KEPT_ENOUGH,
    context_fidelity,
    free_jobs,
    variety,
    variety_columns,
    variety_kept,
    variety_lines,
    variety_lost,
    world_layout_variety,
)

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"


def load_truth(project: Project) -> dict[str, str]:
    """The character's true world attributes (``identity.json`` beside its references).

    Raises:
        FileNotFoundError: no references folder or no identity file in it.
    """
    refs = project.params.members[0].references
    if not refs:
        raise FileNotFoundError("character.references is not set: the report needs identity.json")
    path = project.resolve(refs) / IDENTITY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: write it with `charloop world references`")
    return dict(json.loads(path.read_text()))


def validity_jobs(
    project: Project, seeds: list[int], truth: dict[str, str] | None = None
) -> list[ImageJob]:
    """Every held-out context (``evaluate.contexts``) with every seed.

    With ``truth`` the prompt describes the character in words instead: no trigger, and
    every one of its true attributes in place of the traits (what the base model draws when
    told who to draw).
    """
    params = project.params
    character = params.members[0]
    if truth is not None:
        words = character_phrases(character_from_dict(truth))
        character = character.model_copy(update={"traits": words})
    jobs = []
    for held_out in params.evaluate.contexts:
        context = held_out.model_dump()
        template = params.generate.prompt_template
        prompt = scene_prompt(template, [character], context, trigger=truth is None)
        for seed in seeds:
            jobs.append(
                ImageJob(
                    f"{context_id(context)}-s{seed}",
                    prompt,
                    params.generate.negative_prompt,
                    seed,
                    context,
                    (character.name,),
                )
            )
    return jobs


@dataclass
class Scores:
    """Oracle agreement of one model's images with the character's attributes."""

    matches: np.ndarray
    """images x attributes: the oracle read the character's value."""
    attributes: list[str]
    seeds: list[int]
    """Seed of each image (row)."""

    def summary(self) -> dict[str, Any]:
        """Percentages overall, per seed (mean and spread) and per attribute."""
        agreement = self.matches.mean(1)
        complete = self.matches.all(1)
        seeds = np.array(self.seeds)
        per_seed = [float(agreement[seeds == s].mean() * 100) for s in dict.fromkeys(self.seeds)]
        return {
            "consistency": float(agreement.mean() * 100),
            "consistency_seed_std": float(np.std(per_seed)),
            "consistency_per_seed": per_seed,
            "all_attributes": float(complete.mean() * 100),
            "per_attribute": {
                name: float(self.matches[:, i].mean() * 100)
                for i, name in enumerate(self.attributes)
            },
            "images": len(self.seeds),
        }


def score(
    oracle: Any, images: list[Image.Image], truth: dict[str, str], seeds: list[int]
) -> Scores:
    """Let the oracle read ``images`` and compare with ``truth``."""
    return score_reads(oracle.read(images), truth, seeds)


def score_reads(reads: list[dict[str, str]], truth: dict[str, str], seeds: list[int]) -> Scores:
    """Compare the oracle's reads of some images with ``truth``."""
    names = list(truth)
    matches = np.array([[row[n] == truth[n] for n in names] for row in reads], dtype=bool)
    return Scores(matches.reshape(len(reads), len(names)), names, seeds)


def run_validity(
    project: Project, oracle_path: str | Path, seeds: list[int], out_dir: str | Path
) -> dict[str, Any]:
    """Score the base model and every finished iteration's LoRA; write the report.

    Writes ``validity.json``, ``VALIDITY.md`` and one contact sheet per model into
    ``out_dir`` (rows: held-out contexts, columns: seeds).
    """
    from charloop_world.oracle import load_oracle

    params = project.params
    truth = load_truth(project)
    oracle = load_oracle(oracle_path)
    prompted = validity_jobs(project, seeds)
    described = validity_jobs(project, seeds, truth)
    pipe = load_pipeline(project.model_ref(params.base_model.path), params.base_model)
    models: dict[str, Path | None] = {BASE: None, DESCRIBED: None}
    roots: dict[str, Path] = {}
    for root in sorted(project.workdir.glob("iter-*")):  # every round's iterations
        folder = IterationPaths(root).adapter
        if (folder / ADAPTER_WEIGHTS).is_file():
            name = f"iteration {int(root.name.removeprefix('iter-'))}"
            models[name], roots[name] = folder, root
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    labels = [", ".join(v for v in c.model_dump().values() if v) for c in params.evaluate.contexts]
    free_prompted, free_described = free_jobs(prompted), free_jobs(described)
    for name, adapter in models.items():
        if name == DESCRIBED:
            jobs, loose = described, free_described
        else:
            jobs, loose = prompted, free_prompted
        with lora_applied(pipe, adapter, params.generate.lora_scale):
            images = render(pipe, jobs, params.generate)
            free_images = render(pipe, loose, params.generate)
        reads = oracle.read(images)  # read once: attributes and prompted context alike
        results[name] = score_reads(reads, truth, [job.seed for job in jobs]).summary()
        free_reads = oracle.read(free_images)
        results[name] |= variety(free_reads, free_images, loose, oracle.net.attributes)
        results[name]["context_fidelity"] = context_fidelity(reads, jobs)
        results[name] |= data_reads(project, oracle, truth, images, roots.get(name))
        sheet = contact_sheet({name: images}, columns=len(seeds), row_labels=labels)
        sheet.save(out / f"{name.replace(', ', '-').replace(' ', '-')}.png")
        logger.info("validity: %s consistency %.1f%%", name, results[name]["consistency"])
    for name, row in results.items():
        if name not in (BASE, DESCRIBED):
            row["variety_kept"] = variety_kept(row, results[DESCRIBED])
            row["variety_lost"] = variety_lost(row, results[DESCRIBED])
    held_out = [
        {"context": label(c.model_dump()), **held_out_axes(params, c.model_dump())}
        for c in params.evaluate.contexts
    ]
    report: dict[str, Any] = {
        "character": truth,
        "prompt": prompted[0].prompt,
        "described_prompt": described[0].prompt,
        "seeds": seeds,
        "held_out": held_out,
        "models": results,
    }
    report |= margins(results)
    loop = params.loop  # what the loop hands over, by its own metrics (not the oracle's)
    report["candidate"] = round_candidate(project.workdir, loop.convergence_epsilon, loop.metric)
    report["world_layout_variety"] = {
        "character": world_layout_variety(free_prompted, truth),
        "random characters": world_layout_variety(free_prompted, None),
    }
    atomic.write_json(out / "validity.json", report)
    atomic.write_text(out / "VALIDITY.md", validity_markdown(report))
    return report


def validity_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (one row per model)."""
    models = report["models"]
    attributes = list(report["character"])
    lines = [
        "# Validity report",
        "",
        f"Character: {report['character']}. Prompt (first context): `{report['prompt']}`; "
        f"'{DESCRIBED}': `{report.get('described_prompt', '-')}`.",
        f"Seeds: {len(report['seeds'])} per held-out context. Consistency: mean share of the "
        "character's attributes the oracle reads back (100 = all, in every image); "
        "± is the standard deviation across seeds.",
        "",
        "Held-out contexts (axes never in a training caption / axes seen in training):",
        "",
        *(
            f"- {c['context']}: unseen {', '.join(c['unseen_axes']) or '-'}; "
            f"seen {', '.join(c['seen_axes']) or '-'}"
            for c in report.get("held_out", [])
        ),
        "",
        "Variety (free pose and expression, 0-100): layout, pose and expression across "
        "seeds; context fidelity: share of the prompt's setting, style, pose and expression "
        "the oracle reads back.",
        "",
        "| model | consistency % | ± seeds | all attributes % | layout variety | pose variety "
        "| expression variety | context fidelity % | " + " | ".join(attributes) + " |",
        "|---" * (8 + len(attributes)) + "|",
    ]
    for name, row in models.items():
        cells = [f"{row['per_attribute'][a]:.0f}" for a in attributes]
        lines.append(
            f"| {name} | {row['consistency']:.1f} | {row['consistency_seed_std']:.1f} | "
            f"{row['all_attributes']:.1f} | " + " | ".join([*variety_columns(row), *cells]) + " |"
        )
    lines += [
        "",
        f"Variety each round keeps of '{DESCRIBED}' (the character held fixed by words, "
        f"so only what the prompt leaves free varies); flagged when under "
        f"{KEPT_ENOUGH:.0f} % and short by more than the noise (standard error across "
        "contexts):",
        "",
        *variety_lines(models, DESCRIBED),
        *markdown_lines(models),
    ]
    if world := report.get("world_layout_variety"):
        lines += [
            "",
            f"The world's own renders of these scenes and seeds (standing, an expression "
            f"per seed): layout variety {world['character']:.1f} for the character, "
            f"{world['random characters']:.1f} for a random character per seed.",
        ]
    lines += [
        "",
        f"Margin over the base model: last {report['margin']:+.1f} points, best "
        f"({report.get('best', '-')}) {report.get('best_margin', report['margin']):+.1f}. "
        f"The loop's candidate (its own metrics): iteration {report.get('candidate') or '-'}.",
        "",
    ]
    return "\n".join(lines)
