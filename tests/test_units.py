"""Pure functions: prompt matrix, seeds, image statistics, filter decisions, captions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from charloop.core.hashing import sha256_bytes, tree_digest
from charloop.models.embedder import mean_pairwise_cosine
from charloop.params.filter import DuplicatesCheck, IdentityCheck, QualityCheck
from charloop.params.schema import AXES, CaptionParams, Character, Contexts, FilterParams
from charloop.scenes.prompts import context_matrix, derive_seed, render_prompt
from charloop.stages.caption.folder import subset_folder
from charloop.stages.caption.stage import caption_text
from charloop.stages.evaluate.convergence import decide
from charloop.stages.evaluate.stage import consistency_metrics
from charloop.stages.filter.imagestats import dhash, hamming, quality_scores
from charloop.stages.filter.stage import judge

CONTEXTS = Contexts(
    styles=["flat", "watercolor", "pixel art"],
    settings=["forest", "beach", "city", "bar"],
    attire=["coat", "dress"],
    expressions=["smiling", "serious"],
)
CHARACTER = Character(name="kira", trigger="zxq kira", traits=["teal hair", "green eyes"])


def test_full_matrix_is_the_product():
    assert len(context_matrix(CONTEXTS, None, 0)) == 3 * 4 * 2 * 2


@pytest.mark.parametrize("cap", [4, 5, 11])
def test_capped_matrix_covers_every_value_and_is_deterministic(cap):
    combos = context_matrix(CONTEXTS, cap, seed=3)
    assert len(combos) == cap
    assert len({tuple(c.values()) for c in combos}) == cap
    for axis, values in CONTEXTS.axis_values().items():
        assert {c[axis] for c in combos} == set(values)
    assert combos == context_matrix(CONTEXTS, cap, seed=3)
    assert combos != context_matrix(CONTEXTS, cap, seed=4) or cap == 4


def test_cap_below_widest_axis_is_an_error():
    with pytest.raises(ValueError, match="at least 4"):
        context_matrix(CONTEXTS, 3, 0)


def test_render_prompt_drops_empty_parts_and_can_omit_trigger():
    template = "{trigger}, {traits}, {style}, {setting}, {attire}, {expression}, {pose}"
    context = {"style": "flat", "setting": "forest", "attire": "", "expression": "smiling"}
    assert render_prompt(template, CHARACTER, context) == (
        "zxq kira, teal hair, green eyes, flat, forest, smiling"
    )
    assert render_prompt(template, CHARACTER, context, trigger=False).startswith("teal hair")


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1, "abc", 0) == derive_seed(0, 1, "abc", 0)
    seeds = {derive_seed(0, it, "abc", k) for it in range(3) for k in range(10)}
    assert len(seeds) == 30
    assert all(0 <= s < 2**31 for s in seeds)


def _noise(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.random((8, 8, 3)) * 255
    return Image.fromarray(smooth.astype("uint8")).resize((size, size), Image.Resampling.BICUBIC)


def test_dhash_separates_different_images_and_matches_near_copies():
    a, b = _noise(1), _noise(2)
    brighter = Image.eval(a, lambda v: min(255, v + 6))
    assert hamming(dhash(a), dhash(brighter)) <= 3
    assert hamming(dhash(a), dhash(b)) > 10


def test_quality_scores_flag_flat_and_dark_images():
    flat = quality_scores(Image.new("RGB", (64, 64), (128, 128, 128)))
    assert flat["contrast"] == 0 and flat["sharpness"] == 0
    dark = quality_scores(Image.new("RGB", (64, 64), (2, 2, 2)))
    assert dark["exposure"] < 0.05
    textured = quality_scores(_noise(3))
    assert textured["contrast"] > 0.05 and textured["sharpness"] > 1e-4


def _manifest(tmp_path, images):
    rows = []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        image.save(path)
        rows.append({"id": f"img{i}", "file": path.name, "sha256": sha256_bytes(path.read_bytes())})
    return rows


def test_judge_records_a_reason_for_every_rejection(tmp_path):
    good, other = _noise(1), _noise(2)
    images = [
        good,
        good.copy(),
        Image.eval(good, lambda v: min(255, v + 4)),
        other,
        Image.new("RGB", (64, 64), (128, 128, 128)),
    ]
    rows = _manifest(tmp_path, images)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    rows.append({"id": "broken", "file": "broken.png", "sha256": "x"})
    rules = FilterParams(discriminators=[DuplicatesCheck(), QualityCheck()])
    decisions = {d.id: d for d in judge(rows, tmp_path, rules)[0]}
    assert decisions["img0"].kept and decisions["img3"].kept
    assert "exact duplicate of img0" in decisions["img1"].reasons
    assert any("near duplicate of img0" in r for r in decisions["img2"].reasons)
    assert any("contrast" in r for r in decisions["img4"].reasons)
    assert any("unreadable" in r for r in decisions["broken"].reasons)


def test_caption_puts_trigger_first_and_omits_traits_by_default():
    context = {"style": "flat", "setting": "forest", "attire": "", "expression": "smiling"}
    text = caption_text(CHARACTER, context, CaptionParams())
    assert text == "zxq kira, flat, forest, smiling"
    with_traits = caption_text(CHARACTER, context, CaptionParams(include_traits=True))
    assert with_traits.startswith("zxq kira, teal hair, green eyes, flat")
    assert subset_folder("zxq kira!", 3) == "3_zxq_kira"


def test_mean_pairwise_cosine_and_consistency_metrics():
    same = np.tile(np.array([[1.0, 0.0]]), (4, 1))
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    orthogonal = np.eye(3)
    assert mean_pairwise_cosine(orthogonal) == pytest.approx(0.0)
    metrics = consistency_metrics(orthogonal, orthogonal, orthogonal[:1], ["a", "a", "b"])
    assert metrics["prompt_fidelity"] == pytest.approx(1.0)
    assert metrics["nearest_train_similarity"] == pytest.approx(1 / 3)
    assert set(metrics["per_context"]) == {"a", "b"}


def test_convergence_rule():
    assert not decide([{"identity_consistency": 0.5}], 0.01, 5).stop
    converged = decide([{"identity_consistency": 0.5}, {"identity_consistency": 0.505}], 0.01, 5)
    assert converged.stop and "no gain" in converged.reason and converged.best == 0
    moving = decide([{"identity_consistency": 0.5}, {"identity_consistency": 0.6}], 0.01, 2)
    assert moving.stop and "budget" in moving.reason


def test_tree_digest_sees_content_and_names(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    first = tree_digest(tmp_path)
    (tmp_path / "a.txt").write_text("y")
    second = tree_digest(tmp_path)
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert len({first, second, tree_digest(tmp_path)}) == 3


def test_axes_order_matches_contexts():
    assert tuple(CONTEXTS.axis_values()) == AXES


def test_identity_anchor_from_the_most_cohesive_cluster():
    from charloop.stages.filter.discriminators import identity_scores

    rng = np.random.default_rng(0)
    centre = np.array([1.0, 0.0, 0.0, 0.0])
    tight = centre + rng.normal(0, 0.02, (30, 4))
    loose = rng.normal(0, 1.0, (10, 4))
    points = np.concatenate([tight, loose])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    scores, info = identity_scores(points, None, IdentityCheck(cluster_divisor=10))
    assert info["anchor"] == "cohesive cluster" and info["clusters"] == 4
    assert scores[:30].min() > 0.95
    assert scores[30:].mean() < scores[:30].mean() - 0.3


def test_identity_outliers_are_rejected_with_reasons(tmp_path):
    from charloop.stages.filter.discriminators import Decision, apply_threshold

    decisions = [Decision(id=str(i), file="") for i in range(20)]
    scores = np.array([0.9] * 19 + [0.1]) + np.linspace(0, 0.01, 20)
    apply_threshold(decisions, scores, "identity", IdentityCheck(max_outlier_z=2.0))
    assert [d.kept for d in decisions] == [True] * 19 + [False]
    assert "outlier" in decisions[-1].reasons[0]
    floor = [Decision(id="a", file="")]
    apply_threshold(floor, np.array([0.5]), "identity", IdentityCheck(min_similarity=0.6))
    assert floor[0].reasons == ["identity 0.5000 < 0.6"]


def test_references_skip_bad_files_with_reasons(tmp_path):
    from charloop.scenes.references import load_references

    _noise(1).save(tmp_path / "good.png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_bytes(b"not a png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    refs = load_references(tmp_path)
    assert refs.files == ["good.png"]
    assert set(refs.skipped) == {"notes.txt", "fake.png", "truncated.png"}
    assert "not an image file type" in refs.skipped["notes.txt"]


def test_common_word_triggers_are_detected():
    from charloop.models.tiny import build_tokenizer
    from charloop.stages.caption.folder import common_word_tokens

    tokenizer = build_tokenizer()
    assert common_word_tokens(tokenizer, "zxq kira") == []
    assert common_word_tokens(tokenizer, "red fox") == ["red", "fox"]


def test_keep_best_keeps_only_the_top_fraction_by_score():
    import numpy as np

    from charloop.params.filter import IdentityCheck
    from charloop.stages.filter.discriminators import Decision, apply_threshold

    decisions = [Decision(id=str(i), file=f"{i}.png") for i in range(8)]
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4])
    apply_threshold(
        decisions, scores, "identity", IdentityCheck(max_outlier_z=None, keep_best=0.25)
    )
    assert [d.id for d in decisions if d.kept] == ["0", "2"]
    assert "below the best 25%" in decisions[4].reasons[0]


def test_training_draws_rows_by_their_repeats():
    from collections import Counter

    import torch

    from charloop.stages.train.buckets import next_batch as _batches
    from charloop.stages.train.data import EncodedDataset

    data = EncodedDataset(["a", "b", "c"], torch.zeros(3), torch.zeros(3), None, [1, 3, 1])
    assert data.epoch_pool() == [0, 1, 1, 1, 2]
    generator, order = torch.Generator().manual_seed(0), []
    drawn = Counter(i for _ in range(10) for i in _batches(generator, order, 5, data.epoch_pool()))
    assert drawn == {0: 10, 1: 30, 2: 10}  # ten whole epochs
    # Without repeats the order is a plain permutation per epoch, as before repeats existed.
    plain = EncodedDataset(["a", "b", "c"], torch.zeros(3), torch.zeros(3), None)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert _batches(g1, [], 3, plain.epoch_pool()) == torch.randperm(3, generator=g2).tolist()
