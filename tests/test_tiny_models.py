"""The embedded models: real classes, loadable from disk, rebuilt deterministically."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from charloop.models.tiny import PROMPT_WORDS, build_tiny_clip, build_tokenizer
from tests.conftest import MODELS


def test_prompt_words_are_single_tokens_and_unknown_words_still_encode():
    tokenizer = build_tokenizer()
    for word in ("forest", "watercolor", "smiling", "teal", "ponytail"):
        assert word in PROMPT_WORDS
        assert tokenizer.tokenize(word) == [f"{word}</w>"]
    ids = tokenizer("zxq kira").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) > 4  # unknown words fall back to characters, never to <unk>


def test_committed_pipeline_loads_through_from_pretrained():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MODELS / "tiny-sd15", safety_checker=None)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert pipe.vae_scale_factor == 8
    assert pipe.tokenizer("a girl in a forest").input_ids[1:-1] == [
        pipe.tokenizer.convert_tokens_to_ids(f"{w}</w>") for w in ("a", "girl", "in", "a", "forest")
    ]


def test_build_is_deterministic(tmp_path):
    build_tiny_clip(tmp_path / "a", seed=0)
    build_tiny_clip(tmp_path / "b", seed=0)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    committed = json.loads((MODELS / "tiny-clip" / "config.json").read_text())
    rebuilt = json.loads((tmp_path / "a" / "config.json").read_text())
    assert committed["vision_config"]["hidden_size"] == rebuilt["vision_config"]["hidden_size"]


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl", "tiny-flux"])
def test_family_models_rebuild_to_the_committed_bytes(tmp_path, name):
    """`charloop build-tiny-models` recreates each committed family folder exactly."""
    from charloop.models.tiny import build_tiny_sd15, build_tiny_sdxl
    from charloop.models.tiny_flux import build_tiny_flux

    builders = {"tiny-sd15": build_tiny_sd15, "tiny-sdxl": build_tiny_sdxl,
                "tiny-flux": build_tiny_flux}  # fmt: skip
    build = builders[name]
    build(tmp_path / name, seed=0)
    committed = sorted(p.relative_to(MODELS / name) for p in (MODELS / name).rglob("*.safetensors"))
    rebuilt = sorted(
        p.relative_to(tmp_path / name) for p in (tmp_path / name).rglob("*.safetensors")
    )
    assert committed == rebuilt and committed
    for path in committed:
        a, b = load_file(MODELS / name / path), load_file(tmp_path / name / path)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path


def test_vocabulary_is_the_same_in_every_process():
    """A resumed world build rebuilds its tokenizers in a new process: token ids must not move
    (the ``tokenizers`` BPE trainer breaks ties by a per-process hash order)."""
    import subprocess
    import sys

    code = (
        "import json; from charloop_world.tokenizer import build_world_tokenizer; "
        "print(json.dumps(build_world_tokenizer().get_vocab(), sort_keys=True))"
    )
    vocabs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert vocabs[0] == vocabs[1] and len(json.loads(vocabs[0])) > 1000
