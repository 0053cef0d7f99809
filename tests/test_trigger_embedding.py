"""Trigger embeddings (pivotal tuning): trained rows only, files A1111 reads, loaded with
the LoRA bound to the trigger phrase, resumable, refused where they cannot work."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from charloop.families import get_family
from charloop.models.pipeline import load_pipeline, lora_applied
from charloop.models.trigger_embedding import TRIGGER_EMBEDDING, TRIGGER_KEY
from charloop.params.project import load_project
from charloop.params.schema import Params
from charloop.scenes.render import ImageJob, render
from charloop.stages.train.loop import TrainingInterrupted
from charloop.stages.train.stage import run_train
from charloop.stages.train.trigger_embedding import (
    TriggerVectors,
    pull_toward_start,
    save_trigger_embedding,
    starting_text,
    token_names,
    trigger_tokens,
)
from tests.conftest import base_model, captioned_dataset, tiny_params, write_params

TRAIN = {
    "max_train_steps": 4,
    "batch_size": 2,
    "validation": {"images": 1, "every": 2},
    "trigger_embedding": {"enabled": True, "learning_rate": 0.05},
}
KEYS = {"sd15": ["emb_params"], "sdxl": ["clip_g", "clip_l"]}


def _project(folder: Path, family: str, **train: object):
    data = tiny_params(train={**TRAIN, **train}, base_model=base_model(family))
    return load_project(write_params(folder, data))


def _pipe(project):
    return load_pipeline(
        project.model_ref(project.params.base_model.path), project.params.base_model
    )


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, family):
    return captioned_dataset(tmp_path_factory.mktemp(f"trigger-{family}"), family)


def test_only_the_trigger_rows_train():
    table = torch.nn.Embedding(10, 4)
    table.requires_grad_(False)
    start = torch.randn(2, 4)
    vectors = TriggerVectors(table, [10, 11], start)
    out = vectors(torch.tensor([[1, 10, 11]]))
    assert torch.equal(out[0, 0], table.weight[1])
    assert torch.allclose(out[0, 1:], start)
    out.sum().backward()
    assert table.weight.grad is None
    assert vectors.vectors.grad is not None and bool(vectors.vectors.grad.abs().sum() > 0)
    assert token_names("zxq kira", 3) == ["zxq kira", "zxq kira_1", "zxq kira_2"]


def test_the_vectors_start_as_the_traits_in_words(tmp_path):
    project = _project(tmp_path, "sd15")
    assert starting_text(project) == "teal hair, green eyes"  # declared (no traits section)
    pipe = _pipe(project)
    before = len(pipe.tokenizer)
    tokens = trigger_tokens(project, pipe, get_family("sd15"))
    traits = ("teal hair", "green eyes")
    words = [pipe.tokenizer(t, add_special_tokens=False).input_ids for t in traits]
    assert tokens.init_ids["tokenizer"] == words  # one vector per trait
    assert tokens.tokens == ["zxq kira", "zxq kira_1"]
    assert len(pipe.tokenizer) == before  # the shared pipeline's tokenizer is untouched
    caption = tokens.expand("zxq kira, a character, in a forest")
    ids = tokens.tokenizers["tokenizer"](caption, add_special_tokens=False).input_ids
    assert ids[:2] == tokens.new_ids("tokenizer")
    per_token = {"enabled": True, "vectors": "per_token", "max_vectors": 3}
    project = _project(tmp_path / "per-token", "sd15", trigger_embedding=per_token)
    assert trigger_tokens(project, pipe, get_family("sd15")).init_ids["tokenizer"] == [
        [i] for i in (words[0] + words[1])[:3]
    ]
    free = {"enabled": True, "free_vectors": 2}
    project = _project(tmp_path / "free", "sd15", trigger_embedding=free)
    freed = trigger_tokens(project, pipe, get_family("sd15"))
    own = pipe.tokenizer("zxq kira", add_special_tokens=False).input_ids
    assert freed.init_ids["tokenizer"] == [*words, own, own]  # the words, then the trigger
    assert len(freed.tokens) == 4 and freed.free == 2


def test_pull_moves_the_vectors_back_toward_their_words():
    encoder = SimpleNamespace()
    table = torch.nn.Embedding(10, 4)
    start = torch.zeros(2, 4)
    vectors = TriggerVectors(table, [10, 11], start)
    encoder.get_input_embeddings = lambda: vectors
    with torch.no_grad():
        vectors.vectors.fill_(1.0)
    pull_toward_start([encoder], 0.0)
    assert torch.equal(vectors.vectors, torch.ones(2, 4))
    pull_toward_start([encoder], 0.25)
    assert torch.allclose(vectors.vectors, torch.full((2, 4), 0.75))
    vectors.free = 1  # a free vector is never pulled
    pull_toward_start([encoder], 0.5)
    assert torch.allclose(vectors.vectors[0], torch.full((4,), 0.375))
    assert torch.allclose(vectors.vectors[1], torch.full((4,), 0.75))
    with pytest.raises(ValidationError, match="pull"):
        Params.model_validate(tiny_params(train={"trigger_embedding": {"pull": 1.0}}))


def test_a_pulled_embedding_stays_nearer_its_words(dataset, family, tmp_path):
    if family != "sd15":
        pytest.skip("the pull is the same rule for every family")
    ends = {}
    for pull in (0.0, 0.5):
        project = _project(tmp_path / f"p{pull}", "sd15", trigger_embedding={
            **TRAIN["trigger_embedding"], "pull": pull})  # fmt: skip
        run_train(project, dataset, tmp_path / f"out{pull}", {"iteration": "1"})
        with safe_open(str(tmp_path / f"out{pull}" / TRIGGER_EMBEDDING), "pt") as handle:
            ends[pull] = handle.get_tensor("emb_params")
    pipe = _pipe(project)
    start = trigger_tokens(project, pipe, get_family("sd15"))
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
    words = torch.stack(
        [table[g].mean(0) for g in start.init_ids[get_family("sd15").tokenizers[0]]]
    )
    free, pulled = (float((ends[p] - words).norm()) for p in (0.0, 0.5))
    assert 0 < pulled < 0.75 * free, (pulled, free)


def test_the_embedding_trains_saves_and_loads_bound_to_the_trigger(dataset, family, tmp_path):
    project = _project(tmp_path, family)
    run_train(project, dataset, tmp_path / "out", {"iteration": "1"})
    path = tmp_path / "out" / TRIGGER_EMBEDDING
    with safe_open(str(path), "pt") as handle:
        assert sorted(handle.keys()) == KEYS[family]
        assert handle.metadata()[TRIGGER_KEY] == "zxq kira"
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    pipe = _pipe(project)
    start = trigger_tokens(project, pipe, get_family(family))
    first = get_family(family).tokenizers[0]
    count = len(start.tokens)
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
    initial = torch.stack([table[group].mean(0) for group in start.init_ids[first]])
    vectors = tensors[KEYS[family][0] if family == "sd15" else "clip_l"]
    assert vectors.shape == (count, table.shape[1])
    assert not torch.allclose(vectors, initial, atol=1e-4)  # trained away from the words
    without = tmp_path / "lora-only"
    shutil.copytree(tmp_path / "out", without)
    (without / TRIGGER_EMBEDDING).unlink()
    gen = project.params.generate
    job = [ImageJob("a", "zxq kira, a character, in a forest", "", 3, {})]
    before = len(pipe.tokenizer)
    with lora_applied(pipe, tmp_path / "out"):
        assert len(pipe.tokenizer) == before + count
        embedded = render(pipe, job, gen)[0]
    assert len(pipe.tokenizer) == before  # unloaded with the LoRA
    with lora_applied(pipe, without):
        plain = render(pipe, job, gen)[0]
    assert embedded.tobytes() != plain.tobytes()


def test_check_adapter_names_the_embedding_and_refuses_it_as_a_lora(tmp_path, capsys):
    """The adapter folder's LoRA files are checked; the embedding is named, not misread."""
    from charloop_cli.main import main

    folder = tmp_path / "adapter"
    folder.mkdir()
    save_trigger_embedding(folder, "sd15", [torch.zeros(2, 8)], "zxq kira", "teal hair")
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(folder / TRIGGER_EMBEDDING)])
    assert stopped.value.code == 2
    assert "trigger embedding (textual inversion)" in capsys.readouterr().err


def test_training_with_the_embedding_resumes_to_the_same_files(dataset, family, tmp_path):
    if family != "sd15":
        pytest.skip("one family suffices: the checkpoint code is family-independent")
    straight = run_train(_project(tmp_path / "a", family), dataset, tmp_path / "a/out", {})
    project = _project(tmp_path / "b", family, checkpoint_every=2)
    with pytest.raises(TrainingInterrupted):
        run_train(project, dataset, tmp_path / "b/out", {}, stop_after=3)
    resumed = run_train(project, dataset, tmp_path / "b/out", {})
    assert resumed.resumed_from == 2
    assert resumed.weights_sha256 == straight.weights_sha256
    a, b = (tmp_path / d / "out" / TRIGGER_EMBEDDING for d in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"base_model": {"path": "x", "family": "flux"}}, "CLIP text encoders only"),
        ({"cast": "x"}, "a cast has several"),
    ],
)
def test_the_schema_refuses_what_cannot_carry_one_trigger(change, needle):
    data = tiny_params(train={"trigger_embedding": {"enabled": True}})
    if "cast" in change:
        members = [{"name": n, "trigger": f"zxq {n}"} for n in ("ann", "bob")]
        data.pop("character")
        data["cast"] = {"name": "duo", "members": members}
    else:
        data |= change
    with pytest.raises(ValueError, match=needle):
        Params.model_validate(data)


def test_a_flux_base_found_by_auto_is_refused_by_name(tmp_path):
    project = _project(tmp_path, "sd15")
    with pytest.raises(Exception, match=r"SD1\.5 and SDXL bases; this base is flux"):
        trigger_tokens(project, None, get_family("flux"))
