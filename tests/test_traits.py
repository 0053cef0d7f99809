"""Traits as checks: the world tagger, discovery on references, refusals, filter verdicts,
aimed generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from charloop.core.errors import BadInput
from charloop.params.project import load_project
from charloop.params.schema import Params
from charloop.scenes.aim import plan_aim
from charloop.scenes.traits import TraitError, check_traits, pass_rates, resolve_traits
from charloop.stages.filter.discriminators import Decision, record_traits
from charloop.stages.filter.discriminators import check_traits as reject_missing
from charloop.stages.generate.stage import plan_jobs
from tests.conftest import MODELS, REPO, tiny_params, write_params

TAGGER = MODELS / "world-tagger"
needs_tagger = pytest.mark.skipif(
    not (TAGGER / "model.safetensors").exists(), reason="models/world-tagger not built"
)
KIRA_TRUTH = json.loads((REPO / "references" / "kira" / "identity.json").read_text())


def _world_project(tmp_path: Path, **changes: object):
    """params.yaml (kira on the world) copied into ``tmp_path`` with absolute paths."""
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["character"]["references"] = str(REPO / "references" / "kira")
    data["base_model"]["path"] = str(MODELS / "world-sd15")
    data["traits"]["scorer"]["path"] = str(TAGGER)
    for key in ("filter", "evaluate"):
        data[key]["embedder"]["path"] = str(MODELS / "world-embedder")
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        data[section][field] = value
    return load_project(write_params(tmp_path, data))


@needs_tagger
def test_tagger_parses_world_phrases_and_compounds() -> None:
    from charloop.models.world_tagger import load_world_tagger

    tagger = load_world_tagger(TAGGER)
    assert tagger.parse("teal hair") == [("hair_colour", "teal")]
    assert tagger.parse("Pink  Jacket") == [("outfit_colour", "pink"), ("outfit_kind", "jacket")]
    assert tagger.parse("ponytail") == [("hair_shape", "ponytail")]
    assert tagger.parse("purple unicorn") is None
    assert "wearing a hat" in tagger.vocabulary and "slim body" in tagger.vocabulary
    assert tagger.vocabulary[0] == "red hair"  # caption order: hair colour first
    assert tagger.merge(["green eyes", "pink clothes", "wearing a hat", "wearing a jacket"]) == [
        "green eyes", "pink jacket", "wearing a hat"]  # fmt: skip


@needs_tagger
def test_tagger_reads_fresh_renders() -> None:
    from charloop.models.world_tagger import load_world_tagger
    from charloop_world.attributes import CHARACTER_VALUES
    from charloop_world.dataset import make_dataset
    from charloop_world.tagger import accuracy

    data = make_dataset(80, 1, seed=4242)  # characters neither it nor the oracle saw
    tagger = load_world_tagger(TAGGER)
    from PIL import Image

    scores = accuracy(tagger, [Image.fromarray(a) for a in data.images], data.records)
    assert set(scores) == set(CHARACTER_VALUES)
    for name in ("hair_colour", "outfit_colour", "outfit_kind"):
        assert scores[name] >= 0.9, (name, scores)
    assert np.mean(list(scores.values())) >= 0.75, scores


@needs_tagger
def test_references_discover_what_kira_is(tmp_path: Path) -> None:
    from charloop_world.attributes import character_from_dict
    from charloop_world.captions import character_phrases

    project = _world_project(tmp_path)
    traits = check_traits(project)["kira"]
    assert traits.declared == ["teal hair", "ponytail"]
    true_tags = character_phrases(character_from_dict(KIRA_TRUTH))  # "pink jacket", ...
    assert traits.discovered, "nothing discovered on eight references of one character"
    assert set(traits.discovered) <= set(true_tags), traits.discovered  # nothing kira is not
    assert traits.all == true_tags, traits.discovered  # all of her, in caption order
    assert all(traits.reference_scores[t] > 0.5 for t in traits.discovered)


@needs_tagger
@pytest.mark.parametrize(
    ("trait", "needle"),
    [("purple unicorn", "cannot read 'purple unicorn'"), ("red hair", "none of the 8 references")],
)
def test_bad_traits_are_refused_naming_trait_and_file(
    tmp_path: Path, trait: str, needle: str
) -> None:
    from charloop_cli.main import app

    project = _world_project(tmp_path)
    data = yaml.safe_load(project.params_file.read_text())
    data["character"]["traits"] = ["teal hair", trait]
    path = write_params(tmp_path, data)
    with pytest.raises(TraitError) as caught:
        check_traits(load_project(path))
    assert needle in str(caught.value) and str(path) in str(caught.value)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and trait in result.output


@needs_tagger
def test_a_scorer_that_does_not_load_is_refused(tmp_path: Path) -> None:
    project = _world_project(tmp_path)
    data = yaml.safe_load(project.params_file.read_text())
    (tmp_path / "empty").mkdir()
    data["traits"]["scorer"]["path"] = str(tmp_path / "empty")
    with pytest.raises(BadInput, match=r"traits\.scorer\.path"):
        resolve_traits(load_project(write_params(tmp_path, data)))


def test_traits_check_needs_a_traits_section() -> None:
    data = tiny_params()
    data["filter"]["discriminators"].append({"type": "traits"})
    with pytest.raises(ValueError, match="traits discriminator needs a trait scorer"):
        Params.model_validate(data)
    data["traits"] = {"scorer": {"type": "clip", "template": "no slot"}}
    with pytest.raises(ValueError, match=r"must contain '\{trait\}'"):
        Params.model_validate(data)


def test_missing_traits_are_named_in_the_reasons() -> None:
    decisions = [Decision(id=f"a{i}", file=f"a{i}.png") for i in range(3)]
    traits = ["teal hair", "wearing a hat"]
    scores = np.array([[0.9, 0.8], [0.9, 0.2], [0.1, 0.3]])
    record_traits(decisions, scores, traits, 0.5)
    reject_missing(decisions, _check(max_missed=0), 0.5)
    assert [d.kept for d in decisions] == [True, False, False]
    assert decisions[1].reasons == ["missed trait 'wearing a hat' (0.20 < 0.5)"]
    assert len(decisions[2].reasons) == 2
    assert decisions[1].as_row()["traits"] == {"teal hair": True, "wearing a hat": False}
    lenient = [Decision(id="b", file="b.png")]
    record_traits(lenient, scores[1:2], traits, 0.5)
    reject_missing(lenient, _check(max_missed=1), 0.5)
    assert lenient[0].kept
    rates = pass_rates(scores, traits, 0.5)
    assert rates["traits"] == pytest.approx({"teal hair": 2 / 3, "wearing a hat": 1 / 3})
    assert rates["all"] == pytest.approx(1 / 3)


def test_keep_best_keeps_the_surest_passing_images() -> None:
    from charloop.params.filter import TraitsCheck

    decisions = [Decision(id=f"a{i}", file=f"a{i}.png") for i in range(5)]
    traits = ["teal hair", "wearing a hat"]
    # a0 shows both clearly; a1 barely shows the hat; a2 fails the hat; a3 is sure of both
    # but was rejected earlier; a4 is nearly as sure as a0.
    scores = np.array([[0.99, 0.98], [0.99, 0.55], [0.9, 0.2], [0.99, 0.99], [0.97, 0.97]])
    record_traits(decisions, scores, traits, 0.5)
    decisions[3].reasons.append("near duplicate of a0")
    reject_missing(decisions, TraitsCheck(keep_best=0.5), 0.5)
    assert [d.kept for d in decisions] == [True, False, False, False, True]
    assert decisions[1].reasons[0].startswith("trait certainty -0.608 is below the best 50%")
    assert decisions[0].scores["trait certainty"] == pytest.approx(np.log(0.99 * 0.98))
    assert "trait certainty" not in decisions[2].scores  # failed a trait: not ranked
    with pytest.raises(ValueError, match="keep_best"):
        TraitsCheck(keep_best=0)
    # A cast: each character's images are ranked among their own (a sum over three traits
    # is not comparable with a sum over two).
    cast = [Decision(id=f"c{i}", file=f"c{i}.png") for i in range(4)]
    record_traits(cast[:2], np.array([[0.9, 0.9], [0.6, 0.6]]), traits, 0.5)
    record_traits(cast[2:], np.array([[0.8, 0.8, 0.8], [0.99, 0.99, 0.99]]), ["a", "b", "c"], 0.5)
    reject_missing(cast, TraitsCheck(keep_best=0.5), 0.5)
    assert [d.kept for d in cast] == [True, False, False, True]


def _check(max_missed: int):
    from charloop.params.filter import TraitsCheck

    return TraitsCheck(max_missed=max_missed)


@needs_tagger
def test_aim_names_failing_traits_in_a_share_of_each_prompt(tmp_path: Path) -> None:
    project = _world_project(tmp_path)
    discovered = resolve_traits(project)["kira"].discovered
    first = plan_aim(project, None)
    assert first is not None and first.traits["kira"] == discovered
    per_prompt = project.params.generate.images_per_prompt
    plain = plan_jobs(project, 1)
    jobs = plan_jobs(project, 1, first)
    assert [j.id for j in jobs] == [j.id for j in plain]  # same ids and seeds
    assert [j.seed for j in jobs] == [j.seed for j in plain]
    aimed = [j for j in jobs if j.aim]
    assert len(aimed) == len(jobs) // per_prompt * first.count(per_prompt) == len(jobs) * 3 // 4
    assert all(t in aimed[0].prompt for t in discovered)
    assert "zxq kira" not in aimed[0].prompt  # described: no trigger, no LoRA
    assert aimed[0].aim is not None and aimed[0].aim["lora"] is False
    assert not any(t in plain[0].prompt for t in discovered)
    # After an evaluation: only what failed on at least min_failure of its images.
    folder = tmp_path / "runs" / "iter-001"
    (folder / "05_adapter").mkdir(parents=True)
    (folder / "06_evaluation").mkdir()
    rates = {t: 1.0 for t in ["teal hair", "ponytail", *discovered]}
    rates[discovered[0]] = 0.5  # failed on half the images
    rates[discovered[1]] = 0.95  # failed on 5 %: below min_failure (10 %)
    metrics = {"traits": {"characters": {"kira": {"lora": {"traits": rates}}}}}
    (folder / "06_evaluation" / "metrics.json").write_text(json.dumps(metrics))
    aim = plan_aim(project, str(folder / "05_adapter"))
    assert aim is not None and aim.traits["kira"] == [discovered[0]]
    assert aim.described["kira"] == ["teal hair", "ponytail", *discovered]
    assert aim.record("kira")["failure_rates"] == {discovered[0]: 0.5}
    assert "iter-001" in aim.source
    shutil.rmtree(folder)


def test_clip_trait_scorer_on_the_tiny_clip() -> None:
    from charloop.models.trait_scorer import load_trait_scorer
    from charloop.params.traits import ClipTraitScorer

    scorer = load_trait_scorer(ClipTraitScorer(), str(MODELS / "tiny-clip"))
    assert scorer.parse("   ") is None and scorer.parse("teal hair") is not None
    assert scorer.parse("word " * 200) is None  # longer than the text tower reads
    from PIL import Image

    images = [Image.new("RGB", (32, 32), c) for c in ("red", "teal")]
    scores = scorer.score(images, ["red hair", "teal hair", "a hat"])
    assert scores.shape == (2, 3) and np.all((scores > 0) & (scores < 1))
    assert not np.allclose(scores[0], scores[1])  # the image changes the score


def test_desk_card_shows_each_trait_verdict() -> None:
    from charloop.stages.review.desk import Card, IterationView
    from charloop_cli.desk.pages import card_html, character_panel

    card = Card("a1", "a1.png", "reject", ["missed trait 'wearing a hat' (0.20 < 0.5)"], {},
                "p", {}, None, {"teal hair": True, "wearing a hat": False})  # fmt: skip
    html = card_html(card, 1, None)
    assert "<li class='shown'>&#10003; teal hair</li>" in html
    assert "<li class='missed'>&#10007; wearing a hat</li>" in html
    view = IterationView(1, [card], None, traits=["teal hair"], discovered=["wearing a hat"],
                         kept_traits={"wearing a hat": 0.9})  # fmt: skip
    panel = character_panel(view, None)
    assert "<li class='discovered'>wearing a hat <span class='muted'>kept set 90%</span>" in panel


def test_a_starved_filter_names_its_commonest_reasons(tmp_path):
    """NotEnoughImages says which rule rejected most (numbers aside) and, for traits, how
    to leave a trait the base model cannot draw to the references."""
    from charloop.core import atomic
    from charloop.stages.filter.stage import rejection_summary

    report = tmp_path / "report.jsonl"
    rows = [
        {"id": "a", "reasons": ["missed trait 'amber eyes' (0.20 < 0.5)", "near duplicate of b"]},
        {"id": "b", "reasons": ["missed trait 'amber eyes' (0.31 < 0.5)"]},
        {"id": "c", "reasons": ["missed trait 'wearing a star badge' (0.10 < 0.5)"]},
        {"id": "d", "reasons": []},
    ]
    atomic.write_jsonl(report, rows)
    summary = rejection_summary(report, most=2)
    assert summary.startswith("most rejected for: missed trait 'amber eyes' (2), ")
    assert "max_missed" in summary and "traits.ignore" in summary
    other = [{"id": i, "reasons": [f"contrast 0.{i} < 0.99"]} for i in ("1", "2")]
    atomic.write_jsonl(report, other)
    assert rejection_summary(report).startswith("most rejected for: contrast # < # (2); loosen")
    atomic.write_jsonl(report, rows[3:])
    assert rejection_summary(report) == ""
