"""Generation split into shards, so a task runner (Dask, Ray) can fan them out.

Each shard renders every ``shards``-th job of the iteration's plan into a scratch folder
beside the stage folder; ``assemble_generated`` then writes the ordinary generate stage
folder (same layout and manifest order as an unsharded run) and removes the scratch.
Each worker process loads the base pipeline once and reuses it for every shard it runs.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from charloop.core import atomic
from charloop.params.project import Project
from charloop.scenes.aim import plan_aim
from charloop.stages.contract import StageIdentity, identity
from charloop.stages.generate.stage import generate_identity, plan_jobs, render_jobs
from charloop.stages.layout import shard_dir
from charloop.stages.results import AdapterRef, Generated, GeneratedShard

logger = logging.getLogger(__name__)


def shard_identity(
    project: Project,
    iteration: int,
    adapter: AdapterRef | None,
    out_dir: str | Path,
    shard: int,
    shards: int,
) -> StageIdentity[GeneratedShard]:
    """Shard ``shard`` of ``shards``: the whole stage's fingerprint plus the shard's place."""
    whole = generate_identity(project, iteration, adapter, out_dir).fingerprint
    folder = shard_dir(Path(out_dir), shard)
    return identity(GeneratedShard, folder, __name__, whole=whole, shard=shard, shards=shards)


def run_generate_shard(
    project: Project,
    iteration: int,
    adapter: AdapterRef | None,
    out_dir: str | Path,
    shard: int,
    shards: int,
) -> GeneratedShard:
    """Render shard ``shard`` of ``shards`` (jobs ``shard``, ``shard + shards``, ...)."""
    stage = shard_identity(project, iteration, adapter, out_dir, shard, shards)
    if done := stage.done():
        return done
    aim = plan_aim(project, adapter.path if adapter else None)
    jobs = plan_jobs(project, iteration, aim)[shard::shards]
    with atomic.staged_dir(stage.out_dir) as staging:
        rows = render_jobs(project, iteration, adapter, jobs, staging)
        atomic.write_jsonl(staging / "manifest.jsonl", rows)
        output = stage.seal(staging, images=len(rows), shard=shard, pid=os.getpid())
    logger.info(
        "generate: shard %d/%d, %d images (pid %d)", shard + 1, shards, len(rows), os.getpid()
    )
    return output


def assemble_generated(
    project: Project,
    iteration: int,
    adapter: AdapterRef | None,
    parts: list[GeneratedShard],
    out_dir: str | Path,
) -> Generated:
    """Merge shard folders into the generate stage folder, in plan order.

    Raises:
        ValueError: the shards do not cover the iteration's plan exactly.
    """
    stage = generate_identity(project, iteration, adapter, out_dir)
    if done := stage.done():
        return done
    rows = {
        r["id"]: (part, r)
        for part in parts
        for r in atomic.read_jsonl(Path(part.path) / "manifest.jsonl")
    }
    order = [job.id for job in plan_jobs(project, iteration)]
    if sorted(rows) != sorted(order):
        raise ValueError(f"generate shards cover {len(rows)} of {len(order)} planned images")
    with atomic.staged_dir(stage.out_dir) as staging:
        for job_id in order:
            part, row = rows[job_id]
            shutil.copyfile(Path(part.path) / row["file"], staging / row["file"])
        atomic.write_jsonl(staging / "manifest.jsonl", [rows[i][1] for i in order])
        output = stage.seal(
            staging,
            images=len(order),
            shards=len(parts),
            shard_pids=sorted({p.pid for p in parts}),
        )
    for part in parts:
        shutil.rmtree(part.path, ignore_errors=True)
    return output
