"""Generate: render the context matrix with the base model (plus the previous LoRA)."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from charloop.core import atomic
from charloop.core.hashing import sha256_bytes, tree_digest
from charloop.families.single_file import base_model_ref
from charloop.models.memory_budget import render_offload
from charloop.models.pipeline import load_pipeline, lora_applied
from charloop.params.project import Project
from charloop.params.schema import Character, Params
from charloop.scenes.aim import Aim, plan_aim
from charloop.scenes.prompts import (
    context_id,
    context_matrix,
    derive_seed,
    render_prompt,
    scene_prompt,
)
from charloop.scenes.references import load_references
from charloop.scenes.render import ImageJob, png_bytes, render
from charloop.stages.contract import StageIdentity, identity
from charloop.stages.generate.control import control_maps, controlnet_pipeline, job_control
from charloop.stages.generate.ip_adapter import ip_adapter_applied
from charloop.stages.results import AdapterRef, Generated

logger = logging.getLogger(__name__)


def plan_jobs(project: Project, iteration: int, aim: Aim | None = None) -> list[ImageJob]:
    """Image jobs for one iteration: each context combination times ``images_per_prompt``,
    for every character alone and, in a cast, for every pair of the joint scenes.

    With an ``aim``, the first ``aim.count`` images of each solo prompt name the aimed
    traits too (same ids and seeds: only the prompt changes).
    """
    params = project.params
    gen = params.generate
    contexts = context_matrix(params.contexts, gen.max_prompts, gen.seed)
    jobs = []
    for member in params.members:
        solo = scene_jobs(params, [member], contexts, gen.images_per_prompt, iteration)
        jobs += aimed(params, member, solo, aim) if aim else solo
    if params.cast is not None:
        joint = params.cast.joint
        pair_contexts = context_matrix(
            params.contexts, joint.max_prompts, gen.seed + 1, "cast.joint.max_prompts"
        )
        for pair in params.cast.pair_list():
            members = [params.member(name) for name in pair]
            jobs += scene_jobs(params, members, pair_contexts, joint.images_per_prompt, iteration)
    return jobs


def scene_jobs(
    params: Params,
    members: list[Character],
    contexts: list[dict[str, str]],
    images_per_prompt: int,
    iteration: int,
) -> list[ImageJob]:
    """Jobs for one scene kind (a solo character or a group) over ``contexts``.

    A single character keeps the plain ids and seeds; cast scenes add the members' names
    to both, so solo and joint scenes of one context never share a seed.
    """
    gen = params.generate
    layout = params.cast.joint.layout if params.cast else "none"
    names = tuple(m.name for m in members)
    scene = "+".join(names) + "-" if params.cast else ""
    jobs = []
    for context in contexts:
        prompt = scene_prompt(gen.prompt_template, members, context, layout=layout)
        scene_key = (*names, context_id(context)) if params.cast else (context_id(context),)
        for k in range(images_per_prompt):
            jobs.append(
                ImageJob(
                    id=f"i{iteration:03d}-{scene}{context_id(context)}-{k:02d}",
                    prompt=prompt,
                    negative_prompt=gen.negative_prompt,
                    seed=derive_seed(gen.seed, iteration, *scene_key, k),
                    context=context,
                    characters=names,
                )
            )
    return jobs


def aimed(params: Params, member: Character, jobs: list[ImageJob], aim: Aim) -> list[ImageJob]:
    """``jobs`` (one solo character's, ``images_per_prompt`` per context in order) with the
    first ``aim.count`` of each context's images described in words: every trait named,
    no trigger, rendered by the base model alone (see :mod:`charloop.scenes.aim`)."""
    count = aim.count(params.generate.images_per_prompt)
    if not aim.traits.get(member.name) or not count:
        return jobs
    template = params.generate.prompt_template
    if "{traits}" not in template:  # the traits follow the (empty) trigger slot
        template = template.replace("{trigger}", "{trigger}, {traits}", 1)
    named = member.model_copy(update={"traits": aim.described[member.name]})
    out = []
    for index, job in enumerate(jobs):
        if index % params.generate.images_per_prompt < count:
            prompt = render_prompt(template, named, job.context, trigger=False)
            job = replace(job, prompt=prompt, aim=aim.record(member.name))
        out.append(job)
    return out


def generate_identity(
    project: Project, iteration: int, adapter: AdapterRef | None, out_dir: str | Path
) -> StageIdentity[Generated]:
    """Everything that determines an iteration's generated images."""
    params = project.params
    cn = params.generate.controlnet
    ip = params.generate.ip_adapter
    refs_dir = _references_dir(project)
    return identity(
        Generated,
        out_dir,
        __name__,
        # Control maps are a pure function of the folder, the params and the code: hash the
        # folder so a resumed run need not import controlnet-aux and run the detector.
        controls=tree_digest(project.resolve(cn.images)) if cn else None,
        controlnet=project.portable_ref(cn.model) if cn else None,
        ip_adapter=project.portable_ref(ip.model) if ip else None,
        references=tree_digest(refs_dir) if refs_dir and refs_dir.is_dir() else None,
        characters=[m.model_dump() for m in params.members],
        cast=params.cast.model_dump() if params.cast else None,
        contexts=params.contexts.model_dump(),
        base_model=params.base_model.model_dump()
        | {"ref": project.portable_ref(params.base_model.path)},
        generate=params.generate.model_dump(),
        iteration=iteration,
        adapter=adapter.sha256 if adapter else None,
        aim=asdict(aim) if (aim := plan_aim(project, adapter.path if adapter else None)) else None,
    )


def _references_dir(project: Project) -> Path | None:
    refs = project.params.members[0].references  # IP-Adapter: single characters only
    return project.resolve(refs) if project.params.generate.ip_adapter and refs else None


def render_jobs(
    project: Project,
    iteration: int,
    adapter: AdapterRef | None,
    jobs: list[ImageJob],
    folder: Path,
) -> list[dict[str, Any]]:
    """Render ``jobs`` into ``folder`` as PNGs; returns their manifest rows (job order)."""
    params = project.params
    base_ref = base_model_ref(project)
    cn = params.generate.controlnet
    ip = params.generate.ip_adapter
    refs_dir = _references_dir(project)
    pipe = load_pipeline(base_ref, params.base_model, render_offload(params, base_ref))
    maps = (
        control_maps(
            project.resolve(cn.images),
            cn,
            params.generate.resolution,
            project.model_ref(cn.annotators),
        )
        if cn
        else []
    )
    layout = params.cast.joint.layout if params.cast else "none"
    chosen = (
        [job_control(maps, job, layout, params.generate.resolution) for job in jobs] if maps else []
    )
    renderer = controlnet_pipeline(pipe, project.model_ref(cn.model)) if cn else pipe
    controls = [m.image for m in chosen] if chosen else None
    anchors = load_references(refs_dir).images if refs_dir else []
    # Described (aimed) jobs render with the base model alone, the rest with the LoRA.
    plain = [i for i, job in enumerate(jobs) if not job.aim]
    described = [i for i, job in enumerate(jobs) if job.aim]
    images: list[Any] = [None] * len(jobs)
    with ip_adapter_applied(pipe, ip, project.model_ref(ip.model) if ip else None, anchors) as cond:
        for group, lora in ((plain, adapter.path if adapter else None), (described, None)):
            if not group:
                continue
            with lora_applied(pipe, lora, params.generate.lora_scale):
                subset = [controls[i] for i in group] if controls else None
                drawn = render(renderer, [jobs[i] for i in group], params.generate, subset, cond)
            for i, image in zip(group, drawn, strict=True):
                images[i] = image
    rows = []
    for index, (job, image) in enumerate(zip(jobs, images, strict=True)):
        data = png_bytes(image)
        control = chosen[index] if chosen else None
        (folder / f"{job.id}.png").write_bytes(data)
        rows.append(
            asdict(job)
            | {
                "file": f"{job.id}.png",
                "sha256": sha256_bytes(data),
                "iteration": iteration,
                "base_model": project.portable(base_ref),
                "adapter": {"path": project.portable(adapter.path), "sha256": adapter.sha256}
                if adapter
                else None,
                "lora_scale": params.generate.lora_scale if adapter and not job.aim else 0.0,
                "steps": params.generate.num_inference_steps,
                "guidance_scale": params.generate.guidance_scale,
                "resolution": params.generate.resolution,
                "control": {"source": control.source, "sha256": control.sha256}
                if control
                else None,
                "ip_adapter": {"model": ip.model, "scale": ip.scale, "references": len(anchors)}
                if ip
                else None,
            }
        )
    return rows


def run_generate(
    project: Project, iteration: int, adapter: AdapterRef | None, out_dir: str | Path
) -> Generated:
    """Generate one iteration's images with a ``manifest.jsonl`` row per image.

    Args:
        project: Validated params and root.
        iteration: 1-based iteration number (part of every seed).
        adapter: The previous iteration's LoRA, or None on iteration 1.
        out_dir: Output folder, written atomically.
    """
    stage = generate_identity(project, iteration, adapter, out_dir)
    if done := stage.done():
        logger.info("generate: reusing %s", out_dir)
        return done
    jobs = plan_jobs(project, iteration, plan_aim(project, adapter.path if adapter else None))
    with atomic.staged_dir(Path(out_dir)) as staging:
        rows = render_jobs(project, iteration, adapter, jobs, staging)
        atomic.write_jsonl(staging / "manifest.jsonl", rows)
        output = stage.seal(staging, images=len(rows))
    logger.info("generate: %d images in %s", len(rows), out_dir)
    return output
