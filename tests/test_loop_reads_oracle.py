"""bench/loop_reads_oracle.py: does the loop's own trait read rank LoRAs as the oracle does."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, bench_script


def _report(trigger: str, reads: list[tuple[float, float]]) -> dict:
    models = {"base model": {"all_attributes": 0.0, "consistency": 20.0}}
    for i, (whole, loop) in enumerate(reads, 1):
        models[f"iteration {i}"] = {
            "all_attributes": whole,
            "consistency": 90.0,
            "loop_traits": {"mean": loop, "all": 10.0, "traits": {}},
        }
    return {"prompt": f"{trigger}, a character, in a library", "models": models}


def test_pairs_and_correlation_follow_the_two_reads(tmp_path: Path) -> None:
    bench = bench_script("loop_reads_oracle")
    reads = [(10.0, 70.0), (50.0, 80.0), (60.0, 75.0)]
    # 10 vs 50 and 10 vs 60 ordered right; 50 vs 60 differ by less than the gap.
    assert bench.pair_agreement(reads, 20.0) == (2, 2)
    assert bench.pair_agreement(reads, 5.0) == (2, 3)  # 50 < 60 but the loop says 80 > 75
    assert bench.pair_agreement([(0.0, 5.0), (40.0, 5.0)], 20.0) == (0, 1)  # a tie: half
    assert 0 < bench.correlation(reads) < 1
    assert math.isnan(bench.correlation([(1.0, 5.0), (2.0, 5.0)]))
    a, b = tmp_path / "a", tmp_path / "b.json"
    a.mkdir()
    (a / "validity.json").write_text(json.dumps(_report("zxq kira", reads[:2])))
    b.write_text(json.dumps(_report("zxq kira", reads[2:]) | {"prompt": "zxq kira, x"}))
    (tmp_path / "other.json").write_text("{}")  # not a report: skipped
    gathered = bench.gather([a, b, a, tmp_path / "other.json", tmp_path / "missing"])
    assert gathered == {"zxq kira": reads}  # the same LoRAs read twice count once


def test_no_reports_is_exit_2(tmp_path: Path) -> None:
    script = REPO / "bench" / "loop_reads_oracle.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "no validity.json" in done.stderr
