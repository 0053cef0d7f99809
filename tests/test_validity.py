"""The validity report: oracle agreement, its summary, and (slow) the default loop's margin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from charloop_world.validity import Scores, score
from tests.conftest import REPO

ORACLE = REPO / "models" / "world-oracle"
TRUTH = json.loads((REPO / "references" / "kira" / "identity.json").read_text())


def test_summary_reports_agreement_per_seed_and_attribute():
    matches = np.array([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=bool)
    summary = Scores(matches, ["hair", "eyes"], [1, 1, 2, 2]).summary()
    assert summary["consistency"] == pytest.approx(62.5)
    assert summary["consistency_per_seed"] == [75.0, 50.0]
    assert summary["consistency_seed_std"] == pytest.approx(12.5)
    assert summary["all_attributes"] == pytest.approx(50.0)
    assert summary["per_attribute"] == {"hair": 75.0, "eyes": 50.0}


def test_oracle_scores_the_true_character_far_above_random_ones():
    from charloop_world.attributes import CharacterSpec, sample_character, sample_context
    from charloop_world.oracle import load_oracle
    from charloop_world.render import render

    oracle = load_oracle(ORACLE)
    rng = np.random.default_rng(5)
    contexts = [sample_context(rng) for _ in range(12)]
    kira = CharacterSpec(**TRUTH)
    own = [render(kira, c, 100 + i) for i, c in enumerate(contexts)]
    others = [render(sample_character(rng), c, 200 + i) for i, c in enumerate(contexts)]
    seeds = list(range(12))
    mine = score(oracle, own, TRUTH, seeds).summary()
    theirs = score(oracle, others, TRUTH, seeds).summary()
    assert mine["consistency"] > 85.0
    assert theirs["consistency"] < 50.0


@pytest.mark.slow
def test_world_loop_raises_oracle_consistency(tmp_path):
    """The shipped params.yaml, then the report: the margin over the base model, and the
    round the loop aliased candidate is the oracle's best within the noise."""
    from charloop.params.project import load_project
    from charloop_world.validity import run_validity
    from flows.character_loop import character_loop

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    for name in ("references", "models"):
        (tmp_path / name).symlink_to(REPO / name)
    params = tmp_path / "params.yaml"
    rows = character_loop(params_file=str(params))
    assert 2 <= len(rows) <= 3
    project = load_project(params)
    report = run_validity(project, ORACLE, list(range(9000, 9008)), tmp_path / "report")
    models = report["models"]
    picked = [r for r in rows if r["best"]][-1]["iteration"]
    assert report["candidate"] == picked  # recomputed from disk as the loop decided
    chosen = models[f"iteration {picked}"]
    best = models[report["best"]]
    noise = max(models["base model"]["consistency_seed_std"], chosen["consistency_seed_std"])
    margin = chosen["consistency"] - models["base model"]["consistency"]
    assert margin >= 30.0 and margin > 3 * noise, report
    assert chosen["consistency"] >= best["consistency"] - max(noise, best["consistency_seed_std"])
    # Traits: the loop read its own traits on the renders, and the data it trained on was
    # more consistent than what the LoRA draws (data is not what limits a round).
    assert chosen["loop_traits"] is not None and chosen["loop_traits"]["traits"]
    assert chosen["kept_set"]["consistency"] >= chosen["consistency"]
    described = models["base model, described"]  # the base model told who to draw
    assert set(chosen["variety_kept"]) >= {"layout_variety"}
    expected = 100 * chosen["layout_variety"] / described["layout_variety"]
    assert chosen["variety_kept"]["layout_variety"] == pytest.approx(expected)


QUALITY_BAR = {"hair_colour": 0.9, "outfit_colour": 0.9, "setting": 0.9}
"""What a world base model must read back from full-description prompts before the loop's
margin on it means anything (issue: every family learns, measured)."""


def world_model_quality(family: str) -> dict[str, float]:
    """The oracle's read-back accuracies recorded when ``models/world-<family>`` was built."""
    stats = json.loads((REPO / "models" / f"world-{family}" / "build_stats.json").read_text())
    return dict(stats.get("quality", {}))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_world_loop_learns_on_every_family(tmp_path, family):
    """examples/world-<family>.yaml, then the report: the candidate beats the base model by
    30 oracle points and three times the seed noise, no round below the best by more than
    the noise; context fidelity within 5 points, or an xfail naming the shortfall (kira on
    world-sdxl v3: 5.2 under, documented in docs/world.md). Measured only on a base model that meets
    the quality bar: a CPU-built model that does not is reported, not tested."""
    from charloop.params.project import load_project
    from charloop_world.validity import run_validity
    from flows.character_loop import character_loop

    quality = world_model_quality(family)
    short = {k: quality.get(k, 0.0) for k, v in QUALITY_BAR.items() if quality.get(k, 0.0) < v}
    if short:
        pytest.skip(f"models/world-{family} reads back {short} (bar {QUALITY_BAR}): rebuild it "
                    "on a GPU with bench/gpu_world_build.sh")  # fmt: skip
    (tmp_path / "examples").mkdir()
    shutil.copy(REPO / "examples" / f"world-{family}.yaml", tmp_path / "examples" / "p.yaml")
    for name in ("references", "models"):
        (tmp_path / name).symlink_to(REPO / name)
    params = tmp_path / "examples" / "p.yaml"
    rows = character_loop(params_file=str(params))
    project = load_project(params)
    report = run_validity(project, ORACLE, list(range(9000, 9008)), tmp_path / "report")
    models = report["models"]
    base = models["base model"]
    picked = [r for r in rows if r["best"]][-1]["iteration"]
    assert report["candidate"] == picked  # recomputed from disk as the loop decided
    chosen = models[f"iteration {picked}"]
    noise = max(base["consistency_seed_std"], chosen["consistency_seed_std"])
    margin = chosen["consistency"] - base["consistency"]
    assert margin >= 30.0 and margin > 3 * noise, report
    best = models[report["best"]]
    assert chosen["consistency"] >= best["consistency"] - max(noise, best["consistency_seed_std"])
    short = base["context_fidelity"] - 5.0 - chosen["context_fidelity"]
    if short > 0:  # a measured, documented shortfall (docs/world.md), not a pass
        pytest.xfail(f"context fidelity {chosen['context_fidelity']:.1f} is {short:.1f} under "
                     f"the base model's {base['context_fidelity']:.1f} - 5")  # fmt: skip


def test_shipped_params_target_the_world_and_know_their_truth():
    from charloop.params.project import load_project
    from charloop_world.validity import load_truth

    project = load_project(REPO / "params.yaml")
    assert project.params.filter.embedder.type == "world"
    assert (Path(project.model_ref(project.params.base_model.path)) / "model_index.json").is_file()
    assert load_truth(project) == TRUTH


def test_the_described_baseline_names_every_true_attribute_and_no_trigger():
    from charloop.params.project import load_project
    from charloop_world.validity import validity_jobs

    project = load_project(REPO / "params.yaml")
    trigger = project.params.character.trigger
    prompted = validity_jobs(project, [1, 2])
    described = validity_jobs(project, [1, 2], TRUTH)
    assert [j.seed for j in described] == [j.seed for j in prompted]
    assert [j.context for j in described] == [j.context for j in prompted]
    assert all(j.prompt.startswith(trigger) for j in prompted)
    first = described[0].prompt
    assert trigger not in first
    for words in ("teal hair", "ponytail", "green eyes", "light skin", "pink jacket", "hat"):
        assert words in first, first
    assert first.endswith(prompted[0].prompt.split("ponytail, ", 1)[1])  # the same scene
