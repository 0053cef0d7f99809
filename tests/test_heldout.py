"""Held out means held out: evaluation contexts never reach the training captions, and a
round that gains identity by collapsing variety does not count as better."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from charloop.lineage.promotion import metric_gates
from charloop.params.promote import PromoteParams
from charloop.scenes.heldout import WHOLE, HeldOutLeak, find_leaks, held_out_axes, mentions
from charloop.stages.caption.heldout import check_held_out, held_out_leaks
from charloop.stages.evaluate.convergence import collapse, decide
from charloop.stages.evaluate.metrics import consistency_metrics
from charloop_cli.main import app
from tests.conftest import tiny_params, write_params


def _project(tmp_path, sidecars: dict[str, str], **evaluate):
    from charloop.params.project import load_project

    refs = tmp_path / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for name, text in sidecars.items():
        Image.new("RGB", (32, 32), "teal").save(refs / f"{name}.png")
        (refs / f"{name}.txt").write_text(text)
    data = tiny_params()
    data["character"]["references"] = "refs"
    data["caption"] = {"include_references": True}
    data["evaluate"].update(evaluate)
    return load_project(write_params(tmp_path, data))


def test_words_match_whole_words_only():
    assert mentions("zxq kira, sketch style, in a library", "sketch")
    assert mentions("In A Library", "in a library")
    assert not mentions("sketchy lines", "sketch") and not mentions("anything", "")


def test_a_reference_caption_naming_a_held_out_value_is_a_leak(tmp_path):
    project = _project(tmp_path, {"a": "watercolor, in a forest", "b": "sketch, on a beach"})
    leaks = held_out_leaks(project)
    assert [(leak.axis, leak.value) for leak in leaks] == [("style", "sketch")]
    assert "refs/b.txt" in leaks[0].where
    with pytest.raises(HeldOutLeak, match=re.escape("evaluate.seen_axes: ['style']")):
        check_held_out(project)
    declared = _project(tmp_path / "seen", {"b": "sketch, on a beach"}, seen_axes=["style"])
    assert held_out_leaks(declared) == []  # the style is no longer claimed unseen
    assert held_out_axes(declared.params, {"style": "sketch", "setting": "in a library"}) == {
        "unseen_axes": ["setting"],
        "seen_axes": ["style"],
    }


def test_whole_contexts_and_generation_values_leak_too(make_project):
    params = make_project(
        contexts={"styles": ["sketch", "flat colors"], "settings": ["in a forest"]}
    ).params  # the tiny evaluation's first context is {sketch, in a library}
    assert find_leaks(params, []) == []  # sketch is a training style: not claimed unseen
    leaks = find_leaks(params, [("ref x", "zxq kira, in a library")])
    assert [(leak.axis, leak.value) for leak in leaks] == [("setting", "in a library")]
    params = make_project(contexts={"styles": ["sketch"], "settings": ["in a library"]}).params
    whole = find_leaks(params, [])
    assert [(leak.axis, leak.where) for leak in whole] == [
        (WHOLE, "the generation matrix (contexts)")
    ]


def test_validate_and_the_loop_refuse_a_leak(tmp_path):
    from charloop.lineage.preflight import preflight

    project = _project(tmp_path, {"b": "anime, in a desert"})  # the second held-out context
    result = CliRunner().invoke(app, ["validate", str(project.params_file)])
    assert result.exit_code == 2, result.output
    assert "'anime'" in result.output and "'in a desert'" in result.output
    assert "whole context" in result.output  # both values in one caption
    with pytest.raises(HeldOutLeak):
        preflight(project)


def test_world_references_avoid_held_out_values_and_write_identity(tmp_path):
    params = tmp_path / "params.yaml"
    data = tiny_params()
    data["evaluate"]["contexts"] = [{"style": "sketch style", "setting": "in a library"}]
    params.write_text(json.dumps(data))
    out = tmp_path / "refs"
    args = ["world", "references", str(out), "--n", "12", "--params", str(params)]
    result = CliRunner().invoke(app, [*args, "--character", "hair_colour=teal"])
    assert result.exit_code == 0, result.output
    captions = [p.read_text() for p in sorted(out.glob("ref_*.txt"))]
    assert len(captions) == 12
    assert not any(mentions(c, "sketch style") or mentions(c, "in a library") for c in captions)
    assert json.loads((out / "identity.json").read_text())["hair_colour"] == "teal"


def _round(identity: float, variety: float, noise: float) -> dict[str, float]:
    return {
        "identity_consistency": identity,
        "layout_diversity": variety,
        "layout_diversity_noise": noise,
    }


def test_a_gain_bought_with_diversity_is_a_collapse():
    assert collapse(_round(0.6, 0.30, 0.02), _round(0.7, 0.20, 0.03)) is not None
    assert collapse(_round(0.6, 0.30, 0.02), _round(0.7, 0.28, 0.03)) is None  # within noise
    assert collapse(_round(0.6, 0.30, 0.02), _round(0.5, 0.10, 0.03)) is None  # no gain
    assert collapse({"identity_consistency": 0.6}, _round(0.7, 0.1, 0.0)) is None  # no noise
    verdict = decide([_round(0.6, 0.30, 0.02), _round(0.7, 0.20, 0.03)], 0.0, 5)
    assert verdict.stop and verdict.collapse and "collapse" in verdict.reason
    assert not decide([_round(0.6, 0.30, 0.02), _round(0.7, 0.29, 0.03)], 0.0, 5).stop


def test_promotion_refuses_a_collapse_against_production():
    rules = PromoteParams(max_regression={})
    gates = metric_gates(_round(0.8, 0.1, 0.01), _round(0.7, 0.3, 0.01), rules)
    failed = [g for g in gates if not g.passed]
    assert [g.name for g in failed] == ["no collapse"] and "layout_diversity" in failed[0].detail
    kept = metric_gates(_round(0.8, 0.3, 0.01), _round(0.7, 0.3, 0.01), rules)
    assert all(g.passed for g in kept)


def test_noise_is_the_standard_error_across_seeds_and_contexts():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(8, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    metrics = consistency_metrics(emb, None, None, groups, seeds=[1, 2] * 4)
    diversities = [metrics["per_context"][g]["diversity"] for g in "abcd"]
    expected = np.std(diversities, ddof=1) / 2
    assert metrics["diversity_noise"] == pytest.approx(expected)
    assert metrics["identity_noise"] > 0
    assert "identity_noise" not in consistency_metrics(emb, None, None, groups)


def test_layout_diversity_sees_pose_and_framing_not_colour():
    from charloop.core.image_layout import layout_features
    from charloop.stages.evaluate.metrics import layout_metrics

    def figure(x: int, colour: str) -> Image.Image:
        image = Image.new("RGB", (64, 64), "white")
        image.paste(Image.new("RGB", (16, 40), colour), (x, 12))
        return image

    recoloured = [figure(24, c) for c in ("teal", "pink", "gold", "navy")]
    moved = [figure(x, "teal") for x in (4, 18, 32, 44)]
    groups = ["a", "a", "b", "b"]
    same_place = layout_metrics(layout_features(recoloured), groups)["layout_diversity"]
    other_places = layout_metrics(layout_features(moved), groups)["layout_diversity"]
    assert same_place < 0.05 < other_places
    assert layout_metrics(layout_features(moved), groups)["layout_diversity_noise"] >= 0


@pytest.mark.parametrize("name", ["params.yaml", "examples/tiny.yaml", "examples/cast.yaml"])
def test_the_shipped_params_hold_their_evaluation_out(name):
    from charloop.params.project import load_project
    from tests.conftest import REPO

    project = load_project(REPO / name)
    assert held_out_leaks(project) == []
    if name == "params.yaml":  # the default references are in training contexts only
        sidecars = list((REPO / "references" / "kira").glob("*.txt"))
        assert len(sidecars) == 8


def test_a_models_description_loses_its_held_out_words(make_project):
    from charloop.scenes.heldout import redact

    params = make_project().params  # held out: sketch / in a library, anime / in a desert
    text, removed = redact(params, "A Sketch of a girl in a library, smiling")
    assert removed == ["in a library", "sketch"]
    assert text == "A of a girl, smiling"
    assert redact(params, "a girl on a beach") == ("a girl on a beach", [])


def test_a_first_promotion_is_judged_against_the_parent():
    rules = PromoteParams(max_regression={})
    gates = metric_gates(_round(0.8, 0.1, 0.01), None, rules, parent=_round(0.7, 0.3, 0.01))
    assert [g.name for g in gates if not g.passed] == ["no collapse"]
    assert "vs parent" in gates[-1].detail
    assert metric_gates(_round(0.8, 0.1, 0.01), None, rules) == []  # a root: nothing to judge


def test_a_collapsed_iteration_is_registered_but_not_aliased_candidate(tmp_path):
    from mlflow.tracking import MlflowClient

    from charloop.lineage.registry import IterationRecord, register_iteration

    adapter, evaluation, dataset = (tmp_path / n for n in ("adapter", "evaluation", "data"))
    for folder in (adapter, evaluation, dataset):
        folder.mkdir()
    (adapter / "weights.bin").write_bytes(b"lora")
    (evaluation / "metrics.json").write_text("{}")
    Image.new("RGB", (8, 8)).save(evaluation / "contact_sheet.png")
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def register(iteration: int, candidate: bool) -> str:
        record = IterationRecord(
            "kira-lora", "charloop-kira", (tmp_path / "artifacts").as_uri(), iteration,
            str(adapter), str(evaluation), {"identity_consistency": 0.5}, {},
            {"adapter_sha256": str(iteration)}, dataset_path=str(dataset),
        )  # fmt: skip
        return register_iteration(uri, record, candidate)["version"]

    assert register(1, True) == "1"
    assert register(2, False) == "2"
    alias = MlflowClient(uri).get_model_version_by_alias("kira-lora", "candidate")
    assert str(alias.version) == "1"
