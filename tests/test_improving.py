"""Iterations that keep improving: the accumulating dataset, the nearest-reference identity
score, the best-round rule, and the validity report's variety measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charloop.params.caption import AccumulatePolicy, IterationPolicy
from charloop.params.filter import IdentityCheck
from charloop.scenes.render import ImageJob
from charloop.stages.caption.pool import PoolImage, dataset_images, select, sources
from charloop.stages.evaluate.convergence import beats, best_round, decide
from charloop.stages.filter.discriminators import identity_scores


def _image(
    image_id: str, iteration: int, score: float | None, context: str = "forest", by: str = ""
) -> PoolImage:
    review = {"decided_by": by or "filter", "scores": {} if score is None else {"identity": score}}
    row = {
        "id": image_id,
        "file": f"{image_id}.png",
        "iteration": iteration,
        "context": {"setting": context},
        "review": review,
    }
    return PoolImage(row, Path(f"/nowhere/{image_id}.png"))


def test_accumulate_keeps_the_best_per_context_and_drops_old_images_newer_ones_beat():
    pool = [
        _image("old-good", 1, 0.9),
        _image("old-weak", 1, 0.2),
        _image("new-better", 2, 0.5),
        _image("beach", 1, 0.1, context="beach"),
    ]
    chosen = select(pool, AccumulatePolicy(per_context=2))
    assert [i.row["id"] for i in chosen] == ["beach", "old-good", "new-better"]
    assert sources(chosen) == {"1": 2, "2": 1}


def test_a_persons_keep_outranks_any_score_and_ties_go_to_the_newer_image():
    pool = [
        _image("high", 1, 0.9),
        _image("kept-by-person", 1, 0.1, by="human:ana"),
        _image("tie-old", 1, 0.5),
        _image("tie-new", 2, 0.5),
    ]
    assert [i.row["id"] for i in select(pool, AccumulatePolicy(per_context=2))] == [
        "high",
        "kept-by-person",
    ]
    ties = select([pool[2], pool[3]], AccumulatePolicy(per_context=1))
    assert [i.row["id"] for i in ties] == ["tie-new"]


def test_max_images_caps_the_total_best_first():
    pool = [_image(f"c{k}", 1, k / 10, context=f"ctx{k}") for k in range(5)]
    chosen = select(pool, AccumulatePolicy(per_context=3, max_images=2))
    assert sorted(i.row["id"] for i in chosen) == ["c3", "c4"]


def test_the_iteration_policy_ignores_earlier_datasets(tmp_path):
    kept = [{"id": "a", "file": "a.png", "iteration": 2}]
    images = dataset_images(IterationPolicy(), kept, tmp_path, tmp_path / "never-read")
    assert [i.source for i in images] == [tmp_path / "a.png"]


def test_nearest_references_score_rewards_matching_whole_pictures_not_their_average():
    refs = np.array([[1.0, 0.0], [0.0, 1.0]])
    between = np.array([[np.sqrt(0.5), np.sqrt(0.5)]])  # the average of both, like neither
    like_one = np.array([[1.0, 0.0]])
    images = np.concatenate([between, like_one])
    centroid, _ = identity_scores(images, refs, IdentityCheck(score="centroid"))
    nearest, info = identity_scores(images, refs, IdentityCheck(nearest=1))
    assert centroid[0] > centroid[1]  # the blur of the references wins on the centroid
    assert nearest[1] > nearest[0] and info["score"] == "nearest_references"
    all_refs, _ = identity_scores(images, refs, IdentityCheck(nearest=5))  # k > references
    assert all_refs == pytest.approx(images @ refs.T.mean(1))


def _round(identity: float, noise: float = 0.01, variety: float = 0.3) -> dict[str, float]:
    return {
        "identity_consistency": identity,
        "identity_noise": noise,
        "layout_diversity": variety,
        "layout_diversity_noise": 0.02,
    }


def test_a_round_must_beat_the_best_by_more_than_the_seed_noise():
    assert beats(_round(0.6), _round(0.7), 0.0) is None
    assert "not above the noise" in str(beats(_round(0.6, 0.05), _round(0.63), 0.0))
    assert "not above the noise" in str(beats(_round(0.6), _round(0.605), 0.01))  # epsilon
    assert str(beats(_round(0.6), _round(0.7, variety=0.1), 0.0)).startswith("collapse")
    history = [_round(0.5), _round(0.7), _round(0.65), _round(0.72, 0.05)]
    assert best_round(history, 0.0) == 1  # +0.02 over the best is inside 0.05 of noise


def test_the_loop_stops_after_patience_rounds_without_a_gain_and_names_the_best():
    history = [_round(0.5), _round(0.7), _round(0.65)]
    stopped = decide(history, 0.0, 10)
    assert stopped.stop and stopped.best == 1 and not stopped.improved(len(history))
    assert "no gain over iteration 2" in stopped.reason
    patient = decide(history, 0.0, 10, patience=2)
    assert not patient.stop and patient.best == 1 and "next from the best" in patient.reason
    improving = decide(history[:2], 0.0, 10)
    assert not improving.stop and improving.improved(2)
    assert decide(history[:2], 0.0, 2).reason.startswith("budget")
    collapsed = decide([_round(0.6), _round(0.7, variety=0.1)], 0.0, 5)
    assert collapsed.stop and collapsed.collapse and collapsed.best == 0


def test_variety_reads_the_spread_of_free_pose_and_expression():
    from charloop_world.variety import context_fidelity, free_jobs, normalised_entropy, variety

    assert normalised_entropy(["a", "a", "a"], 3) == 0.0
    assert normalised_entropy(["a", "b", "c"], 3) == pytest.approx(1.0)
    context = {"setting": "in a library", "pose": "sitting", "expression": "smiling"}
    job = ImageJob("j", "zxq, in a library, sitting, smiling", "", 1, context)
    (free,) = free_jobs([job])
    assert free.prompt == "zxq, in a library" and free.context == {"setting": "in a library"}
    reads = [
        {"pose": "standing", "expression": e, "setting": "library"} for e in ("smiling", "serious")
    ]
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    measured = variety(
        reads,
        images,
        [free, free],
        {"pose": ["standing", "sitting", "arms up"], "expression": ["smiling", "serious"]},
    )
    assert measured["pose_variety"] == 0.0 and measured["expression_variety"] == pytest.approx(100)
    # library and smiling read back, standing instead of sitting: 2 of 3
    assert context_fidelity(reads[:1], [job]) == pytest.approx(200 / 3)


def test_earlier_images_compete_only_above_the_bar_of_the_new_ones():
    from charloop.stages.caption.pool import admitted

    fresh = [_image("new-a", 2, 0.6), _image("new-b", 2, 0.8)]
    earlier = [_image("old-weak", 1, 0.5), _image("old-good", 1, 0.7)]
    earlier.append(_image("old-person", 1, 0.1, by="human:ana"))
    assert [i.row["id"] for i in admitted(earlier, fresh)] == ["old-good", "old-person"]
    unscored = [_image("new-c", 2, None)]
    assert admitted(earlier, unscored) == earlier


def test_an_image_repeating_a_better_ones_layout_is_passed_over():
    pool = [_image("best", 1, 0.9), _image("same-pose", 1, 0.8), _image("other-pose", 1, 0.7)]
    layouts = {"best": np.array([1.0, 0.0]), "same-pose": np.array([0.99, 0.141])}
    layouts["other-pose"] = np.array([0.0, 1.0])
    policy = AccumulatePolicy(per_context=2, max_layout_similarity=0.9)
    assert [i.row["id"] for i in select(pool, policy, layouts)] == ["best", "other-pose"]
    unlimited = AccumulatePolicy(per_context=2, max_layout_similarity=None)
    assert [i.row["id"] for i in select(pool, unlimited, layouts)] == ["best", "same-pose"]


def test_rounds_are_compared_on_reference_match_when_there_are_references():
    from charloop.stages.evaluate.convergence import round_metric
    from charloop.stages.evaluate.metrics import consistency_metrics

    refs = np.array([[1.0, 0.0], [0.0, 1.0]])
    images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    measured = consistency_metrics(images, None, None, ["a", "b", "a", "b"], refs, [1, 1, 2, 2], 1)
    assert measured["reference_match"] == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    assert measured["reference_match_noise"] == pytest.approx(0.05)  # seeds 1.0 and 0.9
    assert round_metric("auto", measured) == "reference_match"
    assert round_metric("auto", {"identity_consistency": 0.5}) == "identity_consistency"
    # A round that matches the references better wins even when its renders agree less.
    rounds = [
        {"identity_consistency": 0.8, "reference_match": 0.6, "reference_match_noise": 0.01},
        {"identity_consistency": 0.7, "reference_match": 0.7, "reference_match_noise": 0.01},
    ]
    verdict = decide(rounds, 0.0, 5)
    assert verdict.improved(2) and not verdict.stop
    assert decide(rounds, 0.0, 5, metric="identity_consistency").best == 0


def test_reference_match_needs_references(tmp_path):
    from charloop.params.project import ParamsError, load_project
    from tests.conftest import tiny_params, write_params

    data = tiny_params(loop={"max_iterations": 2, "metric": "reference_match"})
    with pytest.raises(ParamsError, match="set the references folder"):
        load_project(write_params(tmp_path, data))


def test_rounds_can_be_compared_on_the_trait_pass_rate_beyond_its_seed_noise(tmp_path):
    from charloop.params.project import ParamsError, load_project
    from charloop.stages.evaluate.metrics import trait_noise
    from tests.conftest import tiny_params, write_params

    jobs = [ImageJob(f"j{i}", "p", "", seed, {}) for i, seed in enumerate([1, 1, 2, 2, 3, 3])]
    shares = {0: 1.0, 1: 0.5, 2: 0.5, 3: 0.5, 4: 1.0, 5: 1.0}  # seeds 0.75, 0.5, 1.0
    assert trait_noise(shares, jobs) == pytest.approx(0.25 / np.sqrt(3))
    assert trait_noise({0: 1.0, 1: 0.5}, jobs) is None  # one seed: no spread to measure
    assert trait_noise({}, jobs) is None
    # reference match fell, the traits rose beyond their noise: trait_pass calls it a gain
    rounds = [
        {"reference_match": 0.861, "reference_match_noise": 0.006,
         "trait_pass": 0.726, "trait_pass_noise": 0.01},
        {"reference_match": 0.833, "reference_match_noise": 0.009,
         "trait_pass": 0.756, "trait_pass_noise": 0.01},
    ]  # fmt: skip
    assert decide(rounds, 0.0, 3).best == 0
    assert decide(rounds, 0.0, 3, metric="trait_pass").best == 1
    rounds[1]["trait_pass_noise"] = 0.04  # inside the noise: no gain
    assert decide(rounds, 0.0, 3, metric="trait_pass").best == 0
    data = tiny_params(loop={"max_iterations": 2, "metric": "trait_pass"})
    data.pop("traits", None)
    with pytest.raises(ParamsError, match="add a 'traits:' section"):
        load_project(write_params(tmp_path, data))


def test_leave_free_frees_the_same_share_of_every_value_and_kind():
    from charloop.params.caption import LeaveFree
    from charloop.stages.caption.free import plan_freed, tag_values, without_values

    items = [(f"g{i}", "generated", {"expression": "smiling", "pose": "up"}) for i in range(10)]
    items += [(f"s{i}", "generated", {"expression": "serious"}) for i in range(20)]
    items += [
        (f"r{i}", "reference", {"expression": ("smiling", "serious")[i % 2]}) for i in range(4)
    ]
    rules = LeaveFree(axes=["expression", "pose"], share=0.3)
    freed = plan_freed(items, rules)
    assert freed == plan_freed(list(reversed(items)), rules)  # order does not matter
    untagged = [i for i, f in freed.items() if "expression" in f]
    assert sum(i.startswith("g") for i in untagged) == 3  # 30 % of the smiling ones
    assert sum(i.startswith("s") for i in untagged) == 6  # and of the serious ones
    assert sorted(freed[f"r{i}"] for i in range(4)).count(["expression"]) == 2  # 1 per value
    assert sum("pose" in f for f in freed.values()) == 3 and not freed["s0"].count("pose")
    assert not any(plan_freed(items, LeaveFree(axes=["pose"], share=0.0)).values())
    assert all(plan_freed(items, LeaveFree(axes=["expression"], share=1.0)).values())
    values = {"expression": ["smiling", "serious"], "pose": ["standing"]}
    tags = ["in a city", "smiling", "standing"]
    assert tag_values(tags, values) == {"expression": "smiling", "pose": "standing"}
    assert without_values(tags, ["expression"], values) == ["in a city", "standing"]


def test_leave_free_captions_omit_the_freed_tags_and_record_them(tmp_path):
    from charloop.params.project import load_project
    from charloop.stages.caption.heldout import planned_captions
    from charloop.stages.caption.stage import caption_text, reference_caption
    from tests.conftest import tiny_params, write_params

    params = tiny_params(caption={"leave_free": {"axes": ["expression"], "share": 1.0}})
    project = load_project(write_params(tmp_path, params))
    member = project.params.members[0]
    context = {"style": "flat colors", "setting": "in a forest", "expression": "smiling"}
    text = caption_text(member, context, project.params.caption, freed=["expression"])
    assert text == f"{member.trigger}, flat colors, in a forest"
    smiling = next(v for v in project.params.contexts.expressions if v)
    sidecar = ["in a city", smiling]
    assert reference_caption(member, sidecar, project.params, ["expression"]).endswith("in a city")
    # The held-out check still reads every tag a caption could hold.
    assert any(text == smiling for _, text in planned_captions(project))


def test_variety_kept_is_a_share_of_the_baseline_and_flags_a_loss_beyond_the_noise():
    from charloop_world.variety import variety_kept, variety_lines, variety_lost

    baseline = {"layout_variety": 20.0, "pose_variety": 0.0, "expression_variety": 50.0}
    row = {"layout_variety": 25.0, "pose_variety": 0.0, "expression_variety": 40.0}
    kept = variety_kept(row, baseline)
    assert kept == {"layout_variety": 125.0, "expression_variety": 80.0}  # no pose to lose
    assert variety_lost(row, baseline) == ["expression_variety"]  # no noise known
    noisy = row | {"expression_variety_noise": 12.0}
    assert variety_lost(noisy, baseline) == []  # 10 short, within the noise of 12
    flagged = {"variety_kept": kept, "variety_lost": ["expression_variety"]}
    lines = variety_lines({"base": baseline, "round 1": row | flagged}, "base")
    assert lines == [
        "- round 1: layout 125 %, expression 80 % **lost beyond the noise: expression**"
    ]


def test_a_fixed_character_has_less_layout_variety_than_random_ones():
    """Why LoRA variety is held to the base model told who to draw: part of the plain base
    model's variety is its changing character."""
    from charloop_world.variety import world_layout_variety

    context = {"setting": "in a library", "style": "sketch style"}
    jobs = [ImageJob(f"j{s}", "x", "", s, context) for s in range(8)]
    jobs += [ImageJob(f"k{s}", "x", "", s, {**context, "setting": "in a bar"}) for s in range(8)]
    truth = {
        "hair_colour": "teal",
        "hair_shape": "ponytail",
        "eye_colour": "green",
        "skin_tone": "light",
        "outfit_colour": "pink",
        "outfit_kind": "jacket",
        "accessory": "hat",
        "body_shape": "slim",
    }
    fixed, random = world_layout_variety(jobs, truth), world_layout_variety(jobs, None)
    assert 5.0 < fixed < random - 5.0
    assert world_layout_variety(jobs, truth) == fixed  # deterministic by seed
