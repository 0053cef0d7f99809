"""Evaluation rendering split into shards for a task runner (Dask, Ray).

Each shard renders every ``shards``-th held-out job with and without the LoRA into a
scratch folder; ``run_evaluate(..., rendered=shards)`` then scores all of them exactly as
an unsharded evaluation would. Shards batch the jobs differently, which moves pixels by
float noise only (a test bounds it).
"""

from __future__ import annotations

import os
from pathlib import Path

from charloop.core import atomic
from charloop.params.project import Project
from charloop.scenes.render import png_bytes
from charloop.stages.contract import StageIdentity, identity
from charloop.stages.evaluate.stage import eval_jobs, render_pairs
from charloop.stages.layout import shard_dir
from charloop.stages.results import Adapter, EvalShard

eval_shard_dir = shard_dir  # same scratch layout as generation shards, beside the stage folder


def eval_shard_identity(
    project: Project, adapter: Adapter, out_dir: str | Path, shard: int, shards: int
) -> StageIdentity[EvalShard]:
    """What determines one shard's renders: the rendering params, the adapter, the shard."""
    params = project.params
    return identity(
        EvalShard,
        eval_shard_dir(Path(out_dir), shard),
        __name__,
        evaluate=params.evaluate.model_dump(),
        generate=params.generate.model_dump(),
        characters=[m.model_dump() for m in params.members],
        cast=params.cast.model_dump() if params.cast else None,
        base=project.portable_ref(params.base_model.path),
        adapter=adapter.digest,
        shard=shard,
        shards=shards,
    )


def run_eval_shard(
    project: Project, adapter: Adapter, out_dir: str | Path, shard: int, shards: int
) -> EvalShard:
    """Render jobs ``shard``, ``shard + shards``, ... with and without the LoRA."""
    stage = eval_shard_identity(project, adapter, out_dir, shard, shards)
    if done := stage.done():
        return done
    jobs = eval_jobs(project)[shard::shards]
    lora, base = render_pairs(project, adapter, jobs)
    with atomic.staged_dir(stage.out_dir) as staging:
        for job, lora_image, base_image in zip(jobs, lora, base, strict=True):
            (staging / f"lora-{job.id}.png").write_bytes(png_bytes(lora_image))
            (staging / f"base-{job.id}.png").write_bytes(png_bytes(base_image))
        return stage.seal(staging, jobs=[job.id for job in jobs], pid=os.getpid())
