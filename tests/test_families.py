"""Model families: detection, the declared family and prediction type against the folder,
noise-schedule overrides, and the original-UNet names of SDXL modules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from charloop.families import FAMILIES, get_family
from charloop.families.base import centre_crop
from charloop.families.detect import FamilyMismatch, base_facts, resolve_base, resolve_family
from charloop.families.ldm_names import ldm_unet_name
from charloop.params.schema import BaseModelSpec
from tests.conftest import MODELS, base_model, tiny_params, write_params
from tests.test_cli_errors import _cli

SDXL = str(MODELS / "tiny-sdxl")


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    """CLI errors print one line (an earlier ``--debug`` test may have set the variable)."""
    monkeypatch.delenv("CHARLOOP_DEBUG", raising=False)


SD15 = str(MODELS / "tiny-sd15")


def test_auto_reads_the_family_from_model_index():
    assert resolve_family("auto", SD15).name == "sd15"
    assert resolve_family("auto", SDXL).name == "sdxl"
    assert resolve_family("auto", str(MODELS / "tiny-flux")).name == "flux"
    assert set(FAMILIES) == {"sd15", "sdxl", "flux"}
    with pytest.raises(ValueError, match="unknown model family 'flux2'"):
        get_family("flux2")


def test_a_folder_of_another_family_names_both(tmp_path):
    with pytest.raises(FamilyMismatch, match=r"'sd15' but .*StableDiffusionXLPipeline \(sdxl\)"):
        resolve_family("sd15", SDXL)
    with pytest.raises(FamilyMismatch, match=r"'sdxl' but .*StableDiffusionPipeline"):
        resolve_family("sdxl", SD15)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    with pytest.raises(FamilyMismatch, match="names pipeline QwenImagePipeline"):
        resolve_family("auto", str(tmp_path))


def _copy(tmp_path: Path, source: str, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(source, folder)
    base_facts.cache_clear()
    return folder


def test_an_sdxl_folder_without_its_second_text_encoder_is_refused(tmp_path):
    folder = _copy(tmp_path, SDXL, "no-te2")
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(FamilyMismatch, match="has no text_encoder_2"):
        resolve_family("auto", str(folder))
    index = json.loads((folder / "model_index.json").read_text())
    del index["text_encoder_2"]
    (folder / "model_index.json").write_text(json.dumps(index))
    base_facts.cache_clear()
    with pytest.raises(FamilyMismatch, match="has no text_encoder_2"):
        resolve_family("sdxl", str(folder))


def _vpred_folder(tmp_path: Path, say: dict[str, object] | None) -> Path:
    """The tiny SDXL whose scheduler config says ``say`` (None: says nothing)."""
    folder = _copy(tmp_path, SDXL, "vpred")
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.pop("prediction_type", None)
    config.update(say or {})
    path.write_text(json.dumps(config))
    base_facts.cache_clear()
    return folder


def test_prediction_type_declared_against_the_scheduler_config(tmp_path):
    spec = BaseModelSpec(path=SDXL, prediction="v_prediction")
    with pytest.raises(FamilyMismatch, match=r"'v_prediction' but .* says 'epsilon'"):
        resolve_base(spec, SDXL)
    said_v = _vpred_folder(tmp_path, {"prediction_type": "v_prediction"})
    with pytest.raises(FamilyMismatch, match=r"'epsilon' but .* says 'v_prediction'"):
        resolve_base(BaseModelSpec(path=str(said_v), prediction="epsilon"), str(said_v))
    auto = resolve_base(BaseModelSpec(path=str(said_v)), str(said_v))
    assert (auto.family.name, auto.prediction_type, auto.zero_terminal_snr) == (
        "sdxl", "v_prediction", False,
    )  # fmt: skip


def test_a_silent_config_takes_the_declared_v_prediction_and_zero_terminal_snr(tmp_path):
    """A v-prediction base whose scheduler config says nothing: the declared facts reach
    both the sampling scheduler and the training one (zero terminal SNR: alpha_bar_T = 0)."""
    from charloop.models.pipeline import clear_pipeline_cache, load_pipeline
    from charloop.params.train import TrainParams
    from charloop.stages.train.models import build_models, make_accelerator

    folder = _vpred_folder(tmp_path, None)
    spec = BaseModelSpec(
        path=str(folder), device="cpu", prediction="v_prediction", zero_terminal_snr=True
    )
    base = resolve_base(spec, str(folder))
    assert (base.prediction_type, base.zero_terminal_snr) == ("v_prediction", True)
    pipe = load_pipeline(str(folder), spec)
    try:
        config = pipe.scheduler.config
        assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
        assert config.timestep_spacing == "trailing"
    finally:
        clear_pipeline_cache()
    tp = TrainParams(max_train_steps=1)
    models = build_models(str(folder), None, tp, make_accelerator(tp, torch.device("cpu")), base)
    scheduler = models.noise_scheduler
    assert scheduler.config.prediction_type == "v_prediction"
    assert float(scheduler.alphas_cumprod[-1]) < 1e-6  # pure noise at the last step
    plain = build_models(SDXL, None, tp, make_accelerator(tp, torch.device("cpu")))
    assert float(plain.noise_scheduler.alphas_cumprod[-1]) > 1e-3


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("conv_in", "input_blocks.0.0"),
        ("down_blocks.0.resnets.1.conv1", "input_blocks.2.0.in_layers.2"),
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        ("down_blocks.1.attentions.0.proj_in", "input_blocks.4.1.proj_in"),
        ("down_blocks.2.resnets.0.conv_shortcut", "input_blocks.7.0.skip_connection"),
        ("mid_block.resnets.1.time_emb_proj", "middle_block.2.emb_layers.1"),
        ("mid_block.attentions.0.transformer_blocks.3.attn2.to_k",
         "middle_block.1.transformer_blocks.3.attn2.to_k"),
        ("up_blocks.0.attentions.2.transformer_blocks.0.ff.net.0.proj",
         "output_blocks.2.1.transformer_blocks.0.ff.net.0.proj"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        ("up_blocks.1.resnets.2.conv2", "output_blocks.5.0.out_layers.3"),
        ("up_blocks.2.resnets.0.norm1", "output_blocks.6.0.in_layers.0"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("conv_out", "out.2"),
    ],
)  # fmt: skip
def test_ldm_names_of_sdxl_modules(path, expected):
    """The layout of diffusers' convert_diffusers_to_original_sdxl.py, for SDXL 1.0."""
    from charloop.models.consumers.base_modules import SDXL_UNET

    assert ldm_unet_name(path, SDXL_UNET) == expected


def test_centre_crop_geometry_is_what_sdxl_conditions_on():
    crop = centre_crop((120, 60), (64, 64))  # a landscape file, width 120, height 60
    assert crop.original == (60, 120) and crop.target == (64, 64)
    assert crop.crop_top_left == (0, 32)  # resized to 128x64, the middle 64 columns kept
    assert crop.as_tensor().tolist() == [60, 120, 0, 32, 64, 64]


def test_validate_names_the_family_and_refuses_a_contradiction(tmp_path, capsys):
    data = tiny_params(base_model=base_model("sdxl"))
    code, text = _cli(capsys, "validate", str(write_params(tmp_path / "ok", data)))
    assert code == 0 and "sdxl base" in text
    data = tiny_params(base_model=base_model("sdxl", family="sd15"))
    code, text = _cli(capsys, "validate", str(write_params(tmp_path / "bad", data)))
    assert code == 2
    assert "base_model.family is 'sd15'" in text and "set base_model.family: sdxl" in text
    data = tiny_params(base_model=base_model("sd15", zero_terminal_snr=True, prediction="epsilon"))
    code, text = _cli(capsys, "validate", str(write_params(tmp_path / "ztsnr", data)))
    assert code == 2 and "zero_terminal_snr needs prediction 'v_prediction'" in text


def test_a_single_file_checkpoint_needs_a_family_and_a_config(tmp_path, capsys):
    """Without hub access and without base_model.config, the conversion cannot know the
    architecture: exit 2 naming the missing config, and nothing converted."""
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.out.2.weight": torch.zeros(1)}, tmp_path / "base.safetensors")
    data = tiny_params(base_model={"path": "base.safetensors", "device": "cpu"})
    params = write_params(tmp_path, data)
    code, text = _cli(capsys, "run", "--params", str(params))
    assert code == 2 and "declare base_model.family" in text
    data["base_model"]["family"] = "sdxl"
    code, text = _cli(capsys, "run", "--params", str(write_params(tmp_path, data)))
    assert code == 2 and "with no base_model.config" in text
    assert "Point base_model.config at a local diffusers folder" in text
    assert not (tmp_path / ".charloop" / "converted").exists()


def test_a_single_file_checkpoint_loads_like_its_folder(tmp_path, monkeypatch):
    """An SD1.5 checkpoint in the original single-file layout, with the family declared
    and a config folder: converted once (by content) and rendering what the folder does."""
    from charloop.families import single_file
    from charloop.models.pipeline import clear_pipeline_cache
    from charloop.params.project import load_project
    from charloop.stages.generate.stage import run_generate
    from tests.ldm_checkpoint import write_sd15_checkpoint

    write_sd15_checkpoint(Path(SD15), tmp_path / "kira-base.safetensors")
    single = {"path": "kira-base.safetensors", "family": "sd15", "config": SD15, "device": "cpu"}
    project = load_project(write_params(tmp_path, tiny_params(base_model=single)))
    folder_project = load_project(
        write_params(tmp_path / "folder", tiny_params(base_model=base_model("sd15")))
    )
    clear_pipeline_cache()
    from_file = run_generate(project, 1, None, tmp_path / "gen-file")
    from_folder = run_generate(folder_project, 1, None, tmp_path / "gen-folder")
    rows = [json.loads(line) for line in (Path(from_file.path) / "manifest.jsonl").open()]
    same = [json.loads(line) for line in (Path(from_folder.path) / "manifest.jsonl").open()]
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in same]
    converted = list((tmp_path / ".charloop" / "converted").iterdir())
    assert [p.name[:5] for p in converted] == ["sd15-"]
    assert (converted[0] / "model_index.json").is_file()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(single_file.get_family("sd15").pipeline_type(), "from_single_file",
                        no_second_conversion)  # fmt: skip
    assert single_file.base_model_ref(project) == str(converted[0])
