"""Generation throughput: batched rendering vs one image per pipeline call (the naive loop).

Both run in this process on the same pipeline, prompts, seeds and steps; the script prints
images/s for each and their ratio. Usage: ``python bench/bench_generate.py [--images 32]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from charloop.models.pipeline import load_pipeline
from charloop.params.project import load_project
from charloop.scenes.render import render
from charloop.stages.generate.stage import plan_jobs

ROOT = Path(__file__).resolve().parents[1]


def images_per_second(pipe, jobs, gen) -> float:
    started = time.perf_counter()
    render(pipe, jobs, gen)
    return len(jobs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    project = load_project(args.params)
    gen = project.params.generate
    pipe = load_pipeline(
        project.model_ref(project.params.base_model.path), project.params.base_model
    )
    jobs = (plan_jobs(project, 1) * args.images)[: args.images]
    render(pipe, jobs[:2], gen.model_copy(update={"batch_size": 2}))  # warm-up
    naive = images_per_second(pipe, jobs, gen.model_copy(update={"batch_size": 1}))
    batched = images_per_second(pipe, jobs, gen.model_copy(update={"batch_size": args.batch}))
    print(f"device: {pipe.device}, images: {len(jobs)}, steps: {gen.num_inference_steps}")
    print(f"batch 1:  {naive:8.2f} images/s (naive reference)")
    print(f"batch {args.batch}:  {batched:8.2f} images/s")
    print(f"ratio:    {batched / naive:8.2f}x")


if __name__ == "__main__":
    main()
