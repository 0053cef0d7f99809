"""Several candidate LoRAs per iteration (``train.candidates``): the pick, the adoption,
the flow and the DVC stage command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charloop.core.hashing import tree_digest
from charloop.lineage.candidates import adopt, candidate_seeds, pick, seeded
from charloop.stages.contract import MARKER, RegisteredFolder, read_output
from charloop.stages.layout import PUBLISHED, IterationPaths
from charloop.stages.results import Adapter, Evaluation
from charloop.stages.train.stage import train_identity


def _metrics(score: float, noise: float = 0.001, layout: float = 0.3) -> dict[str, float]:
    return {
        "reference_match": score,
        "reference_match_noise": noise,
        "identity_consistency": score,
        "layout_diversity": layout,
        "layout_diversity_noise": 0.01,
        "diversity": 0.1,
        "diversity_noise": 0.01,
    }


def test_pick_takes_the_highest_round_metric_and_the_first_on_a_tie():
    chosen = pick([_metrics(0.85), _metrics(0.87), _metrics(0.87)], "auto")
    assert chosen.metric == "reference_match"  # 'auto' with references
    assert chosen.index == 1 and chosen.scores == [0.85, 0.87, 0.87]
    assert pick([_metrics(0.9), _metrics(0.8)], "auto").index == 0
    assert pick([_metrics(0.9), _metrics(0.8)], "identity_consistency").metric == (
        "identity_consistency"
    )


def test_pick_leaves_out_a_candidate_whose_images_collapse():
    first, collapsed = _metrics(0.85, layout=0.3), _metrics(0.95, layout=0.01)
    chosen = pick([first, collapsed], "auto")
    assert chosen.index == 0 and 1 in chosen.excluded
    record = chosen.record([4, 5])
    assert record["chosen_seed"] == 4
    assert "collapse onto one picture" in record["candidates"][1]["excluded"]


def test_pick_needs_a_candidate():
    with pytest.raises(ValueError, match="at least one"):
        pick([], "auto")


def test_seeds_follow_train_seed(make_project):
    project = make_project(train={"max_train_steps": 6, "seed": 3, "candidates": 3})
    assert candidate_seeds(project) == [3, 4, 5]
    other = seeded(project, 5)
    assert other.params.train.seed == 5 and project.params.train.seed == 3
    assert other.workdir.parent == project.workdir.parent  # same character folder


def test_candidates_leave_one_adapter_unchanged(make_project, tmp_path):
    """How many candidates an iteration trains is not part of one adapter's identity, so
    candidate 0 of a run with three is the adapter a run with one trains."""
    from charloop.stages.results import Dataset

    one = make_project(train={"max_train_steps": 6})
    three = make_project(train={"max_train_steps": 6, "candidates": 3})
    data = Dataset(
        path=str(tmp_path), digest="d" * 64, fingerprint="f", images=1, references=0, captioner="t"
    )
    assert (
        train_identity(one, data, tmp_path / "a", {}).fingerprint
        == train_identity(three, data, tmp_path / "a", {}).fingerprint
    )
    assert one.workdir != three.workdir  # but the loop's results differ: a new branch


def test_candidates_out_of_range_is_bad_input(tmp_path):
    from charloop_cli.main import app
    from tests.conftest import tiny_params, write_params

    path = write_params(tmp_path, tiny_params(train={"candidates": 0}))
    result = CliRunner().invoke(app, ["validate", "--params", str(path)])
    assert result.exit_code == 2
    assert "train.candidates" in result.output


@pytest.fixture(scope="module")
def candidate_loop(tmp_path_factory, prefect_harness):
    from charloop.params.project import load_project
    from flows.character_loop import character_loop
    from tests.conftest import tiny_params, write_params

    root = tmp_path_factory.mktemp("candidates")
    data = tiny_params(
        train={"max_train_steps": 6, "batch_size": 2, "seed": 10, "candidates": 2},
        loop={"max_iterations": 1},
        dvc={"enabled": False},
    )
    data["evaluate"]["seeds"] = [7, 8]
    project = load_project(write_params(root, data))
    rows = character_loop(params_file=str(project.params_file))
    return project, rows


def test_the_loop_trains_every_candidate_and_keeps_the_best(candidate_loop):
    project, rows = candidate_loop
    paths = IterationPaths.of(project.workdir, 1)
    selection = json.loads(paths.selection.read_text())
    assert [c["seed"] for c in selection["candidates"]] == [10, 11]
    scores = [c[selection["metric"]] for c in selection["candidates"]]
    chosen = selection["chosen_seed"]
    assert scores[chosen - 10] == max(scores)
    evaluations = [read_output(paths.candidate(s).evaluation, Evaluation) for s in (10, 11)]
    assert [e.metrics[selection["metric"]] for e in evaluations] == scores
    adapters = [read_output(paths.candidate(s).adapter, Adapter) for s in (10, 11)]
    assert adapters[0].weights_sha256 != adapters[1].weights_sha256  # the seed mattered
    kept = read_output(paths.adapter, Adapter)
    assert kept.weights_sha256 == adapters[chosen - 10].weights_sha256
    assert read_output(paths.evaluation, Evaluation).digest == evaluations[chosen - 10].digest
    assert rows[0][selection["metric"]] == pytest.approx(max(scores))
    # Hard links: the chosen weights are on disk once.
    source = paths.candidate(chosen).adapter / "pytorch_lora_weights.safetensors"
    assert (paths.adapter / source.name).stat().st_ino == source.stat().st_ino


def test_the_registry_records_which_candidate_was_kept(candidate_loop, tmp_path):
    from mlflow.tracking import MlflowClient

    project, _ = candidate_loop
    client = MlflowClient(project.tracking_uri)
    (version,) = client.search_model_versions(f"name = '{project.params.model_name}'")
    summary = json.loads(
        Path(client.download_artifacts(version.run_id, "summary.json", str(tmp_path))).read_text()
    )
    selection = json.loads(IterationPaths.of(project.workdir, 1).selection.read_text())
    assert summary["train_candidates"] == selection


def test_a_rerun_trains_no_candidate_again(candidate_loop):
    from flows.character_loop import character_loop

    project, rows = candidate_loop
    paths = IterationPaths.of(project.workdir, 1)
    markers = {s: (paths.candidate(s).adapter / MARKER).stat().st_mtime_ns for s in (10, 11)}
    again = character_loop(params_file=str(project.params_file))
    assert [r["version"] for r in again] == [r["version"] for r in rows]
    assert {s: (paths.candidate(s).adapter / MARKER).stat().st_mtime_ns for s in (10, 11)} == (
        markers
    )


def test_adopt_is_idempotent_and_never_rewrites_a_registered_iteration(candidate_loop, tmp_path):
    project, _ = candidate_loop
    paths = IterationPaths.of(project.workdir, 1)
    selection = json.loads(paths.selection.read_text())
    chosen = paths.candidate(selection["chosen_seed"]).adapter
    other = paths.candidate(({10, 11} - {selection["chosen_seed"]}).pop()).adapter
    before = tree_digest(paths.adapter)
    assert adopt(chosen, paths.adapter, Adapter).digest == read_output(chosen, Adapter).digest
    assert tree_digest(paths.adapter) == before
    assert (paths.root / PUBLISHED).is_file()
    with pytest.raises(RegisteredFolder):
        adopt(other, paths.adapter, Adapter)  # a registered iteration's history stays
    scratch = tmp_path / "iter" / "05_adapter"
    assert adopt(other, scratch, Adapter).digest == read_output(other, Adapter).digest


def test_dvc_stage_train_picks_among_candidates_beside_its_output(tmp_path):
    from charloop_cli.main import app
    from tests.conftest import captioned_dataset, tiny_params, write_params

    dataset = captioned_dataset(tmp_path / "d", "sd15")
    params = write_params(
        tmp_path, tiny_params(train={"max_train_steps": 4, "batch_size": 2, "candidates": 2})
    )
    out = tmp_path / "data" / "05_adapter"
    result = CliRunner().invoke(
        app, ["stage", "train", dataset.path, str(out), "--params", str(params)]
    )
    assert result.exit_code == 0, result.output
    root = IterationPaths(out.parent)
    selection = json.loads(root.selection.read_text())
    chosen = read_output(root.candidate(selection["chosen_seed"]).adapter, Adapter)
    assert read_output(out, Adapter).weights_sha256 == chosen.weights_sha256
    assert {p.name for p in (out.parent / "candidates").iterdir()} == {
        "seed-0",
        "seed-1",
        "selection.json",
    }


def test_the_base_model_renders_once_for_every_candidate(candidate_loop, monkeypatch):
    import numpy as np

    from charloop.models.pipeline import clear_pipeline_cache
    from charloop.stages.evaluate import stage

    project, _ = candidate_loop
    paths = IterationPaths.of(project.workdir, 1)
    adapters = [read_output(paths.candidate(s).adapter, Adapter) for s in (10, 11)]
    jobs = stage.eval_jobs(project)
    real, calls = stage.render, []
    monkeypatch.setattr(stage, "render", lambda *a, **k: calls.append(1) or real(*a, **k))
    stage._BASE_RENDERS.clear()
    first = stage.render_pairs(project, adapters[0], jobs)
    second = stage.render_pairs(project, adapters[1], jobs)
    assert len(calls) == 3  # two LoRAs, one base model
    clear_pipeline_cache()  # a reloaded base model draws its images again
    fresh = stage.render_pairs(project, adapters[1], jobs)
    assert len(calls) == 5
    for a, b, c in zip(first[1], second[1], fresh[1], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert np.array_equal(np.asarray(b), np.asarray(c))  # the same pixels as drawn anew
    same = [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*first, strict=True)]
    assert not all(same)  # the LoRA's images are not the base model's
