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

from charloop import atomic
from charloop.config import Project
from charloop.generate import (
    AdapterRef,
    generate_fingerprint,
    plan_jobs,
    render_jobs,
)
from charloop.stage import StageOutput, completed, fingerprint, seal

logger = logging.getLogger(__name__)


def shard_dir(out_dir: Path, shard: int) -> Path:
    """Scratch folder of one shard (not versioned)."""
    return out_dir.parent / ".shards" / f"{out_dir.name}-{shard:02d}"


def generated_done(
    project: Project, iteration: int, adapter: AdapterRef | None, out_dir: Path
) -> bool:
    """True when the stage folder is already complete for these inputs (skip the shards)."""
    return completed(out_dir, generate_fingerprint(project, iteration, adapter)) is not None


def run_generate_shard(
    project: Project,
    iteration: int,
    adapter: AdapterRef | None,
    out_dir: str | Path,
    shard: int,
    shards: int,
) -> StageOutput:
    """Render shard ``shard`` of ``shards`` (jobs ``shard``, ``shard + shards``, ...)."""
    out_dir = Path(out_dir)
    fp = fingerprint(
        "generate-shard",
        whole=generate_fingerprint(project, iteration, adapter),
        shard=shard,
        shards=shards,
    )
    folder = shard_dir(out_dir, shard)
    if done := completed(folder, fp):
        return done
    jobs = plan_jobs(project, iteration)[shard::shards]
    with atomic.staged_dir(folder) as staging:
        rows = render_jobs(project, iteration, adapter, jobs, staging)
        atomic.write_jsonl(staging / "manifest.jsonl", rows)
        summary = {"images": len(rows), "shard": shard, "pid": os.getpid()}
        output = seal("generate-shard", staging, folder, fp, summary)
    logger.info(
        "generate: shard %d/%d, %d images (pid %d)", shard + 1, shards, len(rows), os.getpid()
    )
    return output


def assemble_generated(
    project: Project,
    iteration: int,
    adapter: AdapterRef | None,
    parts: list[StageOutput],
    out_dir: str | Path,
) -> StageOutput:
    """Merge shard folders into the generate stage folder, in plan order.

    Raises:
        ValueError: the shards do not cover the iteration's plan exactly.
    """
    out_dir = Path(out_dir)
    fp = generate_fingerprint(project, iteration, adapter)
    if done := completed(out_dir, fp):
        return done
    rows = {
        r["id"]: (part, r)
        for part in parts
        for r in atomic.read_jsonl(Path(part.path) / "manifest.jsonl")
    }
    order = [job.id for job in plan_jobs(project, iteration)]
    if sorted(rows) != sorted(order):
        raise ValueError(f"generate shards cover {len(rows)} of {len(order)} planned images")
    with atomic.staged_dir(out_dir) as staging:
        for job_id in order:
            part, row = rows[job_id]
            shutil.copyfile(Path(part.path) / row["file"], staging / row["file"])
        atomic.write_jsonl(staging / "manifest.jsonl", [rows[i][1] for i in order])
        summary = {
            "images": len(order),
            "shards": len(parts),
            "shard_pids": sorted({int(p.summary.get("pid", 0)) for p in parts}),
        }
        output = seal("generate", staging, out_dir, fp, summary)
    for part in parts:
        shutil.rmtree(part.path, ignore_errors=True)
    return output
