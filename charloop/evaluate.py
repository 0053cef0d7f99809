"""Evaluate: held-out contexts with fixed seeds, with and without the LoRA.

Two axes, never one scalar: identity consistency (mean pairwise image-embedding cosine
across contexts) and prompt fidelity (image-text cosine to the context, without the
trigger). Nearest-training-image similarity flags memorisation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from charloop import atomic
from charloop.config import Project
from charloop.contact_sheet import contact_sheet
from charloop.embedder import load_embedder, mean_pairwise_cosine
from charloop.generate import ImageJob, png_bytes, render
from charloop.pipeline import load_pipeline, lora_applied
from charloop.prompts import context_id, render_prompt
from charloop.references import open_image
from charloop.stage import StageOutput, completed, fingerprint, seal

logger = logging.getLogger(__name__)


def eval_jobs(project: Project) -> list[ImageJob]:
    """One job per held-out context and seed (contexts outer, seeds inner)."""
    params = project.params
    jobs = []
    for held_out in params.evaluate.contexts:
        context = held_out.model_dump()
        prompt = render_prompt(params.generate.prompt_template, params.character, context)
        for seed in params.evaluate.seeds:
            jobs.append(
                ImageJob(
                    id=f"{context_id(context)}-s{seed}",
                    prompt=prompt,
                    negative_prompt=params.generate.negative_prompt,
                    seed=seed,
                    context=context,
                )
            )
    return jobs


def consistency_metrics(
    embeddings: np.ndarray,
    text_embeddings: np.ndarray | None,
    train_embeddings: np.ndarray | None,
    groups: list[str],
) -> dict[str, Any]:
    """Identity, prompt fidelity and memorisation scores for one set of images.

    Args:
        embeddings: L2-normalised image embeddings, one row per image.
        text_embeddings: Matching context-prompt embeddings (rows aligned), or None.
        train_embeddings: Embeddings of the training images, or None.
        groups: The context id of each image, for the per-context breakdown.
    """
    sims = embeddings @ embeddings.T
    labels = np.array(groups)
    metrics: dict[str, Any] = {"identity_consistency": mean_pairwise_cosine(embeddings)}
    if text_embeddings is not None:
        metrics["prompt_fidelity"] = float(np.mean(np.sum(embeddings * text_embeddings, axis=1)))
    if train_embeddings is not None and len(train_embeddings):
        metrics["nearest_train_similarity"] = float((embeddings @ train_embeddings.T).max(1).mean())
    per_context = {}
    for group in dict.fromkeys(groups):
        inside, outside = labels == group, labels != group
        entry = {"identity_to_other_contexts": float(sims[np.ix_(inside, outside)].mean())}
        if text_embeddings is not None:
            entry["prompt_fidelity"] = float(
                np.sum(embeddings[inside] * text_embeddings[inside], axis=1).mean()
            )
        per_context[group] = entry
    metrics["per_context"] = per_context
    return metrics


def run_evaluate(
    project: Project, adapter: StageOutput, dataset: StageOutput, out_dir: str | Path
) -> StageOutput:
    """Render held-out contexts with and without the LoRA; write metrics and a contact sheet."""
    params = project.params
    base_ref = project.model_ref(params.base_model.path)
    embedder_ref = project.model_ref(params.evaluate.embedder.path)
    fp = fingerprint(
        "evaluate",
        evaluate=params.evaluate.model_dump(),
        generate=params.generate.model_dump(),
        character=params.character.model_dump(),
        base=base_ref,
        embedder=embedder_ref,
        adapter=adapter.digest,
        dataset=dataset.digest,
    )
    out_dir = Path(out_dir)
    if done := completed(out_dir, fp):
        logger.info("evaluate: reusing %s", out_dir)
        return done
    jobs = eval_jobs(project)
    pipe = load_pipeline(base_ref, params.base_model)
    with lora_applied(pipe, adapter.path):
        lora_images = render(pipe, jobs, params.generate)
    base_images = render(pipe, jobs, params.generate)
    embedder = load_embedder(params.evaluate.embedder, embedder_ref)
    fidelity_prompts = [
        render_prompt(params.generate.prompt_template, params.character, job.context, trigger=False)
        for job in jobs
    ]
    texts = embedder.embed_texts(fidelity_prompts)
    rows = atomic.read_jsonl(Path(dataset.path) / "metadata.jsonl")
    train_emb = embedder.embed_images(
        [open_image(Path(dataset.path) / r["file_name"]) for r in rows]
    )
    groups = [context_id(job.context) for job in jobs]
    lora = consistency_metrics(embedder.embed_images(lora_images), texts, train_emb, groups)
    base = consistency_metrics(embedder.embed_images(base_images), texts, train_emb, groups)
    metrics = {
        **{k: v for k, v in lora.items() if k != "per_context"},
        **{f"base_{k}": v for k, v in base.items() if k != "per_context"},
        "per_context": lora["per_context"],
        "base_per_context": base["per_context"],
        "contexts": {context_id(c.model_dump()): c.model_dump() for c in params.evaluate.contexts},
        "adapter_sha256": adapter.summary.get("weights_sha256"),
        "images": len(jobs),
    }
    with atomic.staged_dir(out_dir) as staging:
        (staging / "images").mkdir()
        for job, lora_img, base_img in zip(jobs, lora_images, base_images, strict=True):
            (staging / "images" / f"lora-{job.id}.png").write_bytes(png_bytes(lora_img))
            (staging / "images" / f"base-{job.id}.png").write_bytes(png_bytes(base_img))
        labels = [
            render_prompt(
                "{trigger}, {style}, {setting}", params.character, job.context, trigger=False
            )
            for job in jobs[:: len(params.evaluate.seeds)]
        ]
        sheet = contact_sheet(
            {"with LoRA": lora_images, "base model": base_images},
            columns=len(params.evaluate.seeds),
            row_labels=labels,
        )
        sheet.save(staging / "contact_sheet.png")
        atomic.write_json(staging / "metrics.json", metrics)
        headline = {k: v for k, v in metrics.items() if isinstance(v, float)}
        output = seal("evaluate", staging, out_dir, fp, headline)
    logger.info("evaluate: %s", {k: round(v, 4) for k, v in headline.items()})
    return output
