"""train.augment: zoomed and mirrored variants of the references, encoded and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from charloop.models.encode_cache import EncodeCache
from charloop.models.pipeline import load_pipeline
from charloop.params.project import load_project
from charloop.params.train import AugmentParams
from charloop.stages.train.augment import Variant, draw_variant, split_repeats, with_variants
from charloop.stages.train.data import ModelIdentity, encode_rows, read_rows
from tests.conftest import captioned_dataset, tiny_params, write_params

ROWS = [
    {"id": "i001-aaaa-00", "file_name": "1_t/a.png", "text": "t", "repeats": 1},
    {"id": "ref-kira-ref_000", "file_name": "8_t_references/r0.png", "text": "t", "repeats": 8},
    {"id": "ref-kira-ref_001", "file_name": "1_t_references/r1.png", "text": "t", "repeats": 1},
]


def test_variants_share_the_reference_repeats_and_leave_other_rows_alone():
    assert with_variants(ROWS, AugmentParams()) == ROWS  # off by default
    rows = with_variants(ROWS, AugmentParams(variants=3))
    ids = [r["id"] for r in rows]
    assert ids == [
        "i001-aaaa-00",
        "ref-kira-ref_000",
        "ref-kira-ref_000~v1",
        "ref-kira-ref_000~v2",
        "ref-kira-ref_000~v3",
        "ref-kira-ref_001",  # drawn once: nothing to share
    ]
    reference = [r for r in rows if r["id"].startswith("ref-kira-ref_000")]
    assert [r["repeats"] for r in reference] == [2, 2, 2, 2]  # the reference's weight kept
    assert "variant" not in reference[0] and all("variant" in r for r in reference[1:])
    assert with_variants(ROWS, AugmentParams(variants=3)) == rows  # the same every run
    many = with_variants(ROWS, AugmentParams(variants=16))
    assert sum(r["id"].startswith("ref-kira-ref_000") for r in many) == 8  # at most repeats
    assert split_repeats(8, 3) == [3, 3, 2]


def test_a_variant_is_a_smaller_window_in_the_image_mirrored_when_asked():
    plain = draw_variant("ref-a", 1, AugmentParams(zoom=1.0))
    assert (plain.scale, plain.left, plain.top) == (1.0, 0.0, 0.0)
    augment = AugmentParams(variants=4, zoom=1.5, flip=True)
    drawn = [draw_variant("ref-a", n, augment) for n in range(1, 5)]
    assert [v.flip for v in drawn] == [False, True, False, True]
    for v in drawn:
        assert 1 / 1.5 <= v.scale <= 1.0 and v.left + v.scale <= 1.0 and v.top + v.scale <= 1.0
    assert len({v.key()[0] for v in drawn}) == 4  # each variant its own zoom
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :8] = 255  # a white stripe on the left edge
    image = Image.fromarray(pixels)
    window = Variant(0.5, 0.0, 0.25, False).apply(image)
    assert window.size == (32, 32) and np.asarray(window)[:, :8].min() == 255
    mirrored = np.asarray(Variant(1.0, 0.0, 0.0, True).apply(image))
    assert mirrored[:, -8:].min() == 255 and mirrored[:, :8].max() == 0
    assert Variant.from_key(drawn[1].key()).key() == drawn[1].key()


@pytest.mark.slow
def test_variants_encode_to_their_own_cached_latents(tmp_path):
    dataset = captioned_dataset(tmp_path / "data", "sd15")
    project = load_project(write_params(tmp_path, tiny_params()))
    params = project.params
    pipe = load_pipeline(project.model_ref(params.base_model.path), params.base_model)
    identity = ModelIdentity(project.model_ref(params.base_model.path))
    folder = Path(dataset.path)
    first = read_rows(folder)[0]
    rows = with_variants([first | {"id": "ref-x-0", "repeats": 4}], AugmentParams(variants=2))
    cache = EncodeCache(tmp_path / "cache")
    data = encode_rows(pipe, folder, rows, 64, identity, cache)
    assert data.ids == ["ref-x-0", "ref-x-0~v1", "ref-x-0~v2"] and data.repeats == [2, 1, 1]
    assert isinstance(data.latents, torch.Tensor)
    assert not torch.allclose(data.latents[0], data.latents[1])
    assert not torch.allclose(data.latents[1], data.latents[2])
    plain = encode_rows(pipe, folder, [first], 64, identity, cache)
    assert torch.equal(plain.latents[0], data.latents[0])  # the image's own key is unchanged
    again = encode_rows(pipe, folder, rows, 64, identity, cache)
    assert torch.equal(again.latents, data.latents) and cache.misses == 2 * len(rows)
