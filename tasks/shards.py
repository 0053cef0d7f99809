"""Shard tasks: generation and evaluation rendering fanned out over a Prefect task runner
(Dask, Ray), one pipeline per worker process. Cache keys are the library's shard identities.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from charloop.params.project import Project
from charloop.stages.evaluate.shards import eval_shard_identity, run_eval_shard
from charloop.stages.generate.shards import (
    assemble_generated,
    run_generate_shard,
    shard_identity,
)
from charloop.stages.results import Adapter, AdapterRef, EvalShard, Generated, GeneratedShard
from tasks.caching import retry_transient, stage_cache_key
from tasks.stages import CACHED, paths_of


@task(
    name="generate-shard",
    cache_key_fn=stage_cache_key(
        lambda p: shard_identity(
            p["project"],
            p["iteration"],
            p["adapter"],
            paths_of(p["project"], p["iteration"]).generated,
            p["shard"],
            p["shards"],
        )
    ),
    **CACHED,
)
def generate_shard_task(
    project: Project, iteration: int, adapter: AdapterRef | None, shard: int, shards: int
) -> GeneratedShard:
    """Render one shard of the iteration's images (fans out on Dask/Ray task runners)."""
    out = paths_of(project, iteration).generated
    return run_generate_shard(project, iteration, adapter, out, shard, shards)


@task(name="assemble-generated", retries=1, retry_condition_fn=retry_transient)
def assemble_generated_task(
    project: Project, iteration: int, adapter: AdapterRef | None, parts: list[GeneratedShard]
) -> Generated:
    """Merge the shards into the generate stage folder."""
    out = paths_of(project, iteration).generated
    return assemble_generated(project, iteration, adapter, parts, out)


@task(
    name="evaluate-shard",
    cache_key_fn=stage_cache_key(
        lambda p: eval_shard_identity(
            p["project"],
            p["adapter"],
            p.get("out") or paths_of(p["project"], p["iteration"]).evaluation,
            p["shard"],
            p["shards"],
        )
    ),
    **CACHED,
)
def eval_shard_task(
    project: Project,
    iteration: int,
    adapter: Adapter,
    shard: int,
    shards: int,
    out: Path | None = None,
) -> EvalShard:
    """Render one shard of the held-out evaluation (fans out on Dask/Ray task runners);
    ``out``: the evaluation folder it belongs to (a candidate's), if not the iteration's."""
    out = out or paths_of(project, iteration).evaluation
    return run_eval_shard(project, adapter, out, shard, shards)
