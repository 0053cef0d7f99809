"""Evaluation metrics, iteration deltas and reports: pure functions, then one stage run."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charloop.core import atomic
from charloop.core.contact_sheet import contact_sheet
from charloop.lineage.reports import (
    history_markdown,
    metrics_markdown,
    per_context_rows,
    plot_history,
)
from charloop.stages.evaluate.convergence import compare
from charloop.stages.evaluate.metrics import (
    consistency_metrics,
    headline,
    validation_loss,
    with_and_without,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Two contexts x two seeds. Context "a": orthogonal images; context "b": identical images.
E = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
GROUPS = ["a", "a", "b", "b"]


def _finite_everywhere(value) -> bool:
    if isinstance(value, dict):
        return all(_finite_everywhere(v) for v in value.values())
    return not isinstance(value, float) or math.isfinite(value)


def test_metrics_on_a_hand_built_embedding_matrix():
    train = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    refs = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    m = consistency_metrics(E, E, train, GROUPS, refs)
    # Pairs: (0,2) (0,3) (2,3) are identical, the other three orthogonal.
    assert m["identity_consistency"] == pytest.approx(0.5)
    assert m["prompt_fidelity"] == pytest.approx(1.0)
    assert m["nearest_train_similarity"] == pytest.approx(0.75)
    assert m["reference_similarity"] == pytest.approx(0.75)
    # Diversity: context a's seeds are orthogonal (1.0), context b's identical (0.0).
    assert m["diversity"] == pytest.approx(0.5)
    a, b = m["per_context"]["a"], m["per_context"]["b"]
    assert a["diversity"] == pytest.approx(1.0) and b["diversity"] == pytest.approx(0.0)
    assert a["reference_similarity"] == pytest.approx(0.5)
    assert b["reference_similarity"] == pytest.approx(1.0)
    assert a["nearest_train_similarity"] == pytest.approx(0.5)
    assert a["identity_to_other_contexts"] == pytest.approx(0.5)


def test_reference_similarity_is_a_cosine_to_the_mean_reference():
    refs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # mean (0.5, 0.5, 0): not unit length
    m = consistency_metrics(E, None, None, GROUPS, refs)
    assert m["reference_similarity"] == pytest.approx(1 / math.sqrt(2))
    assert "prompt_fidelity" not in m and "nearest_train_similarity" not in m


def test_uncomputable_metrics_are_left_out_not_nan():
    one_seed = consistency_metrics(E[:2], None, None, ["a", "b"])  # one image per context
    assert "diversity" not in one_seed
    assert all("diversity" not in entry for entry in one_seed["per_context"].values())
    one_context = consistency_metrics(E[:2], None, None, ["a", "a"], np.zeros((0, 3)))
    assert "identity_to_other_contexts" not in one_context["per_context"]["a"]
    assert "reference_similarity" not in one_context
    assert one_context["diversity"] == pytest.approx(1.0)
    assert _finite_everywhere(one_seed) and _finite_everywhere(one_context)


def test_with_and_without_adds_the_trigger_effect():
    lora = consistency_metrics(E, None, None, GROUPS)
    base = consistency_metrics(np.tile(E[:1], (4, 1)), None, None, GROUPS)  # all identical
    merged = with_and_without(lora, base)
    assert merged["base_identity_consistency"] == pytest.approx(1.0)
    assert merged["trigger_effect"] == pytest.approx(0.5 - 1.0)
    assert merged["per_context"]["a"]["trigger_effect"] == pytest.approx(0.5 - 1.0)
    assert merged["base_diversity"] == pytest.approx(0.0)
    assert "trigger_effect" not in lora["per_context"]["a"], "inputs are not modified"
    summary = headline({**merged, "images": 4, "bad": float("nan")})
    assert "per_context" not in summary and "images" not in summary and "bad" not in summary
    assert all(isinstance(v, float) for v in summary.values())


def test_validation_loss_reads_the_last_point_when_there_is_one(tmp_path):
    log = tmp_path / "train_log.json"
    assert validation_loss(tmp_path) is None  # no log at all
    log.write_text(json.dumps({"loss": [0.5]}))
    assert validation_loss(tmp_path) is None  # an older adapter
    log.write_text(json.dumps({"loss": [0.5], "validation_loss": []}))
    assert validation_loss(tmp_path) is None
    points = [{"step": 2, "loss": 0.4}, {"step": 4, "loss": 0.3}]
    log.write_text(json.dumps({"validation_loss": points}))
    assert validation_loss(tmp_path) == pytest.approx(0.3)
    log.write_text('{"validation_loss": [{"step": 4, "loss": NaN}]}')
    assert validation_loss(tmp_path) is None


def test_compare_takes_shared_finite_numbers_only():
    previous = {"identity_consistency": 0.5, "diversity": 0.2, "gone": 1.0, "bad": math.nan}
    current = {
        "identity_consistency": 0.75,
        "diversity": 0.1,
        "new": 2.0,
        "bad": 0.3,
        "flag": True,
        "name": "x",
    }
    deltas = compare(previous, current)
    assert deltas == pytest.approx({"identity_consistency": 0.25, "diversity": -0.1})
    assert compare({}, current) == {}


def test_plot_history_writes_a_png_and_refuses_an_empty_history(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        plot_history([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
    history = [
        {"identity_consistency": 0.5, "base_identity_consistency": 0.4, "prompt_fidelity": 0.2},
        {
            "identity_consistency": 0.6,
            "base_identity_consistency": 0.4,
            "prompt_fidelity": 0.25,
            "diversity": 0.1,
        },
    ]
    path = plot_history(history, tmp_path / "nested" / "plot.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 1000
    with Image.open(path) as image:
        without_loss = image.size
    single = plot_history(history[:1], tmp_path / "single.png")
    assert single.stat().st_size > 1000
    history[1]["validation_loss"] = 0.3  # a second panel for the loss
    with Image.open(plot_history(history, tmp_path / "loss.png")) as image:
        assert image.width == without_loss[0] and image.height > without_loss[1]


def test_contact_sheet_grid_is_contexts_by_seeds():
    contexts, seeds, tile = 3, 2, 10
    colours = [(40 * i, 0, 255 - 40 * i) for i in range(contexts * seeds)]
    images = [Image.new("RGB", (32, 32), c) for c in colours]
    sheet = contact_sheet(
        {"with LoRA": images, "base model": images[::-1]},
        columns=seeds,
        row_labels=[f"context {r}" for r in range(contexts)],
        tile=tile,
    )
    label, gap = 14, 4
    panel = seeds * tile + (seeds - 1) * gap
    assert sheet.size == (2 * panel + 3 * gap, label + contexts * (tile + label))
    for index, colour in enumerate(colours):
        row, col = divmod(index, seeds)
        y = label + row * (tile + label) + label + tile // 2
        assert sheet.getpixel((col * (tile + gap) + tile // 2, y)) == colour
        mirrored = colours[len(colours) - 1 - index]
        assert sheet.getpixel((panel + 3 * gap + col * (tile + gap) + tile // 2, y)) == mirrored


def test_markdown_and_per_context_rows():
    lora = consistency_metrics(E, E, None, GROUPS)
    base = consistency_metrics(E[::-1], E, None, GROUPS)
    metrics = {
        **with_and_without(lora, base),
        "contexts": {
            "a": {"style": "sketch", "setting": "in a library", "in_training_matrix": False},
            "b": {"style": "anime", "setting": "", "in_training_matrix": False},
        },
    }
    rows = per_context_rows(metrics)
    assert [r["context"] for r in rows] == ["sketch, in a library", "anime"]
    assert len({tuple(r) for r in rows}) == 1, "every row has the same columns"
    assert rows[0]["diversity"] == pytest.approx(1.0) and "base_diversity" in rows[0]
    assert "reference_similarity" not in rows[0]
    summary = headline(metrics)
    text = metrics_markdown(2, summary, {"identity_consistency": 0.1}, "sheet.png")
    assert "| identity_consistency | 0.5000 | +0.1000 |" in text
    assert "| diversity | 0.5000 | - |" in text
    first = metrics_markdown(1, summary, None, "sheet.png")
    assert "first iteration" in first and "+" not in first.split("sheet.png")[0]
    table = history_markdown([summary, {**summary, "validation_loss": 0.25}], "plot.png")
    assert "validation_loss" in table.splitlines()[0]
    assert table.splitlines()[2].startswith("| 1 | 0.5000") and "| - |" in table.splitlines()[2]


def test_a_context_the_training_matrix_contains_is_flagged(make_project):
    from charloop.stages.evaluate.stage import seen_in_training

    params = make_project().params
    trained = {"style": "watercolor", "setting": "on a beach", "expression": "smiling"}
    assert seen_in_training(params, {**dict.fromkeys(trained, ""), **trained, "pose": ""})
    assert not seen_in_training(params, {**trained, "style": "sketch"})
    assert not seen_in_training(params, {**trained, "expression": ""})  # a different prompt


# One real evaluation on the tiny models: references, two seeds and a validation loss.


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from charloop.params.project import load_project
    from charloop.stages.caption.stage import run_caption
    from charloop.stages.evaluate.stage import run_evaluate
    from charloop.stages.filter.stage import run_filter
    from charloop.stages.generate.stage import run_generate
    from charloop.stages.review.stage import run_review
    from charloop.stages.train.stage import run_train
    from tests.conftest import tiny_params, write_params

    root = tmp_path_factory.mktemp("evaluate")
    data = tiny_params()
    project = load_project(write_params(root, data))
    generated = run_generate(project, 1, None, root / "gen")
    filtered = run_filter(project, generated, root / "filt")
    reviewed = run_review(generated, filtered, None, root / "review")
    dataset = run_caption(project, generated, reviewed, root / "data")
    adapter = run_train(project, dataset, root / "adapter", {"iteration": "1"})
    # An adapter whose training logged a validation curve.
    adapter_dir = root / "adapter-with-validation"
    shutil.copytree(adapter.path, adapter_dir)
    log = json.loads((adapter_dir / "train_log.json").read_text())
    log["validation_loss"] = [{"step": 3, "loss": 0.75}, {"step": 6, "loss": 0.5}]
    (adapter_dir / "train_log.json").write_text(json.dumps(log))
    adapter = dataclasses.replace(adapter, path=str(adapter_dir))
    refs = root / "refs"
    refs.mkdir()
    for row in atomic.read_jsonl(Path(generated.path) / "manifest.jsonl")[:3]:
        shutil.copy(Path(generated.path) / row["file"], refs / row["file"])
    data["character"]["references"] = "refs"
    data["evaluate"]["seeds"] = [7, 8]
    project = load_project(write_params(root, data))
    return run_evaluate(project, adapter, dataset, root / "eval")


def test_evaluation_writes_the_new_metrics(evaluated):
    output = evaluated
    metrics = json.loads((Path(output.path) / "metrics.json").read_text())
    for key in ("reference_similarity", "base_reference_similarity", "diversity"):
        assert -1.0 <= metrics[key] <= 2.0, key
    assert metrics["trigger_effect"] == pytest.approx(
        metrics["identity_consistency"] - metrics["base_identity_consistency"]
    )
    assert metrics["validation_loss"] == pytest.approx(0.5)
    assert metrics["references_used"] == 3 and metrics["seeds"] == [7, 8]
    assert len(metrics["per_context"]) == 2
    for entry in metrics["per_context"].values():
        assert {"diversity", "reference_similarity", "trigger_effect"} <= set(entry)
    assert not any(c["in_training_matrix"] for c in metrics["contexts"].values())
    # Which axes were unseen: the tiny matrix has neither the styles nor the settings.
    held = sorted(tuple(c["unseen_axes"]) for c in metrics["contexts"].values())
    assert held == [("setting", "style"), ("setting", "style")]
    assert all(c["seen_axes"] == [] for c in metrics["contexts"].values())
    # Noise: two seeds and two contexts give a standard error for each.
    assert metrics["identity_noise"] >= 0 and metrics["diversity_noise"] >= 0
    assert "base_diversity_noise" in metrics
    assert _finite_everywhere(metrics)
    assert output.metrics == headline(metrics)
    assert {"trigger_effect", "diversity", "validation_loss"} <= set(output.metrics)


def test_evaluation_contact_sheet_has_a_row_per_context_and_a_column_per_seed(evaluated):
    output = evaluated
    label, gap, tile = 14, 4, 96
    panel = 2 * tile + gap
    with Image.open(Path(output.path) / "contact_sheet.png") as sheet:
        assert sheet.size == (2 * panel + 3 * gap, label + 2 * (tile + label))
    assert len(list((Path(output.path) / "images").glob("base-*.png"))) == 4
