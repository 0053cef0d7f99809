"""Scoring an iteration's candidate LoRAs (``train.candidates``) on the held-out contexts.

Reference: each candidate's evaluation renders the base model's images again (what the
evaluate stage did before it kept them per process), measured in the same run on the same
adapters. Usage: ``python bench/bench_candidates.py [--candidates 3] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from charloop.lineage.candidates import seeded
    from charloop.params.project import load_project
    from charloop.stages.evaluate import stage
    from charloop.stages.train.stage import run_train
    from tests.conftest import captioned_dataset, tiny_params, write_params

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dataset = captioned_dataset(folder / "data", "sd15")
        data = tiny_params(train={"max_train_steps": 6, "batch_size": 2})
        data["generate"]["num_inference_steps"] = args.steps
        data["evaluate"]["seeds"] = [7, 8, 9, 10]
        project = load_project(write_params(folder, data))
        adapters = [
            run_train(seeded(project, seed), dataset, folder / f"a{seed}", {})
            for seed in range(args.candidates)
        ]
        jobs = stage.eval_jobs(project)
        stage.render_pairs(project, adapters[0], jobs[:1])  # load the pipeline untimed
        times = {}
        for label, keep in (("naive (base drawn per candidate)", False), ("kept", True)):
            stage._BASE_RENDERS.clear()
            started = time.perf_counter()
            for adapter in adapters:
                if not keep:
                    stage._BASE_RENDERS.clear()
                stage.render_pairs(project, adapter, jobs)
            times[label] = time.perf_counter() - started
    naive, kept = times.values()
    print(f"{args.candidates} candidates x {len(jobs)} held-out images, {args.steps} steps")
    for label, seconds in times.items():
        print(f"  {label:34s} {seconds:6.2f} s")
    print(f"  speed-up {naive / kept:.2f}x")


if __name__ == "__main__":
    main()
