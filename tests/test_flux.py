"""FLUX: packed latents, the flow-matching objective, T5 kept out of training, and the
kohya file's q/k/v fusion (exact, and rendering what the unfused LoRA renders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from charloop.families import get_family
from charloop.families.flux import image_ids, pack, unpack
from charloop.families.flux_names import fused_parts, kohya_flux
from charloop.families.objectives import FlowMatchingObjective, shift_sigmas
from charloop.params.project import load_project
from charloop.params.train import TrainParams
from charloop.stages.train.adapter import AdapterState, write_adapter
from charloop.stages.train.kohya import KOHYA_WEIGHTS_NAME
from charloop.stages.train.loop import lora_config
from charloop.stages.train.models import build_models, make_accelerator
from tests.conftest import MODELS, base_model, tiny_params, write_params

FLUX = str(MODELS / "tiny-flux")


def test_packing_round_trips_and_positions_follow_the_grid():
    latents = torch.randn(2, 16, 4, 6)
    tokens = pack(latents)
    assert tokens.shape == (2, 6, 64)
    assert torch.equal(unpack(tokens, 4, 6), latents)
    # token 1 is the patch at rows 0-1, columns 2-3: channel-major, then the 2x2 positions
    assert torch.equal(tokens[0, 1], latents[0, :, 0:2, 2:4].reshape(-1))
    ids = image_ids(4, 6, torch.device("cpu"), torch.float32)
    assert ids.tolist()[:4] == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0]]


def test_flow_matching_draws_shifted_logit_normal_sigmas_and_targets_the_velocity():
    generator = torch.Generator().manual_seed(0)
    plain = FlowMatchingObjective(predict=None, shift=1.0).sample_timesteps(4000, generator)
    shifted = FlowMatchingObjective(predict=None, shift=3.0).sample_timesteps(4000, generator)
    assert 450 < plain.float().mean() < 550  # logit-normal(0, 1) is centred on sigma 0.5
    assert shifted.float().mean() > plain.float().mean() + 100  # the shift favours noise
    assert shift_sigmas(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist() == [0.0, 0.75, 1.0]

    def oracle(denoiser, noisy, sigmas, cond):  # knows the data: predicts e - x exactly
        return cond["noise"] - cond["latents"]

    latents, noise = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    objective = FlowMatchingObjective(predict=oracle)
    cond = {"noise": noise, "latents": latents}
    loss = objective.loss(None, latents, cond, noise, torch.tensor([100, 500, 900]), None)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def _random_peft(targets: list[str], seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    from peft.utils import get_peft_model_state_dict

    transformer = get_family("flux").load_denoiser(FLUX, None, torch.float32)
    transformer.add_adapter(lora_config(2, 4.0, targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return get_peft_model_state_dict(transformer), dict(transformer.config)


def test_fused_qkv_deltas_equal_the_separate_ones():
    """Each fused module's up @ down, at its own alpha / rank, equals every part's B @ A at
    the trained alpha / rank; untrained parts (the single blocks' MLP input) stay zero."""
    state, config = _random_peft(list(get_family("flux").default_targets), seed=1)
    fused = kohya_flux(state, config, alpha=4.0)
    groups = fused_parts(config)
    assert set(groups) <= set(fused) and len(groups) == 2 * 2 + 2  # 2 double, 2 single
    for bfl, parts in groups.items():
        down, up, alpha = fused[bfl]
        delta = (up @ down) * (alpha / down.shape[0])
        row = 0
        for name, rows in parts:
            expected = torch.zeros(rows, down.shape[1])
            if f"{name}.lora_A.weight" in state:
                a, b = state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"]
                expected = (b @ a) * (4.0 / a.shape[0])
            assert torch.allclose(delta[row : row + rows], expected, atol=1e-6), (bfl, name)
            row += rows


def test_the_fused_kohya_file_renders_what_the_unfused_file_renders(tmp_path):
    """Through diffusers' own kohya-FLUX reader (which splits the fused qkv back), on the
    text stream of the double blocks: the part of the layout its reader sizes from the
    file (it sizes a single block's linear1 by FLUX.1's fixed widths)."""
    from charloop.models.pipeline import load_pipeline, lora_applied
    from charloop.scenes.render import ImageJob, render

    targets = ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]
    state, config = _random_peft(targets, seed=2)
    lora = AdapterState(state, {"r": 2, "lora_alpha": 4.0, "target_modules": targets},
                        family="flux", denoiser_model_config=config)  # fmt: skip
    write_adapter(tmp_path, lora, 2, 4.0, {"character": "kira"})
    project = load_project(write_params(tmp_path / "p", tiny_params(base_model=base_model("flux"))))
    pipe = load_pipeline(FLUX, project.params.base_model)
    gen = project.params.generate
    job = ImageJob("j", "zxq kira, watercolor", "", 5, {})

    def image() -> np.ndarray:
        return np.asarray(render(pipe, [job], gen)[0], dtype=np.int16)

    base = image()
    with lora_applied(pipe, tmp_path):
        unfused = image()
    with lora_applied(pipe, tmp_path, weight_name=KOHYA_WEIGHTS_NAME):
        fused = image()
    assert np.abs(unfused - base).max() > 5, "the LoRA must change the image"
    assert np.abs(fused - unfused).max() <= 1


def test_t5_is_never_loaded_for_training(tmp_path, monkeypatch):
    """With train_text_encoder, FLUX trains a LoRA on CLIP alone; T5's embeddings come
    from the cache, and its weights are not loaded."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("T5 loaded for training")

    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", refuse)
    tp = TrainParams(train_text_encoder=True, max_train_steps=1)
    accelerator = make_accelerator(tp, torch.device("cpu"))
    models = build_models(FLUX, None, tp, accelerator)
    assert list(models.text_encoders) == ["text_encoder"]
    assert type(models.denoiser).__name__ == "FluxTransformer2DModel"
    assert get_family("flux").caches_frozen_text
    assert Path(FLUX, "text_encoder_2").is_dir()


def test_flux_training_prefers_cublaslt_on_cuda_only(monkeypatch):
    """The FLUX step's bf16 attention backward failed in cublasGemmEx on torch 2.11 + CUDA 13
    (docs/memory.md); the family routes matrix products through cuBLASLt on CUDA, and
    leaves every other device (and every other family) alone."""
    calls: list[str] = []
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", calls.append)
    get_family("flux").prepare_training_device(torch.device("cpu"))
    get_family("sdxl").prepare_training_device(torch.device("cuda"))
    assert calls == []
    get_family("flux").prepare_training_device(torch.device("cuda"))
    assert calls == ["cublaslt"]
