"""World base models of every family: SDXL and FLUX in their real diffusers classes, trained
by the same loop as world-sd15, saved, loaded and sampled the way charloop samples them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charloop_world.arch import ARCH_FAMILIES, get_arch
from charloop_world.dataset import make_dataset
from tests.conftest import REPO

NEW_FAMILIES = ("sdxl", "flux")
PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "flux": "FluxPipeline"}


@pytest.fixture(scope="module")
def renders():
    return make_dataset(6, 2, seed=0)


def _train_briefly(family: str, renders, tmp_path: Path, seconds: float = 3.0):
    from charloop_world import build_base, train_base

    arch = get_arch(family)
    components = arch.new_components(0)
    vae = components["vae"]
    latents, _, shift = build_base.scaled_latents(arch, vae, renders.images, "cpu")
    setup = train_base.DiffusionSetup(batch_size=4, log_every=1, checkpoint_every=2)
    log = train_base.train_diffusion(
        arch, components, latents, renders.records, seconds, tmp_path / "ckpt.pt", setup
    )
    return arch, components, log, shift


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_family_trains_saves_and_samples_through_charloops_path(family, renders, tmp_path):
    from charloop.families import family_of_pipe
    from charloop_world import base_model, build_base

    arch, components, log, shift = _train_briefly(family, renders, tmp_path)
    assert log.total_steps >= 1 and all(np.isfinite(log.losses))  # wall-clock budget
    base_model.save_pipeline(arch.assemble(components), tmp_path / "model")
    pipe = build_base.load_pipeline(tmp_path / "model")
    assert type(pipe).__name__ == PIPELINES[family]
    assert family_of_pipe(pipe).name == family
    assert build_base.arch_of_folder(tmp_path / "model") is arch
    # the latent factors the training saw are the ones the pipeline decodes with
    assert pipe.vae.config.scaling_factor == pytest.approx(components["vae"].config.scaling_factor)
    if family == "flux":
        assert pipe.vae.config.shift_factor == pytest.approx(shift) and shift != 0.0
        assert pipe.vae.config.latent_channels == 16
    images = build_base.generate(pipe, ["a character, teal hair, in a forest"] * 2, 0, steps=2)
    assert [im.size for im in images] == [(64, 64)] * 2
    assert np.asarray(images[0]).std() > 0


def test_sdxl_trains_on_crops_with_their_real_offsets():
    arch = get_arch("sdxl")
    latents = torch.arange(2 * 4 * 16 * 16, dtype=torch.float32).view(2, 4, 16, 16)
    shapes, rng = set(), np.random.default_rng(0)
    for _ in range(40):
        crop, sizes = arch.batch_geometry(latents, rng)
        assert sizes is not None and sizes.shape == (2, 6)
        original_h, original_w, top, left, h, w = sizes[0].tolist()
        assert (original_h, original_w) == (64, 64)
        assert (h, w) == (crop.shape[2] * 4, crop.shape[3] * 4)
        # the crop's offset in time_ids is where the crop really came from
        expected = latents[
            :, :, int(top) // 4 : int(top + h) // 4, int(left) // 4 : int(left + w) // 4
        ]
        assert torch.equal(crop, expected)
        shapes.add((int(h), int(w)))
    assert shapes == {(64, 64), (48, 64), (64, 48)}


def test_flux_samples_undistilled_bases_with_true_guidance(tmp_path):
    from charloop.families.flux import FAMILY
    from charloop_world import base_model

    arch = get_arch("flux")
    components = arch.new_components(0)
    assert components["transformer"].config.guidance_embeds is False
    base_model.save_pipeline(arch.assemble(components), tmp_path / "m")
    from charloop_world.build_base import load_pipeline

    pipe = load_pipeline(tmp_path / "m")
    kwargs = FAMILY.sampling_kwargs(pipe, 4.0)
    assert kwargs == {"true_cfg_scale": 4.0, "max_sequence_length": 64}
    tiny = load_pipeline(REPO / "models" / "tiny-flux")  # guidance-distilled, like dev
    assert FAMILY.sampling_kwargs(tiny, 3.5) == {"guidance_scale": 3.5, "max_sequence_length": 512}


def test_build_resumes_where_it_stopped(renders, tmp_path):
    """A finished budget reruns as a no-op; a longer one continues from the checkpoint."""
    from charloop_world import train_base

    arch, _, first, _ = _train_briefly("flux", renders, tmp_path, seconds=2.0)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["step"] == first.total_steps and set(state["modules"]) == {
        "transformer",
        "text_encoder",
        "text_encoder_2",
    }
    latents = (torch.zeros(12, 16, 16, 16), torch.zeros(12, 16, 16, 16))
    setup = train_base.DiffusionSetup(batch_size=4, log_every=1, checkpoint_every=2)
    rerun = train_base.train_diffusion(
        arch, arch.new_components(1), latents, renders.records, 2.0, tmp_path / "ckpt.pt", setup
    )
    assert rerun.total_steps == first.total_steps
    longer = train_base.train_diffusion(
        arch,
        arch.new_components(1),
        latents,
        renders.records,
        state["elapsed"] + 1.5,
        tmp_path / "ckpt.pt",
        setup,
    )
    assert longer.total_steps > first.total_steps


def test_unknown_family_is_refused_before_anything_is_written(tmp_path):
    from charloop_cli.world_cmds import world_app

    result = CliRunner().invoke(
        world_app, ["build", "base", "--family", "unknown", "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2, result.output
    assert "--family" in result.output and "sdxl" in result.output
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="sd15, sdxl, flux"):
        get_arch("sd3")
    assert ARCH_FAMILIES == ("sd15", "sdxl", "flux")


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_world_model_of_another_family_than_the_params_is_refused(family, tmp_path):
    """validate: the world model's own model_index.json against base_model.family."""
    import yaml

    from charloop_cli.main import app

    model = REPO / "models" / f"world-{family}"
    assert (model / "model_index.json").is_file(), f"models/world-{family} is not built"
    data = yaml.safe_load((REPO / "examples" / f"world-{family}.yaml").read_text())
    other = "flux" if family == "sdxl" else "sdxl"
    data["base_model"]["family"] = other
    data["base_model"]["path"] = str(model)
    data["character"]["references"] = str(REPO / "references" / "kira")
    for section in ("filter", "evaluate"):
        data[section]["embedder"]["path"] = str(REPO / "models" / "world-embedder")
    if "traits" in data:
        data["traits"]["scorer"]["path"] = str(REPO / "models" / "world-tagger")
    data["train"].pop("trigger_embedding", None)  # FLUX refuses it before the family check
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["validate", str(params)])
    assert result.exit_code == 2, result.output
    assert "base_model.family" in result.output and other in result.output
    data["base_model"]["family"] = family  # the example as shipped validates
    params.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["validate", str(params)])
    assert result.exit_code == 0, result.output
