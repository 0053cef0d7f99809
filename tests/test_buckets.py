"""Aspect-ratio buckets: the sizes, the assignment, batches within one bucket, and SDXL's
size conditioning from the real crop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from charloop.models.encode_cache import EncodeCache
from charloop.models.pipeline import load_pipeline
from charloop.params.project import load_project
from charloop.stages.train.adapter import training_buckets
from charloop.stages.train.buckets import bucket_batches, bucket_sizes, nearest_bucket, next_batch
from charloop.stages.train.data import ModelIdentity, encode_rows, read_rows
from charloop.stages.train.loop import train_lora
from charloop.stages.train.models import build_models, make_accelerator
from tests.conftest import FAMILY_IDS, base_model, tiny_params, write_params


def test_sdxl_buckets_are_the_ones_artists_know():
    sizes = bucket_sizes(1024, 64, 2.0)
    assert sizes[0] == (1024, 1024)
    for height, width in [(896, 1152), (832, 1216), (768, 1344), (1152, 896), (1344, 768)]:
        assert (height, width) in sizes
    assert all(h * w <= 1024 * 1024 and h % 64 == 0 and w % 64 == 0 for h, w in sizes)
    assert all(max(h, w) / min(h, w) <= 2.0 for h, w in sizes)
    assert nearest_bucket((1920, 1080), sizes) == (768, 1344)  # 16:9 landscape
    assert nearest_bucket((1000, 1000), sizes) == (1024, 1024)
    assert nearest_bucket((600, 900), sizes) == (1216, 832)  # 2:3 portrait


def test_an_epoch_of_batches_stays_within_buckets_and_covers_every_row():
    buckets = [0, 1, 0, 1, 1, 0, 2]
    generator = torch.Generator().manual_seed(0)
    batches = bucket_batches(generator, list(range(7)), buckets, size=2)
    assert sorted(r for b in batches for r in b) == list(range(7))
    assert all(len({buckets[r] for r in b}) == 1 and len(b) <= 2 for b in batches)
    order: list = []
    drawn = [next_batch(torch.Generator().manual_seed(0), order, 2, list(range(7)), buckets)]
    assert drawn[0] == batches[0] and len(order) == len(batches) - 1


def _mixed_dataset(folder: Path) -> Path:
    """Six captioned images: two square, two landscape, two portrait."""
    folder.mkdir(parents=True)
    rows = []
    for index, (width, height) in enumerate([(64, 64), (80, 80), (128, 48), (120, 40),
                                              (40, 120), (48, 128)]):  # fmt: skip
        image = Image.new("RGB", (width, height), (40 * index, 90, 200 - 30 * index))
        image.paste((250, 250, 250), (width // 4, height // 4, width // 2, height // 2))
        image.save(folder / f"img{index}.png")
        rows.append(
            {"file_name": f"img{index}.png", "text": "zxq kira, teal hair", "id": f"r{index}"}
        )
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_bucketed_rows_train_at_their_own_size(tmp_path, family):
    data = tiny_params(
        base_model=base_model(family),
        train={"max_train_steps": 3, "batch_size": 2, "buckets": {"step": 32, "max_ratio": 3.0}},
    )
    project = load_project(write_params(tmp_path, data))
    params = project.params
    ref = project.model_ref(params.base_model.path)
    pipe = load_pipeline(ref, params.base_model)
    from charloop.families import get_family

    buckets = training_buckets(params.train, get_family(family), 64)
    assert (buckets is not None) == (family != "sd15")  # auto: on for SDXL and FLUX
    buckets = bucket_sizes(64, 32, 3.0)
    folder = _mixed_dataset(tmp_path / "data")
    cache = EncodeCache(tmp_path / "cache")
    encoded = encode_rows(pipe, folder, read_rows(folder), 64, ModelIdentity(ref), cache,
                          buckets=buckets)  # fmt: skip
    shapes = [tuple(latent.shape[1:]) for latent in encoded.latents]  # 4 or 16 channels
    assert shapes == [(8, 8), (8, 8), (4, 12), (4, 12), (12, 4), (12, 4)]
    assert encoded.buckets is not None and len(set(encoded.buckets)) == 3
    assert encoded.sizes is not None
    # original (h, w), crop (top, left), target (h, w): 128x48 scaled to cover 96x32 -> 96x36
    assert encoded.sizes[2].tolist() == [48, 128, 2, 0, 32, 96]
    again = encode_rows(pipe, folder, read_rows(folder), 64, ModelIdentity(ref), cache,
                        buckets=buckets)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(again.latents, encoded.latents, strict=True))
    accelerator = make_accelerator(params.train, torch.device("cpu"))
    models = build_models(ref, None, params.train, accelerator)
    log = train_lora(accelerator, models, encoded, params.train)
    assert len(log.loss) == 3 and all(torch.isfinite(torch.tensor(log.loss)))
