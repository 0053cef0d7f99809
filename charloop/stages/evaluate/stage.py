"""Evaluate: held-out contexts with fixed seeds, with and without the LoRA.

Two axes, never one scalar: identity consistency (mean pairwise image-embedding cosine
across contexts, and similarity to the reference set) and prompt fidelity (image-text
cosine to the context, without the trigger). Nearest-training-image similarity and the
diversity across seeds flag memorisation; the metrics themselves are in ``eval_metrics``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import weakref
from pathlib import Path
from typing import Any

from PIL import Image

from charloop.core import atomic
from charloop.core.contact_sheet import contact_sheet
from charloop.core.hashing import sha256_json, tree_digest
from charloop.families.single_file import base_model_ref
from charloop.models.embedder import load_embedder
from charloop.models.memory_budget import render_offload
from charloop.models.pipeline import load_pipeline, lora_applied
from charloop.params.project import Project
from charloop.params.schema import Params
from charloop.scenes.heldout import held_out_axes
from charloop.scenes.prompts import context_id, scene_prompt
from charloop.scenes.references import load_references, open_image
from charloop.scenes.render import ImageJob, png_bytes, render
from charloop.scenes.traits import evaluation_traits, traits_identity
from charloop.stages.contract import StageIdentity, identity
from charloop.stages.evaluate.metrics import (
    consistency_metrics,
    headline,
    trait_noise,
    validation_loss,
)
from charloop.stages.evaluate.scores import ScoredImages
from charloop.stages.results import Adapter, Dataset, EvalShard, Evaluation

__all__ = ["consistency_metrics", "eval_jobs", "run_evaluate", "seen_in_training"]

logger = logging.getLogger(__name__)

_EMBED_BATCH = 32


def eval_jobs(project: Project) -> list[ImageJob]:
    """One job per held-out context and seed (contexts outer, seeds inner); a cast repeats
    that for each member alone and each pair of the joint scenes."""
    params = project.params
    scenes = [[m] for m in params.members]
    if params.cast is not None:
        scenes += [[params.member(n) for n in pair] for pair in params.cast.pair_list()]
    layout = params.cast.joint.layout if params.cast else "none"
    jobs = []
    for members in scenes:
        names = tuple(m.name for m in members)
        scene = "+".join(names) + "-" if params.cast else ""
        for held_out in params.evaluate.contexts:
            context = held_out.model_dump()
            prompt = scene_prompt(params.generate.prompt_template, members, context, layout=layout)
            for seed in params.evaluate.seeds:
                jobs.append(
                    ImageJob(
                        id=f"{scene}{context_id(context)}-s{seed}",
                        prompt=prompt,
                        negative_prompt=params.generate.negative_prompt,
                        seed=seed,
                        context=context,
                        characters=names,
                    )
                )
    return jobs


def seen_in_training(params: Params, context: dict[str, str]) -> bool:
    """Whether the training prompt matrix can contain ``context`` (then it is not held out)."""
    axes = params.contexts.axis_values()
    return all(value in axes[axis] for axis, value in context.items())


def evaluate_identity(
    project: Project, adapter: Adapter, dataset: Dataset, out_dir: str | Path
) -> StageIdentity[Evaluation]:
    """Everything that determines an evaluation."""
    params = project.params
    return identity(
        Evaluation,
        out_dir,
        __name__,
        evaluate=params.evaluate.model_dump(),
        generate=params.generate.model_dump(),
        characters=[m.model_dump() for m in params.members],
        cast=params.cast.model_dump() if params.cast else None,
        base=project.portable_ref(params.base_model.path),
        embedder=project.portable_ref(params.evaluate.embedder.path),
        adapter=adapter.digest,
        dataset=dataset.digest,
        traits=traits_identity(project),
        references={
            name: tree_digest(folder) if folder and folder.is_dir() else None
            for name, folder in _references_dirs(project).items()
        },
    )


def _references_dirs(project: Project) -> dict[str, Path | None]:
    return {
        m.name: project.resolve(m.references) if m.references else None
        for m in project.params.members
    }


_BASE_RENDERS: dict[str, tuple[weakref.ref[Any], list[Image.Image]]] = {}
"""The base model's renders of the newest held-out job list, with the pipeline that drew
them (one entry): every iteration and every candidate LoRA is scored on the same jobs, so
a process draws them once; a reloaded pipeline draws them again."""


def render_pairs(
    project: Project, adapter: Adapter, jobs: list[ImageJob]
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Each job rendered with the LoRA and without it (same seed)."""
    params = project.params
    base_ref = base_model_ref(project)
    pipe = load_pipeline(base_ref, params.base_model, render_offload(params, base_ref))
    with lora_applied(pipe, adapter.path):
        lora_images = render(pipe, jobs, params.generate)
    key = sha256_json(
        {
            "base": base_ref,
            "base_model": params.base_model.model_dump(mode="json"),
            "generate": params.generate.model_dump(mode="json"),
            "jobs": [dataclasses.asdict(job) for job in jobs],
        }
    )
    kept = _BASE_RENDERS.get(key)
    if kept is None or kept[0]() is not pipe:
        _BASE_RENDERS.clear()
        kept = _BASE_RENDERS[key] = (weakref.ref(pipe), render(pipe, jobs, params.generate))
    return lora_images, [image.copy() for image in kept[1]]


def run_evaluate(
    project: Project,
    adapter: Adapter,
    dataset: Dataset,
    out_dir: str | Path,
    rendered: list[EvalShard] | None = None,
) -> Evaluation:
    """Render held-out contexts with and without the LoRA; write metrics and a contact sheet.

    Args:
        rendered: Evaluation shards already rendered (see ``charloop.evaluate_shards``);
            None renders every job here.
    """
    params = project.params
    embedder_ref = project.model_ref(params.evaluate.embedder.path)
    stage = evaluate_identity(project, adapter, dataset, out_dir)
    if done := stage.done():
        logger.info("evaluate: reusing %s", out_dir)
        return done
    jobs = eval_jobs(project)
    contexts = {context_id(c.model_dump()): c.model_dump() for c in params.evaluate.contexts}
    for cid, context in contexts.items():
        if seen_in_training(params, context):
            logger.warning("evaluate: context %s %s is in the training matrix", cid, context)
    if rendered is None:
        lora_images, base_images = render_pairs(project, adapter, jobs)
    else:
        lora_images, base_images = _load_shards(rendered, jobs)
    embedder = load_embedder(params.evaluate.embedder, embedder_ref)
    scored = ScoredImages.embed(
        params,
        embedder,
        jobs,
        lora_images,
        base_images,
        Path(dataset.path),
        {name: load_references(folder) for name, folder in _references_dirs(project).items()},
    )
    metrics = scored.metrics(params)
    names = [job.characters for job in jobs]
    if traits := evaluation_traits(project, names, lora_images, base_images):
        per_image = traits.pop("per_image")
        metrics["traits"] = traits
        metrics["trait_pass"] = traits["mean"]
        if (noise := trait_noise(per_image, jobs)) is not None:
            metrics["trait_pass_noise"] = noise
        metrics["traits_all"] = traits["all"]
        metrics["traits_all_base"] = traits["all_base"]
    if (loss := validation_loss(adapter.path)) is not None:
        metrics["validation_loss"] = loss
    metrics.update(
        {
            "contexts": {
                cid: {
                    **context,
                    "in_training_matrix": seen_in_training(params, context),
                    **held_out_axes(params, context),
                }
                for cid, context in contexts.items()
            },
            "seeds": list(params.evaluate.seeds),
            "references_used": scored.references_used,
            "adapter_sha256": adapter.weights_sha256,
            "images": len(jobs),
        }
    )
    with atomic.staged_dir(stage.out_dir) as staging:
        (staging / "images").mkdir()
        for job, lora_img, base_img in zip(jobs, lora_images, base_images, strict=True):
            (staging / "images" / f"lora-{job.id}.png").write_bytes(png_bytes(lora_img))
            (staging / "images" / f"base-{job.id}.png").write_bytes(png_bytes(base_img))
        labels = _row_labels(jobs, params.cast is not None)
        sheet = contact_sheet(
            {"with LoRA": lora_images, "base model": base_images},
            columns=len(params.evaluate.seeds),
            row_labels=labels,
        )
        sheet.save(staging / "contact_sheet.png")
        atomic.write_json(staging / "metrics.json", metrics)
        summary = headline(metrics)
        output = stage.seal(staging, metrics=summary)
    for part in rendered or []:  # scratch, now inside the sealed folder's images/
        shutil.rmtree(part.path, ignore_errors=True)
    logger.info("evaluate: %s", {k: round(v, 4) for k, v in summary.items()})
    return output


def _row_labels(jobs: list[ImageJob], cast: bool) -> list[str]:
    """One contact-sheet row label per scene and context, in job order."""
    labels: dict[tuple[tuple[str, ...], str], str] = {}
    for job in jobs:
        text = ", ".join(v for v in job.context.values() if v)
        scene = " + ".join(job.characters) + ": " if cast else ""
        labels.setdefault((job.characters, context_id(job.context)), scene + text)
    return list(labels.values())


def _load_shards(
    parts: list[EvalShard], jobs: list[ImageJob]
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Rendered pairs from shard folders, in job order."""
    folders = {job_id: Path(p.path) for p in parts for job_id in p.jobs}
    missing = [job.id for job in jobs if job.id not in folders]
    if missing:
        raise ValueError(f"evaluation shards miss {len(missing)} of {len(jobs)} jobs")
    lora = [open_image(folders[job.id] / f"lora-{job.id}.png") for job in jobs]
    base = [open_image(folders[job.id] / f"base-{job.id}.png") for job in jobs]
    return lora, base
