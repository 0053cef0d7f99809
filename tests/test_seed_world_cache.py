"""bench/seed_world_cache.py: a GPU build warm-started from a shipped world model."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import MODELS, bench_script

SOURCE = MODELS / "world-sdxl"


@pytest.mark.skipif(not SOURCE.exists(), reason="models/world-sdxl is not in this checkout")
def test_warm_start_encodes_a_caption_as_the_shipped_model_does(tmp_path):
    """The checkpoint holds the shipped weights under today's tokenizer: the text encoder,
    fed today's ids, gives the shipped encoder's hidden states; a second call leaves it."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from charloop_world.arch import get_arch

    seed = bench_script("seed_world_cache").seed
    assert "warm start" in seed("sdxl", MODELS, tmp_path, 6e-4)
    state = torch.load(tmp_path / "sdxl" / "diffusion.pt", weights_only=True)
    assert state["step"] == 0 and state["elapsed"] == 0.0
    components = get_arch("sdxl").new_components(0)
    encoder = components["text_encoder"]
    encoder.load_state_dict(state["modules"]["text_encoder"])
    shipped = CLIPTextModel.from_pretrained(SOURCE / "text_encoder").float()
    shipped_tokenizer = CLIPTokenizer.from_pretrained(SOURCE / "tokenizer")
    text = "a character, teal hair, ponytail, wearing a star badge, in a forest, sketch style"
    with torch.no_grad():
        want = shipped(shipped_tokenizer(text, return_tensors="pt").input_ids).last_hidden_state
        got = encoder(components["tokenizer"](text, return_tensors="pt").input_ids)
    assert torch.allclose(got.last_hidden_state, want, atol=1e-5)
    assert "left as it is" in seed("sdxl", MODELS, tmp_path, 6e-4)
