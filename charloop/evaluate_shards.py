"""Evaluation rendering split into shards for a task runner (Dask, Ray).

Each shard renders every ``shards``-th held-out job with and without the LoRA into a
scratch folder; ``run_evaluate(..., rendered=shards)`` then scores all of them exactly as
an unsharded evaluation would. Shards batch the jobs differently, which moves pixels by
float noise only (a test bounds it).
"""

from __future__ import annotations

import os
from pathlib import Path

from charloop import atomic
from charloop.config import Project
from charloop.evaluate import eval_jobs, render_pairs
from charloop.generate import png_bytes
from charloop.generate_shards import shard_dir
from charloop.stage import StageOutput, completed, fingerprint, seal

eval_shard_dir = shard_dir  # same scratch layout as generation shards, beside the stage folder


def run_eval_shard(
    project: Project, adapter: StageOutput, out_dir: str | Path, shard: int, shards: int
) -> StageOutput:
    """Render jobs ``shard``, ``shard + shards``, ... with and without the LoRA."""
    params = project.params
    fp = fingerprint(
        "evaluate-shard",
        evaluate=params.evaluate.model_dump(),
        generate=params.generate.model_dump(),
        characters=[m.model_dump() for m in params.members],
        cast=params.cast.model_dump() if params.cast else None,
        base=project.model_ref(params.base_model.path),
        adapter=adapter.digest,
        shard=shard,
        shards=shards,
    )
    folder = eval_shard_dir(Path(out_dir), shard)
    if done := completed(folder, fp):
        return done
    jobs = eval_jobs(project)[shard::shards]
    lora, base = render_pairs(project, adapter, jobs)
    with atomic.staged_dir(folder) as staging:
        for job, lora_image, base_image in zip(jobs, lora, base, strict=True):
            (staging / f"lora-{job.id}.png").write_bytes(png_bytes(lora_image))
            (staging / f"base-{job.id}.png").write_bytes(png_bytes(base_image))
        summary = {"jobs": [job.id for job in jobs], "pid": os.getpid()}
        return seal("evaluate-shard", staging, folder, fp, summary)
