"""Scale-out: generation shards fanned out over a Dask LocalCluster (worker processes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect import flow

from charloop.core import atomic
from charloop.params.project import load_project
from charloop.stages.generate.stage import plan_jobs, run_generate
from charloop.stages.layout import IterationPaths
from charloop.stages.results import Generated
from flows.runners import task_runner_for

pytestmark = pytest.mark.slow


@flow(name="generate-only")
def _generate_only(params_file: str) -> Generated:
    from flows.character_loop import _generate

    return _generate(load_project(params_file), 1, None)


def test_dask_renders_shards_in_worker_processes(make_project, prefect_harness, tmp_path):
    project = make_project(scale={"task_runner": "dask", "workers": 2, "shards": 2})
    runner = task_runner_for(project.params.scale)
    output = _generate_only.with_options(task_runner=runner)(str(project.params_file))
    pids = output.shard_pids
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work
    rows = atomic.read_jsonl(Path(output.path) / "manifest.jsonl")
    assert [r["id"] for r in rows] == [j.id for j in plan_jobs(project, 1)]  # plan order
    assert not (IterationPaths.of(project.workdir, 1).root / ".shards").exists() or not any(
        (IterationPaths.of(project.workdir, 1).root / ".shards").iterdir()
    )
    single = run_generate(project, 1, None, tmp_path / "single")
    for row in rows:
        a = np.asarray(Image.open(Path(output.path) / row["file"]), dtype=np.int16)
        b = np.asarray(Image.open(Path(single.path) / row["file"]), dtype=np.int16)
        assert np.abs(a - b).max() <= 2  # same seeds; only batch composition differs
    again = _generate_only.with_options(task_runner=runner)(str(project.params_file))
    assert again.digest == output.digest  # a finished stage is not fanned out again


def test_whole_loop_on_dask_shards_generation_and_evaluation(make_project, prefect_harness):
    from flows.character_loop import character_loop

    project = make_project(
        loop={"max_iterations": 1},
        scale={"task_runner": "dask", "workers": 2, "shards": 2},
        dvc={"enabled": False},
    )
    runner = task_runner_for(project.params.scale)
    rows = character_loop.with_options(task_runner=runner)(str(project.params_file))
    assert len(rows) == 1 and rows[0]["version"] == "1"
    paths = IterationPaths.of(project.workdir, 1)
    assert len(list((paths.evaluation / "images").glob("lora-*.png"))) == 2
    assert not list((paths.root / ".shards").glob("*"))  # shard scratch merged and removed


def test_candidate_evaluations_fan_out_over_dask_shards(make_project, prefect_harness):
    from flows.character_loop import character_loop

    project = make_project(
        loop={"max_iterations": 1},
        train={"max_train_steps": 6, "batch_size": 2, "candidates": 2},
        scale={"task_runner": "dask", "workers": 2, "shards": 2},
        dvc={"enabled": False},
    )
    runner = task_runner_for(project.params.scale)
    rows = character_loop.with_options(task_runner=runner)(str(project.params_file))
    assert len(rows) == 1 and rows[0]["version"] == "1"
    paths = IterationPaths.of(project.workdir, 1)
    for seed in (0, 1):  # each candidate's renders gathered into its own folder
        assert len(list((paths.candidate(seed).evaluation / "images").glob("lora-*.png"))) == 2
        assert not list((paths.candidate(seed).root / ".shards").glob("*"))
    assert len(list((paths.evaluation / "images").glob("lora-*.png"))) == 2
