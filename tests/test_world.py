"""The procedural character world and the models trained on it (charloop_world)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charloop_world.attributes import (
    CHARACTER_VALUES,
    CONTEXT_VALUES,
    WORLD_WORDS,
    CharacterSpec,
    Context,
    outfit_phrase,
    phrase,
    sample_character,
    sample_context,
)
from charloop_world.captions import caption, character_phrases, render_references
from charloop_world.render import render

MODELS = Path(__file__).resolve().parents[1] / "models"
BASE, EMBEDDER, ORACLE = MODELS / "world-sd15", MODELS / "world-embedder", MODELS / "world-oracle"

# Measured on fresh renders when the models were built (see each MODEL_CARD.md); the
# thresholds leave a wide margin.
ORACLE_MIN_ACCURACY = {  # measured on 600 fresh renders: 0.99, 0.99, 0.99, 1.0, 0.98, 0.94, 0.95
    "hair_colour": 0.9,
    "outfit_colour": 0.9,
    "outfit_kind": 0.9,
    "setting": 0.9,
    "pose": 0.85,
    "accessory": 0.8,
    "body_shape": 0.8,
}

needs_base = pytest.mark.skipif(not (BASE / "model_index.json").exists(), reason="no world-sd15")
needs_embedder = pytest.mark.skipif(not EMBEDDER.exists(), reason="no world-embedder")
needs_oracle = pytest.mark.skipif(not ORACLE.exists(), reason="no world-oracle")

CHARACTER = CharacterSpec(
    hair_colour="red",
    hair_shape="ponytail",
    eye_colour="green",
    skin_tone="pale",
    outfit_colour="blue",
    outfit_kind="jacket",
    accessory="hat",
    body_shape="slim",
)


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def test_render_is_deterministic_by_seed() -> None:
    context = Context("beach", "outlined", "arms up", "surprised")
    first = render(CHARACTER, context, seed=3)
    assert first.mode == "RGB" and first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(render(CHARACTER, context, seed=3)))
    assert _diff(first, render(CHARACTER, context, seed=4)) > 0


@pytest.mark.parametrize("attribute", list(CHARACTER_VALUES))
def test_render_differs_across_every_character_attribute(attribute: str) -> None:
    context = Context("city", "flat", "standing", "smiling")
    base = render(CHARACTER, context, seed=1)
    for value in CHARACTER_VALUES[attribute]:
        if value == getattr(CHARACTER, attribute):
            continue
        other = CharacterSpec(**{**CHARACTER.as_dict(), attribute: value})
        assert _diff(base, render(other, context, seed=1)) > 0.2, (attribute, value)


def test_render_differs_across_context() -> None:
    base = Context("forest", "flat", "standing", "smiling")
    image = render(CHARACTER, base, seed=1)
    changes = {
        "setting": "library",
        "style": "pixel art",
        "pose": "sitting",
        "expression": "serious",
    }
    for name, value in changes.items():
        changed = Context(**{**base.as_dict(), name: value})
        assert _diff(image, render(CHARACTER, changed, seed=1)) > 0.2, name


def test_invalid_attribute_values_are_refused() -> None:
    with pytest.raises(ValueError):
        CharacterSpec(**{**CHARACTER.as_dict(), "hair_colour": "plaid"})
    with pytest.raises(ValueError):
        Context(setting="moon")


def test_full_caption_lists_every_attribute_phrase() -> None:
    context = Context("spaceship", "pixel art", "sitting", "serious")
    text = caption(CHARACTER, context)
    assert text == (
        "a character, red hair, ponytail, green eyes, pale skin, blue jacket, wearing a hat, "
        "slim body, on a spaceship, pixel art style, sitting, serious"
    )


def test_caption_dropout_keeps_exactly_the_non_dropped_phrases() -> None:
    rng = np.random.default_rng(0)
    seen_lengths = set()
    for _ in range(200):
        character, context = sample_character(rng), sample_context(rng)
        seed = int(rng.integers(2**31))
        text = caption(character, context, np.random.default_rng(seed), drop_prob=0.5)
        replay = np.random.default_rng(seed)
        keep = {n for n in CHARACTER_VALUES if replay.random() >= 0.5}
        parts = text.split(", ")
        assert parts[0] == "a character"
        assert parts[1:-4] == character_phrases(character, keep)
        assert parts[-4:] == [phrase(n, v) for n, v in context.as_dict().items()]
        for name in set(CHARACTER_VALUES) - keep - {"outfit_colour", "outfit_kind"}:
            assert phrase(name, getattr(character, name)) not in parts
        seen_lengths.add(len(parts))
    assert len(seen_lengths) > 4


def test_outfit_phrases_combine() -> None:
    assert outfit_phrase("blue", "jacket") == "blue jacket"
    assert outfit_phrase("blue", None) == "blue clothes"
    assert outfit_phrase(None, "robe") == "wearing a robe"
    assert outfit_phrase(None, None) is None


def test_render_references_writes_pngs_with_context_captions(tmp_path: Path) -> None:
    paths = render_references(CHARACTER, tmp_path / "refs", n=3, seed=0)
    assert [p.name for p in paths] == ["ref_000.png", "ref_001.png", "ref_002.png"]
    assert all(Image.open(p).size == (64, 64) for p in paths)
    assert not list((tmp_path / "refs").glob(".*"))
    tags = paths[0].with_suffix(".txt").read_text().strip().split(", ")
    assert len(tags) == 4 and tags[0].endswith(" style")  # style, setting, expression, pose
    assert set(tags) <= set(WORLD_PHRASES)


WORLD_PHRASES = {phrase(name, value) for name, values in CONTEXT_VALUES.items() for value in values}


def test_tokenizer_keeps_world_words_whole_and_tokenizes_triggers() -> None:
    from charloop_world.tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    for word in WORLD_WORDS:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    trigger = tokenizer.tokenize("zxq kira")
    assert len(trigger) > 2 and tokenizer.unk_token not in trigger
    ids = tokenizer(caption(CHARACTER, Context()), truncation=True).input_ids
    assert len(ids) < tokenizer.model_max_length


@needs_base
def test_committed_tokenizer_matches_code() -> None:
    from transformers import CLIPTokenizer

    from charloop_world.tokenizer import build_world_tokenizer

    # The committed model's vocabulary came from a trainer that numbered tied merges
    # differently run to run; today's code is deterministic. Every world word is still one
    # token in both, so a caption splits into the same tokens (a trigger may split apart).
    saved = CLIPTokenizer.from_pretrained(str(BASE / "tokenizer"))
    text = caption(CHARACTER, Context())
    tokens = saved.tokenize(text)
    assert tokens == build_world_tokenizer().tokenize(text)
    assert all(t.endswith("</w>") for t in tokens)  # whole words and punctuation only


@needs_base
def test_base_model_loads_and_generates() -> None:
    import torch

    from charloop_world.build_base import load_pipeline

    assert sum(f.stat().st_size for f in BASE.rglob("*") if f.is_file()) < 30e6
    pipe = load_pipeline(BASE)
    assert pipe.vae.config.block_out_channels and pipe.unet.config.sample_size == 16
    generator = torch.Generator().manual_seed(0)
    images = pipe(
        [caption(CHARACTER, Context())], height=64, width=64, num_inference_steps=2,
        guidance_scale=5.0, generator=generator,
    ).images  # fmt: skip
    assert images[0].size == (64, 64)


def _fresh_renders(n_characters: int, views: int, seed: int) -> tuple[list, list, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, records, ids = [], [], []
    for index in range(n_characters):
        character = sample_character(rng)
        for _ in range(views):
            context = sample_context(rng)
            images.append(render(character, context, int(rng.integers(2**31))))
            records.append({**character.as_dict(), **context.as_dict()})
            ids.append(index)
    return images, records, np.asarray(ids)


@needs_embedder
def test_embedder_same_character_closer_than_different() -> None:
    from charloop_world.embedder import WorldEmbedderBackend, identity_metrics

    backend = WorldEmbedderBackend(str(EMBEDDER))
    assert backend.embed_texts(["a character"]) is None
    images, _, ids = _fresh_renders(24, 3, seed=12345)
    embeddings = backend.embed_images(images)
    assert embeddings.dtype == np.float32 and embeddings.shape[0] == len(images)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    metrics = identity_metrics(embeddings, ids)
    assert metrics["same_cosine"] > metrics["different_cosine"] + 0.2
    assert metrics["retrieval_top1"] > 0.5


@needs_oracle
def test_oracle_reads_fresh_renders() -> None:
    from charloop_world.oracle import accuracy, load_oracle

    oracle = load_oracle(ORACLE)
    images, records, _ = _fresh_renders(120, 1, seed=54321)
    reads = oracle.read(images[:2])
    assert set(reads[0]) >= set(CHARACTER_VALUES)
    scores = accuracy(oracle, images, records)
    for name, minimum in ORACLE_MIN_ACCURACY.items():
        assert scores[name] >= minimum, (name, scores[name])


@pytest.mark.slow
@needs_base
@needs_oracle
def test_base_model_follows_prompts() -> None:
    from charloop_world.build_base import load_pipeline
    from charloop_world.oracle import load_oracle
    from charloop_world.quality import prompt_accuracy

    scores = prompt_accuracy(load_pipeline(BASE), load_oracle(ORACLE), n=32, seed=7)
    # measured on 96 prompts (MODEL_CARD.md): 1.0, 0.99, 0.97, 0.94, 1.0; chance 0.17-0.25
    for name in ("hair_colour", "outfit_colour", "outfit_kind", "accessory", "setting"):
        assert scores[name] >= 0.75, (name, scores)


def test_cli_references(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from charloop_cli.world_cmds import world_app

    args = ["references", str(tmp_path / "r"), "--n", "2", "--character", "hair_colour=teal"]
    result = CliRunner().invoke(world_app, args)
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert written == ["identity.json", "ref_000.png", "ref_000.txt", "ref_001.png", "ref_001.txt"]
    bad = CliRunner().invoke(world_app, ["references", str(tmp_path / "x"), "--character", "hat=1"])
    assert bad.exit_code == 2


def test_dataset_is_the_same_with_worker_processes() -> None:
    from charloop_world.dataset import make_dataset

    serial, parallel = make_dataset(5, 2, seed=3), make_dataset(5, 2, seed=3, workers=2)
    assert np.array_equal(serial.images, parallel.images)
    assert serial.records == parallel.records
    assert serial.identity.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_caption_batches_draw_fresh_captions_and_token_ids() -> None:
    from charloop_world.batches import CaptionBatches, caption_batches
    from charloop_world.dataset import make_dataset
    from charloop_world.tokenizer import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    records = make_dataset(6, 1, seed=0).records
    source = CaptionBatches(records, [tokenizer], 64, drop_prob=0.3, empty_prob=0.25, seed=1)
    index, (ids,) = next(caption_batches(source))
    assert index.shape == (64,) and int(index.max()) < 6
    assert ids.shape == (64, tokenizer.model_max_length)
    empty = tokenizer([""], padding="max_length", max_length=ids.shape[1]).input_ids[0]
    n_empty = sum(row == empty for row in ids.tolist())
    assert 4 <= n_empty <= 30  # about a quarter
    again_index, (again_ids,) = next(iter(CaptionBatches(records, [tokenizer], 64, 0.3, 0.25, 1)))
    assert torch_equal((again_index, again_ids), (index, ids))  # same seed, same stream


def torch_equal(a: tuple, b: tuple) -> bool:
    return all(bool((x == y).all()) for x, y in zip(a, b, strict=True))


def test_diffusion_training_checkpoints_and_resumes(tmp_path: Path) -> None:
    import torch

    from charloop_world import base_model, train_base
    from charloop_world.arch import get_arch
    from charloop_world.dataset import make_dataset

    data = make_dataset(4, 2, seed=0)
    arch = get_arch("sd15")
    components = arch.new_components(0)
    unet = components["unet"] = base_model.build_unet((16, 32, 32))
    text_encoder = components["text_encoder"]
    latents = train_base.encode_latents(components["vae"], data.images)
    before = [p.detach().clone() for p in unet.parameters()]
    setup = train_base.DiffusionSetup(batch_size=2, checkpoint_every=2, log_every=1)
    ckpt = tmp_path / "diffusion.pt"
    first = train_base.train_diffusion(arch, components, latents, data.records, 4.0, ckpt, setup)
    assert first.total_steps >= 2 and ckpt.exists()
    assert all(np.isfinite(first.losses))
    moved = sum(
        float((p.detach() - b).abs().sum()) for p, b in zip(unet.parameters(), before, strict=True)
    )
    assert moved > 0
    state = torch.load(ckpt, weights_only=True)
    n_params = len(list(unet.parameters())) + len(list(text_encoder.parameters()))
    # the last checkpoint is the finished budget: a rerun of it trains no further
    assert state["step"] == first.total_steps and len(state["ema"]) == n_params
    again = train_base.train_diffusion(arch, components, latents, data.records, 4.0, ckpt, setup)
    assert again.total_steps == first.total_steps
    budget = state["elapsed"] + 2.0  # the budget counts the time before the checkpoint too
    resumed = train_base.train_diffusion(
        arch, components, latents, data.records, budget, ckpt, setup
    )
    assert resumed.total_steps > state["step"]  # counted on from the checkpoint
