"""The loop's candidate read back from disk, and the spread of several loops' reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charloop.core.errors import BadInput
from charloop.lineage.rounds import round_candidate
from charloop_cli.main import app
from charloop_world.spread import CANDIDATE, ORACLE_BEST, spread_markdown, spread_report


def _iteration(workdir: Path, number: int, match: float, noise: float = 0.005) -> None:
    folder = workdir / f"iter-{number:03d}" / "06_evaluation"
    folder.mkdir(parents=True)
    metrics = {"reference_match": match, "reference_match_noise": noise}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_round_candidate_is_the_best_round_by_the_loops_own_rule(tmp_path):
    assert round_candidate(tmp_path, 0.0) is None  # nothing finished yet
    _iteration(tmp_path, 1, 0.861)
    _iteration(tmp_path, 2, 0.833)  # worse: round 1 stays the candidate
    assert round_candidate(tmp_path, 0.0) == 1
    _iteration(tmp_path, 3, 0.864)  # +0.003 is inside the noise (0.005)
    assert round_candidate(tmp_path, 0.0) == 1
    (tmp_path / "iter-004.tmp").mkdir()  # a half-written folder is not an iteration
    _iteration(tmp_path, 5, 0.880)
    assert round_candidate(tmp_path, 0.0) == 5
    assert round_candidate(tmp_path, 0.02) == 1  # epsilon raises the bar
    # a new round (rounds.json) starts again: only its own iterations count
    rounds = [{"number": 1, "first_iteration": 1, "inputs": "a", "supersedes": None},
              {"number": 2, "first_iteration": 6, "inputs": "b", "supersedes": "5"}]  # fmt: skip
    (tmp_path / "rounds.json").write_text(json.dumps(rounds))
    assert round_candidate(tmp_path, 0.0) is None
    _iteration(tmp_path, 6, 0.70)
    assert round_candidate(tmp_path, 0.0) == 6


def _row(consistency: float, whole: float, fidelity: float = 80.0, layout: float = 20.0):
    return {
        "consistency": consistency,
        "all_attributes": whole,
        "context_fidelity": fidelity,
        "layout_variety": layout,
        "expression_variety": 30.0,
    }


def _report(folder: Path, rounds: list[dict], candidate: int | None, who: str = "kira") -> Path:
    models = {"base model": _row(28.0, 0.0, 84.0, 40.0), "base model, described": _row(89.0, 20.0)}
    models |= {f"iteration {k}": row for k, row in enumerate(rounds, 1)}
    report = {"character": {"name": who}, "models": models, "candidate": candidate}
    folder.mkdir()
    (folder / "validity.json").write_text(json.dumps(report))
    return folder


def test_spread_puts_the_loops_candidates_side_by_side(tmp_path):
    one = _report(tmp_path / "a", [_row(92.0, 54.0), _row(98.0, 88.0)], 2)
    two = _report(tmp_path / "b", [_row(80.0, 0.0, 81.0), _row(86.0, 12.0, 70.0, 17.0)], 1)
    spread = spread_report([one, two])
    pick = spread["rows"][CANDIDATE]
    assert spread["candidates"] == [2, 1]
    assert pick["consistency"] == pytest.approx(
        {"mean": 89.0, "std": 12.728, "min": 80.0}, abs=1e-3
    )
    assert pick["all_attributes"]["min"] == 0.0
    assert spread["rows"][ORACLE_BEST]["consistency"]["mean"] == 92.0  # 98 and 86
    assert spread["rows"]["base model"]["loops"]["n"] == 2
    targets = list(spread["targets"].values())
    assert targets[0] == [True, False]  # all attributes: 88 >= 20, 0 < 20
    assert targets[1] == [True, True]  # context fidelity 80 and 81 against 84 - 5
    assert targets[2] == [True, True]  # layout 20 >= 0.9 x 20
    text = spread_markdown(spread)
    assert "iteration 2, 1" in text and "1 of 2 loops (yes no)" in text
    assert "| loop's candidate | 2 | 89.0 ± 12.7 (80.0)" in text


def test_spread_without_a_candidate_counts_the_loop_as_not_met(tmp_path):
    one = _report(tmp_path / "a", [_row(92.0, 54.0)], 1)
    two = _report(tmp_path / "b", [_row(90.0, 40.0)], None)  # a report from before candidates
    spread = spread_report([one, two])
    assert spread["rows"][CANDIDATE]["loops"]["n"] == 1
    assert all(met == [True, False] for met in spread["targets"].values())


def test_spread_refuses_reports_it_cannot_compare(tmp_path):
    one = _report(tmp_path / "a", [_row(92.0, 54.0)], 1)
    other = _report(tmp_path / "b", [_row(90.0, 40.0)], 1, who="moro")
    with pytest.raises(BadInput, match="at least two loops"):
        spread_report([one])
    with pytest.raises(BadInput, match="another character"):
        spread_report([one, other])
    with pytest.raises(BadInput, match=r"c/validity\.json is missing"):
        spread_report([one, tmp_path / "c"])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "validity.json").write_text("{'half': ")
    with pytest.raises(BadInput, match="is not JSON"):
        spread_report([one, tmp_path / "c"])
    (tmp_path / "c" / "validity.json").write_text("[1, 2]")
    with pytest.raises(BadInput, match="is not a validity report"):
        spread_report([one, tmp_path / "c"])


def test_report_spread_writes_the_report(tmp_path):
    one = _report(tmp_path / "a", [_row(92.0, 54.0)], 1)
    two = _report(tmp_path / "b", [_row(80.0, 10.0)], 1)
    out = tmp_path / "spread"
    result = CliRunner().invoke(app, ["report", "spread", str(one), str(two), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "loop's candidate: consistency 86.0 ± 8.5 (min 80.0)" in result.output
    assert "1 of 2 loops" in result.output
    assert json.loads((out / "spread.json").read_text())["candidates"] == [1, 1]
    assert (out / "SPREAD.md").read_text().startswith("# Loop-to-loop spread")
