"""bench/kept_set_rules.py: selection rules re-run offline, judged by the world's oracle."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import MODELS, REPO, bench_script


def _row(wrong: list[str], identity: float, certainty: float, **flags: bool) -> dict:
    return {"kept": False, "passing": True, "duplicate": False} | flags | {
        "identity": identity, "certainty": certainty, "wrong": wrong,
    }  # fmt: skip


def test_each_rule_keeps_what_it_ranks_best() -> None:
    rules = bench_script("kept_set_rules")
    rows = [
        _row([], identity=0.1, certainty=-0.01),
        _row(["eye_colour"], identity=0.9, certainty=-0.5, kept=True),
        _row(["accessory"], identity=0.8, certainty=-0.2),
        _row([], identity=0.2, certainty=-0.05),
        _row([], identity=0.99, certainty=-0.0, passing=False),
        _row([], identity=0.99, certainty=-0.0, duplicate=True),
    ]
    wrong = {rule: [r["wrong"] for r in rules.select(rows, rule)] for rule in rules.RULES}
    assert wrong["kept"] == [["eye_colour"]]
    assert len(wrong["passing"]) == 4
    assert wrong["identity 50%"] == [["eye_colour"], ["accessory"]]
    assert wrong["traits 50%"] == [[], []]
    assert wrong["oracle 50%"] == [[], []]
    table = rules.summarize({"kira": [rows]})
    assert table[2].startswith("| kira | 1 | 0.0 (1 img, eye_colour 100%) | 50.0 (4 img")


@pytest.mark.skipif(not (MODELS / "world-oracle").exists(), reason="no world oracle")
def test_reads_an_iteration_folder_with_the_oracle(tmp_path) -> None:
    """World renders of kira are read right by the oracle; a render of someone else is not."""
    from charloop_world.attributes import character_from_dict, context_from_dict, record
    from charloop_world.render import render

    truth = bench_script("kept_set_rules").truth_of("kira")
    assert truth is not None
    other = dict(truth, hair_colour="red" if truth["hair_colour"] != "red" else "black")
    context = context_from_dict(
        {"style": "flat", "setting": "forest", "pose": "standing", "expression": "smiling"}
    )
    folder = tmp_path / "runs" / "kira" / "params-x" / "iter-001"
    (folder / "01_generated").mkdir(parents=True)
    (folder / "02_filtered").mkdir()
    rows = []
    for i, who in enumerate([truth, truth, other]):
        character = character_from_dict(who)
        assert record(character, context)["hair_colour"] == who["hair_colour"]
        render(character, context, seed=i).save(folder / "01_generated" / f"{i}.png")
        scores = {"trait: teal hair": float(np.float32(0.9)), "identity": 0.5 + i / 10}
        rows.append({"file": f"{i}.png", "decision": "keep", "reasons": [], "scores": scores,
                     "traits": {"teal hair": True}})  # fmt: skip
    (folder / "02_filtered" / "report.jsonl").write_text("\n".join(map(json.dumps, rows)))
    done = subprocess.run(
        [sys.executable, str(REPO / "bench/kept_set_rules.py"), str(tmp_path / "runs")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("| kira"))
    assert line.startswith("| kira | 1 | 66.7 (3 img, hair_colour 33%)"), done.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO / "bench/kept_set_rules.py"), str(tmp_path / "nowhere")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "not a folder" in bad.stderr
