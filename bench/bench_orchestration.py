"""Orchestration overhead per iteration, and the cost of a re-run with nothing changed.

Reference: the same iteration run as plain library calls (generate ... evaluate), timed
stage by stage, with DVC (`dvc add` + push) and MLflow (run + model version) timed apart.
Then the Prefect flow runs the same iteration in a fresh folder (in this process, on
Prefect's ephemeral API), and again on the same folder with nothing changed.

Usage: ``python bench/bench_orchestration.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fresh_project(folder: Path):
    from charloop.params.project import load_project
    from tests.conftest import tiny_params, write_params

    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    return load_project(write_params(folder, tiny_params(loop={"max_iterations": 1})))


def timed(label: str, times: dict[str, float], fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    times[label] = time.perf_counter() - started
    return result


def library_iteration(project) -> dict[str, float]:
    """One iteration as direct library calls; returns seconds per part."""
    from charloop.lineage import registry, versioning
    from charloop.lineage.publish import prepare_stores, publish_iteration
    from charloop.stages.caption.stage import run_caption
    from charloop.stages.evaluate.stage import run_evaluate
    from charloop.stages.filter.stage import run_filter
    from charloop.stages.generate.stage import run_generate
    from charloop.stages.layout import IterationPaths
    from charloop.stages.review.stage import run_review
    from charloop.stages.train.stage import run_train

    paths = IterationPaths.of(project.workdir, 1)
    times: dict[str, float] = {}
    timed("stores", times, prepare_stores, project)
    gen = timed("generate", times, run_generate, project, 1, None, paths.generated)
    filt = timed("filter", times, run_filter, project, gen, paths.filtered)
    rev = timed("review", times, run_review, gen, filt, None, paths.reviewed)
    data = timed("caption", times, run_caption, project, gen, rev, paths.dataset)
    adapter = timed("train", times, run_train, project, data, paths.adapter, {"iteration": "1"})
    score = timed("evaluate", times, run_evaluate, project, adapter, data, paths.evaluation)
    outputs = {"generate": gen, "filter": filt, "review": rev, "caption": data}
    outputs |= {"train": adapter, "evaluate": score}
    track, register = versioning.track, registry.register_iteration
    parts: dict[str, float] = {"dvc": 0.0, "mlflow": 0.0}

    def timing(name, fn):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] += time.perf_counter() - started

        return wrapper

    versioning.track = timing("dvc", track)
    versioning.push = timing("dvc", versioning.push)
    registry.register_iteration = timing("mlflow", register)
    try:
        timed("publish", times, publish_iteration, project, 1, outputs, None, {}, None)
    finally:
        versioning.track, registry.register_iteration = track, register
    return times | parts


def main() -> None:
    from prefect import flow

    from flows.character_loop import character_loop

    @flow
    def noop() -> None:
        return None

    base = Path(tempfile.mkdtemp(prefix="bench-orch-"))
    library_iteration(fresh_project(base / "warm-up"))  # models loaded once per process
    lib = library_iteration(fresh_project(base / "library"))
    work = sum(lib[k] for k in ("generate", "filter", "review", "caption", "train", "evaluate"))
    flow_project = fresh_project(base / "flow")
    started = time.perf_counter()
    noop()  # starts Prefect's ephemeral API (absent with a real server)
    api_start = time.perf_counter() - started
    started = time.perf_counter()
    character_loop(params_file=str(flow_project.params_file))
    first = time.perf_counter() - started
    started = time.perf_counter()
    character_loop(params_file=str(flow_project.params_file))
    rerun = time.perf_counter() - started
    prefect = first - work - lib["publish"]
    print("one iteration of the tiny loop on this machine (seconds)")
    for name in ("generate", "filter", "review", "caption", "train", "evaluate"):
        print(f"  {name:10} {lib[name]:7.2f}")
    print(f"  stage work {work:7.2f}")
    print(f"  DVC        {lib['dvc']:7.2f}  ({lib['dvc'] / first:5.1%} of the flow run)")
    print(f"  MLflow     {lib['mlflow']:7.2f}  ({lib['mlflow'] / first:5.1%})")
    print(f"  Prefect    {prefect:7.2f}  ({prefect / first:5.1%}; tasks, cache keys, artifacts)")
    print(f"ephemeral Prefect API start (once per process, not per iteration): {api_start:.2f} s")
    print(f"flow run:  {first:7.2f} s")
    print(f"re-run:    {rerun:7.2f} s = {rerun / first:.1%} of the first run (target < 10%)")


if __name__ == "__main__":
    main()
