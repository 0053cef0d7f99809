"""Training: content-keyed caches, resume, both LoRA formats, kohya names, loss pieces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from charloop.families.objectives import snr_weights
from charloop.models.encode_cache import EncodeCache
from charloop.models.pipeline import load_pipeline, lora_applied
from charloop.params.project import load_project
from charloop.scenes.render import render
from charloop.stages.generate.stage import plan_jobs
from charloop.stages.train.data import ModelIdentity, encode_rows, read_rows, split_validation
from charloop.stages.train.kohya import KOHYA_WEIGHTS_NAME, to_kohya
from charloop.stages.train.loop import TrainingInterrupted, train_lora
from charloop.stages.train.stage import (
    WEIGHTS_NAME,
    build_models,
    make_accelerator,
    run_train,
    save_adapter,
)
from tests.conftest import FAMILY_IDS, base_model, captioned_dataset, tiny_params, write_params

FAST_TRAIN = {"max_train_steps": 6, "batch_size": 2, "validation": {"images": 2, "every": 3}}


@pytest.fixture(scope="module", params=FAMILY_IDS)
def family(request) -> str:
    """Each training test runs on both embedded families."""
    return request.param


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, family):
    return captioned_dataset(tmp_path_factory.mktemp(f"train-{family}"), family)


def _project(folder: Path, family: str = "sd15", **train: object):
    data = tiny_params(train={**FAST_TRAIN, **train}, base_model=base_model(family))
    return load_project(write_params(folder, data))


def _pipe(project):
    return load_pipeline(
        project.model_ref(project.params.base_model.path), project.params.base_model
    )


def test_encode_cache_is_keyed_by_content_and_resolution(dataset, family, tmp_path):
    project = _project(tmp_path, family)
    pipe, folder = _pipe(project), Path(dataset.path)
    identity = ModelIdentity(project.model_ref(project.params.base_model.path))
    rows = read_rows(folder)
    cache = EncodeCache(tmp_path / "cache")
    first = encode_rows(pipe, folder, rows, 64, identity, cache)
    assert (cache.hits, cache.misses) == (0, 2 * len(rows))  # latents + text embeddings
    again = encode_rows(pipe, folder, rows, 64, identity, cache)
    assert cache.hits == 2 * len(rows) and torch.equal(again.latents, first.latents)
    uncached = encode_rows(pipe, folder, rows, 64, identity, None)
    assert torch.allclose(uncached.latents, first.latents, atol=1e-6)
    # Edit one image in place, same file name: only its latent is recomputed, and it changes.
    edited = folder / rows[0]["file_name"]
    original = edited.read_bytes()
    try:
        with Image.open(edited) as image:
            Image.eval(image.convert("RGB"), lambda v: 255 - v).save(edited)
        before = cache.misses
        fresh = encode_rows(pipe, folder, rows, 64, identity, cache)
        assert cache.misses == before + 1
        assert not torch.allclose(fresh.latents[0], first.latents[0])
        assert torch.equal(fresh.latents[1:], first.latents[1:])
    finally:
        edited.write_bytes(original)
    before = cache.misses
    encode_rows(pipe, folder, rows[:2], 32, identity, cache)  # another resolution: new keys
    assert cache.misses == before + 2


def test_validation_split_is_deterministic_and_keeps_training_data():
    rows = [{"id": f"img{i}"} for i in range(10)]
    train, val = split_validation(rows, 3, seed=0)
    assert len(val) == 3 and len(train) == 7
    assert split_validation(rows, 3, seed=0) == (train, val)
    assert split_validation(rows, 3, seed=1)[1] != val
    assert split_validation(rows[:1], 3, seed=0) == (rows[:1], [])


def test_validation_holds_out_generated_images_before_references():
    rows = [{"id": f"ref-kira-{i}"} for i in range(8)] + [{"id": f"i001-a-{i}"} for i in range(3)]
    for seed in range(20):
        assert split_validation(rows, 2, seed) == split_validation(rows, 2, seed, True)
        train, val = split_validation(rows, 2, seed, references=False)
        assert len(val) == 2 and not any(r["id"].startswith("ref-") for r in val)
        assert all(r in train for r in rows[:8])  # every reference trains
    _, val = split_validation(rows, 5, seed=0, references=False)
    assert sum(r["id"].startswith("ref-") for r in val) == 2  # only when generated run out
    refs_only = rows[:8]
    assert len(split_validation(refs_only, 2, seed=0, references=False)[1]) == 2
    held = [split_validation(rows, 2, s)[1] for s in range(20)]  # as before: any row
    assert any(r["id"].startswith("ref-") for val in held for r in val)


def test_min_snr_weights_clip_high_snr_timesteps():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    weights = snr_weights(scheduler, torch.tensor([0, 500, 999]), gamma=5.0)
    assert weights[0] < 0.01  # t=0: SNR is huge, clipped to gamma
    assert weights[2] == pytest.approx(1.0)  # t=999: SNR < gamma, weight 1
    assert torch.all(weights <= 1.0)


def test_interrupted_training_resumes_to_the_same_adapter(dataset, family, tmp_path):
    straight = run_train(
        _project(tmp_path / "a", family), dataset, tmp_path / "a/out", {"iteration": "1"}
    )
    project = _project(tmp_path / "b", family, checkpoint_every=2)
    with pytest.raises(TrainingInterrupted):
        run_train(project, dataset, tmp_path / "b/out", {"iteration": "1"}, stop_after=3)
    assert not (tmp_path / "b/out").exists()
    checkpoints = list((tmp_path / "b").glob(".out.checkpoints/*/step-*.pt"))
    assert [p.name for p in checkpoints] == ["step-000002.pt"]
    resumed = run_train(project, dataset, tmp_path / "b/out", {"iteration": "1"})
    assert resumed.resumed_from == 2
    assert resumed.weights_sha256 == straight.weights_sha256
    assert resumed.kohya_sha256 == straight.kohya_sha256
    log = json.loads((tmp_path / "b/out/train_log.json").read_text())
    assert log == json.loads((tmp_path / "a/out/train_log.json").read_text())
    assert [v["step"] for v in log["validation_loss"]] == [0, 3, 6]
    assert not list((tmp_path / "b").glob(".out.checkpoints/*/step-*.pt"))  # cleaned up


WIDEST_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
                  "ff.net.2"]  # fmt: skip


@pytest.mark.parametrize("targets", [None, WIDEST_TARGETS], ids=["attention", "widest"])
def test_both_files_reproduce_the_trained_unet_and_text_encoder(dataset, family, tmp_path, targets):
    """diffusers and kohya files, loaded by diffusers, render what the trained models did
    (with the widest targets too: every module must load, not only the attention ones).
    For SDXL the kohya file carries the original-UNet names, which diffusers maps back
    through the UNet config: this is the check that the names are right."""
    from safetensors import safe_open

    extra = {"target_modules": targets} if targets else {}
    project = _project(
        tmp_path, family, train_text_encoder=True, rank=4, alpha=8, learning_rate=1e-2, **extra
    )
    tp, pipe = project.params.train, _pipe(project)
    ref = project.model_ref(project.params.base_model.path)
    accelerator = make_accelerator(tp, torch.device("cpu"))
    models = build_models(ref, None, tp, accelerator)
    identity = ModelIdentity(ref)
    frozen = models.family.caches_frozen_text  # FLUX: T5 stays cached, CLIP is trained
    data = encode_rows(pipe, Path(dataset.path), read_rows(Path(dataset.path)), 64, identity,
                       None, with_text_embeddings=frozen)  # fmt: skip
    train_lora(accelerator, models, data, tp)
    save_adapter(accelerator, models, tmp_path, tp, {"test": "1"})
    with safe_open(str(tmp_path / WEIGHTS_NAME), "pt") as handle:
        keys = list(handle.keys())
    assert all(".lora_A." in k or ".lora_B." in k for k in keys), "one key format only"
    component = models.family.denoiser[0]  # 'unet', or FLUX's 'transformer'
    lora_modules = {k.rsplit(".lora_", 1)[0] for k in keys if k.startswith(f"{component}.")}
    trained_modules = {
        name for name, module in models.denoiser.named_modules() if hasattr(module, "lora_A")
    }
    assert len(lora_modules) == len(trained_modules) > 0
    _every_tool_loads_the_kohya_file(tmp_path, Path(ref), family)
    models.denoiser.eval()
    assert set(models.text_encoders) == set(models.family.trained_text_encoders())
    trained = type(pipe)(**{**pipe.components, component: models.denoiser, **models.text_encoders})
    trained.set_progress_bar_config(disable=True)
    job = plan_jobs(project, 1)[0]
    gen = project.params.generate

    def image(p) -> np.ndarray:
        with torch.no_grad():
            return np.asarray(render(p, [job], gen)[0], dtype=np.int16)

    expected, base = image(trained), image(pipe)
    assert np.abs(expected - base).max() > 5, "training must change the output"
    with lora_applied(pipe, tmp_path):
        assert np.abs(image(pipe) - expected).max() <= 1
    if family != "flux":  # diffusers' kohya-FLUX reader assumes FLUX.1's widths; the fused
        # file is checked against the unfused one in test_flux.py instead
        with lora_applied(pipe, tmp_path, weight_name=KOHYA_WEIGHTS_NAME):
            assert np.abs(image(pipe) - expected).max() <= 1
    # Unloaded: the base again (peft leaves empty wrappers behind; on SDXL their float
    # order can move a pixel by one level, the tolerance of the comparisons above).
    assert np.abs(image(pipe) - base).max() <= 1


def _every_tool_loads_the_kohya_file(folder: Path, base: Path, family: str) -> None:
    from charloop.models.consumers.base_modules import from_pipeline_folder
    from charloop.models.consumers.check import check_adapter
    from charloop.models.consumers.reader import read_adapter_file

    layout = from_pipeline_folder(base)
    for name in (KOHYA_WEIGHTS_NAME, WEIGHTS_NAME):
        verdicts = check_adapter(read_adapter_file(folder / name), layout)
        loads = {v.consumer: v.loads for v in verdicts if v.consumer != "InvokeAI"}
        if name == KOHYA_WEIGHTS_NAME and family == "flux":  # diffusers' reader: FLUX.1 widths
            loads.pop("diffusers")
        if name == KOHYA_WEIGHTS_NAME:  # InvokeAI: tiny widths are no known base
            assert all(loads.values()), verdicts
        else:
            assert loads["diffusers"], verdicts


def test_kohya_names_for_an_sd15_shaped_unet():
    """192 attention/projection modules of a real SD1.5 UNet, in kohya's naming."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
               "ff.net.2")  # fmt: skip
    modules = [n for n, _ in unet.named_modules() if n.endswith(targets) and "attentions" in n]
    assert len(modules) == 192
    state = {f"{m}.lora_{p}.weight": torch.zeros(1) for m in modules for p in "AB"}
    te_state = {"encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(1)}
    keys = to_kohya(state, {"text_encoder": te_state}, alpha=8.0)
    unet_keys = [k for k in keys if k.startswith("lora_unet_")]
    assert len(unet_keys) == 192 * 3
    first = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert f"{first}.lora_down.weight" in keys
    assert "lora_unet_mid_block_attentions_0_proj_in.alpha" in keys
    assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2.lora_up.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in keys
    assert keys["lora_unet_mid_block_attentions_0_proj_in.alpha"].item() == 8.0


def test_kohya_names_for_an_sdxl_shaped_unet():
    """SDXL 1.0's 722 UNet modules (sd-scripts' count) named after the original UNet:
    attention only in input blocks 4, 5, 7, 8, the middle block and output blocks 0-5."""
    from charloop.families import get_family
    from charloop.models.consumers.base_modules import SDXL_UNET, sdxl_reference

    base = sdxl_reference()
    targets = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
               "ff.net.2")  # fmt: skip
    modules = [p for p in base.unet if p.endswith(targets) and "attentions" in p]
    assert len(modules) == 722
    state = {f"{m}.lora_{p}.weight": torch.zeros(1) for m in modules for p in "AB"}
    te2 = {"encoder.layers.31.mlp.fc2.lora_A.weight": torch.zeros(1)}
    keys = to_kohya(state, {"text_encoder_2": te2}, 4.0, get_family("sdxl"), SDXL_UNET)
    blocks = {k.split("_transformer_blocks")[0].split("_proj_")[0] for k in keys if "unet" in k}
    expected = {f"lora_unet_input_blocks_{i}_1" for i in (4, 5, 7, 8)}
    expected |= {f"lora_unet_output_blocks_{i}_1" for i in range(6)} | {"lora_unet_middle_block_1"}
    assert blocks == expected
    assert "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_2.lora_up.weight" in keys
    assert "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k.alpha" in keys
    assert "lora_te2_text_model_encoder_layers_31_mlp_fc2.lora_down.weight" in keys


def test_gradient_checkpointing_and_accumulation_train(dataset, family, tmp_path):
    plain = run_train(
        _project(tmp_path / "p", family), dataset, tmp_path / "p/out", {"iteration": "1"}
    )
    run_train(
        _project(tmp_path / "c", family, gradient_checkpointing=True),
        dataset,
        tmp_path / "c/out",
        {"iteration": "1"},
    )
    a = json.loads((tmp_path / "p/out/train_log.json").read_text())["loss"]
    b = json.loads((tmp_path / "c/out/train_log.json").read_text())["loss"]
    assert np.allclose(a, b, atol=1e-5)  # recomputing activations changes nothing
    accumulated = run_train(
        _project(tmp_path / "g", family, gradient_accumulation_steps=2, lr_scheduler="cosine"),
        dataset,
        tmp_path / "g/out",
        {"iteration": "1"},
    )
    log = json.loads((tmp_path / "g/out/train_log.json").read_text())
    assert len(log["loss"]) == 6 and log["learning_rate"][-1] == pytest.approx(0.0)
    assert accumulated.weights_sha256 != plain.weights_sha256


def test_xformers_needs_cuda(dataset, family, tmp_path):
    if family != "sd15":
        pytest.skip("family-independent: checked once")
    with pytest.raises(ValueError, match="xformers"):
        run_train(_project(tmp_path, attention="xformers"), dataset, tmp_path / "o", {})
    assert (tmp_path / "o").exists() is False
    assert WEIGHTS_NAME == "pytorch_lora_weights.safetensors"


def test_training_runs_under_accelerate_launch_with_two_processes(dataset, family, tmp_path):
    """`accelerate launch` (torchrun underneath, gloo on CPU) runs the same stage command
    (on SDXL: its two text encoders' caches and size conditioning across ranks)."""
    import os
    import subprocess
    import sys

    project = _project(tmp_path, family)
    command = [
        *(str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu"),
        *("--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"),
        *("--dynamo_backend", "no", "-m", "charloop_cli.main", "stage", "train"),
        *(dataset.path, str(tmp_path / "out"), "-p", str(project.params_file)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if line.startswith("train: ")]
    assert len(reports) == 2, done.stdout  # both ranks finished, with one shared result
    assert len({line.split()[2] for line in reports}) == 1
    summary = json.loads((tmp_path / "out/_stage.json").read_text())["summary"]
    assert summary["processes"] == 2 and summary["steps"] == 6
    log = json.loads((tmp_path / "out/train_log.json").read_text())
    assert all(np.isfinite(log["loss"]))
