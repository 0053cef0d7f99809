"""Memory plans: the planner's arithmetic on the real configs, the params fields, the
preflight refusal, and training with quantized weights and an 8-bit optimizer on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from charloop.families import get_family
from charloop.models.memory_budget import (
    MemoryBudgetExceeded,
    check_memory,
    effective_train_params,
    fixed_settings,
    plan_report,
)
from charloop.models.memory_plan import LADDER, Plan, Workload, estimate
from charloop.models.memory_sizes import denoiser_size, reference_component_params
from charloop.params.project import ParamsError, load_project, params_hash
from charloop_cli.main import main
from tests.conftest import REPO, base_model, tiny_params, write_params

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None
CUDA = torch.device("cuda")  # planned for, never allocated on


def _work(family: str, resolution: int = 1024, rank: int = 16) -> Workload:
    size = denoiser_size(family)
    return Workload(size, resolution, 1, rank, get_family(family).default_targets)


def _gib(family: str, plan: Plan, resolution: int = 1024) -> float:
    return estimate(_work(family, resolution), plan).gib()


def test_reference_parameter_counts_match_the_published_models():
    assert denoiser_size("sd15").params == 859_520_964  # SD1.5 UNet: 859.5 M
    assert denoiser_size("sdxl").params == 2_567_463_684  # SDXL UNet: 2.567 B
    assert round(denoiser_size("flux").params / 1e9, 1) == 11.9  # FLUX.1 transformer
    assert round(reference_component_params("flux", "text_encoder_2") / 1e9, 2) == 4.76  # T5
    assert round(reference_component_params("sdxl", "text_encoder_2") / 1e6) == 695  # bigG


def test_flux_plans_at_1024_batch_1_rank_16():
    smallest = _gib("flux", Plan("nf4", "adamw8bit", True))
    assert smallest <= 9.5  # diffusers' QLoRA recipe: ~9 GB allocated (+ CUDA context here)
    assert _gib("flux", Plan("unquantized", "adamw", True)) > 24  # bf16 does not fit a 24 GB card
    assert _gib("flux", Plan("fp8", "adamw8bit", True)) <= 22
    assert _gib("flux", Plan("unquantized", "adamw", False)) > 40  # no checkpointing
    totals = [_gib("flux", plan) for plan in LADDER]
    assert totals == sorted(totals, reverse=True)  # the ladder only ever shrinks


def test_sdxl_and_sd15_plans():
    assert _gib("sdxl", LADDER[-1]) <= 8
    assert _gib("sdxl", LADDER[0]) > _gib("sdxl", LADDER[1]) > _gib("sdxl", LADDER[-1])
    assert _gib("sd15", LADDER[0], 512) < 4


def test_lora_and_optimizer_bytes_follow_rank_and_optimizer():
    work16, work32 = _work("flux"), _work("flux", rank=32)
    lora16 = estimate(work16, Plan()).lora
    assert estimate(work32, Plan()).lora == 2 * lora16  # rank doubles the LoRA
    assert estimate(work16, Plan()).optimizer == lora16  # AdamW: 8 bytes per parameter
    assert estimate(work16, Plan(optimizer="adamw8bit")).optimizer < lora16 / 3.9


def _params(tmp_path: Path, ckpt: bool | None = None, **memory: object):
    ref = "black-forest-labs/FLUX.1-dev"
    train = {"rank": 16, "batch_size": 1, "memory": memory}
    if ckpt is not None:
        train["gradient_checkpointing"] = ckpt
    data = tiny_params(base_model={"path": ref, "family": "flux"},
                       generate={"resolution": 1024}, train=train)  # fmt: skip
    return load_project(write_params(tmp_path, data)).params, ref


def test_a_plan_over_the_budget_names_the_settings_that_fit(tmp_path):
    params, ref = _params(tmp_path, budget_gb=16)
    with pytest.raises(MemoryBudgetExceeded) as info:
        check_memory(params, ref, get_family("flux"), CUDA)
    message = str(info.value)
    assert message.startswith("train.memory: the unquantized/adamw plan needs about")
    assert "train.memory.budget_gb allows 16.0 GiB" in message
    assert "train.memory.weights: fp8" in message and "would need 14." in message
    small, _ = _params(tmp_path / "b", weights="nf4", optimizer="adamw8bit", budget_gb=16)
    with pytest.raises(MemoryBudgetExceeded) as info:  # without checkpointing: 31 GiB
        check_memory(small, ref, get_family("flux"), CUDA)
    assert str(info.value).endswith("; train.gradient_checkpointing: true would need 9.3 GiB")
    fitting, _ = _params(tmp_path / "c", True, weights="nf4", optimizer="adamw8bit", budget_gb=16)
    assert check_memory(fitting, ref, get_family("flux"), CUDA).estimate.gib() < 16


def test_auto_picks_the_least_reduced_plan_that_fits_and_keeps_written_settings(tmp_path):
    params, ref = _params(tmp_path, auto=True, budget_gb=24)
    report = plan_report(params, ref, get_family("flux"), CUDA)
    assert report.chosen and report.estimate.plan == Plan("fp8", "adamw8bit", True)
    pinned, _ = _params(tmp_path / "b", auto=True, budget_gb=12, weights="nf4")
    assert fixed_settings(pinned.train) == {"weights"}
    chosen = plan_report(pinned, ref, get_family("flux"), CUDA).estimate.plan
    assert chosen.weights == "nf4" and chosen.optimizer == "adamw"  # adamw fits with nf4
    trained = effective_train_params(pinned.train, chosen)
    assert (trained.memory.weights, trained.gradient_checkpointing) == ("nf4", True)
    cpu, _ = _params(tmp_path / "c", auto=True)  # CPU, no budget: today's behaviour
    assert plan_report(cpu, ref, get_family("flux"), torch.device("cpu")).estimate.plan == Plan()


def test_memory_fields_are_validated_and_defaults_keep_the_lineage_hash(tmp_path):
    cases = [({"weights": "int3"}, "weights"), ({"budget_gb": 0}, "budget_gb"),
             ({"optimizer": "sgd"}, "optimizer"), ({"budget_gb": True}, "budget_gb")]  # fmt: skip
    for bad, field in cases:
        with pytest.raises(ParamsError) as info:
            load_project(write_params(tmp_path, tiny_params(train={"memory": bad})))
        assert any(p.startswith("train.memory") and field in p for p in info.value.problems)
    plain = load_project(write_params(tmp_path / "a", tiny_params())).params
    train = tiny_params()["train"]
    placed = tiny_params(train={**train, "memory": {"offload_encoders": False, "budget_gb": 12}})
    moved = load_project(write_params(tmp_path / "b", placed)).params
    assert params_hash(plain) == params_hash(moved)  # placement changes no result
    quantized = tiny_params(train={**train, "memory": {"weights": "nf4"}})
    assert params_hash(load_project(write_params(tmp_path / "c", quantized)).params) != (
        params_hash(plain)
    )


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier in-process ``--debug`` leaves CHARLOOP_DEBUG set (tracebacks re-raised)."""
    monkeypatch.delenv("CHARLOOP_DEBUG", raising=False)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    captured = capsys.readouterr()
    return int(stopped.value.code or 0), captured.out + captured.err


def test_validate_prints_the_plan_and_refuses_one_over_the_budget(tmp_path, capsys):
    ok = write_params(tmp_path / "ok", tiny_params())
    code, text = _cli(capsys, "validate", str(ok))
    assert code == 0 and "memory plan unquantized/adamw" in text and "no limit" in text
    data = tiny_params(train={"memory": {"budget_gb": 0.001}})
    code, text = _cli(capsys, "validate", str(write_params(tmp_path / "bad", data)))
    assert code == 2 and "train.memory: the unquantized/adamw plan needs about 0.0" in text
    assert "budget_gb allows 0.001 GiB; even the smallest plan does not fit" in text


def test_run_refuses_before_anything_is_written(tmp_path, capsys):
    data = tiny_params(train={"memory": {"budget_gb": 0.001}})
    params = write_params(tmp_path, data)
    code, text = _cli(capsys, "run", "-p", str(params))
    assert code == 2 and "train.memory" in text
    assert not load_project(params).character_dir.exists()


def _train(family: str, **memory: object) -> tuple[list[float], dict[str, torch.Tensor], float]:
    """A few steps on random latents; (losses, LoRA state, largest LoRA change)."""
    from accelerate import Accelerator
    from peft.utils import get_peft_model_state_dict

    from charloop.params.train import TrainParams
    from charloop.stages.train.data import EncodedDataset
    from charloop.stages.train.loop import train_lora
    from charloop.stages.train.models import build_models
    from tests.conftest import MODELS

    ref = str(MODELS / base_model(family)["path"].split("/")[-1])
    tp = TrainParams(max_train_steps=3, batch_size=2, learning_rate=1e-2, memory=memory)
    accelerator = Accelerator(cpu=True)
    models = build_models(ref, None, tp, accelerator)
    n, generator = 4, torch.Generator().manual_seed(0)
    if family == "flux":
        latents, text = (torch.randn(n, 16, 8, 8, generator=generator),
                         {"hidden": torch.randn(n, 7, 32, generator=generator),
                          "pooled": torch.randn(n, 32, generator=generator)})  # fmt: skip
    else:
        latents = torch.randn(n, 4, 8, 8, generator=generator)
        text = {"hidden": torch.randn(n, 77, 32, generator=generator)}
    data = EncodedDataset([str(i) for i in range(n)], latents, [torch.zeros(n, 77).long()], text)
    before = {k: v.clone() for k, v in get_peft_model_state_dict(models.denoiser).items()}
    log = train_lora(accelerator, models, data, tp)
    after = get_peft_model_state_dict(accelerator.unwrap_model(models.denoiser))
    moved = max(float((after[k] - before[k]).abs().max()) for k in before)
    return log.loss, after, moved


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (the lowmem extra)")
@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_nf4_weights_and_8bit_adamw_train_on_cpu(family):
    losses, state, moved = _train(family, weights="nf4", optimizer="adamw8bit")
    assert all(torch.isfinite(torch.tensor(losses))) and moved > 0
    _, plain, _ = _train(family)
    assert state.keys() == plain.keys()  # the exported LoRA has the same modules...
    assert {v.dtype for v in state.values()} == {torch.float32}  # ...in float32
    assert all(state[k].shape == plain[k].shape for k in plain)


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed (the lowmem extra)")
def test_fp8_weights_train_on_cpu():
    import bitsandbytes  # noqa: F401  (imported by diffusers anyway)

    losses, state, moved = _train("sd15", weights="fp8")
    assert all(torch.isfinite(torch.tensor(losses))) and moved > 0
    assert {v.dtype for v in state.values()} == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nf4_loads_through_diffusers_bitsandbytes_on_cuda():
    from charloop.families.quantize import is_prequantized

    model = get_family("sd15").load_denoiser(
        str(REPO / "models" / "tiny-sd15"), None, torch.bfloat16, "nf4", CUDA
    )
    assert is_prequantized(model)


def test_the_documented_estimate_table_is_the_planners():
    from charloop.models.memory_plan import reference_table

    assert reference_table() in (REPO / "docs" / "memory.md").read_text(encoding="utf-8")


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (the lowmem extra)")
def test_an_interrupted_nf4_adamw8bit_run_resumes_to_the_same_lora(tmp_path):
    from accelerate import Accelerator
    from peft.utils import get_peft_model_state_dict

    from charloop.params.train import TrainParams
    from charloop.stages.train.checkpoint import Checkpointer
    from charloop.stages.train.data import EncodedDataset
    from charloop.stages.train.loop import TrainingInterrupted, train_lora
    from charloop.stages.train.models import build_models

    memory = {"weights": "nf4", "optimizer": "adamw8bit"}
    tp = TrainParams(max_train_steps=4, batch_size=2, checkpoint_every=2, memory=memory)
    generator = torch.Generator().manual_seed(0)
    latents, hidden = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 77, 32)
    data = EncodedDataset(list("abcd"), latents, [torch.zeros(4, 77).long()], {"hidden": hidden})

    def run(folder: Path, stop: int | None = None) -> dict[str, torch.Tensor]:
        accelerator = Accelerator(cpu=True)
        models = build_models(str(REPO / "models" / "tiny-sd15"), None, tp, accelerator)
        train_lora(accelerator, models, data, tp, None, Checkpointer(folder, 2), stop)
        return get_peft_model_state_dict(accelerator.unwrap_model(models.denoiser))

    straight = run(tmp_path / "a")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "b", stop=2)
    resumed = run(tmp_path / "b")  # the 8-bit states come back from the checkpoint
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_trained_text_encoders_and_a_resident_pipeline_are_counted(tmp_path):
    def report(folder: str, memory: dict[str, object] | None = None, **train: object):
        memory = {"budget_gb": 24, **(memory or {})}  # a budget: no CUDA device asked
        data = tiny_params(base_model={"path": "stabilityai/sdxl", "family": "sdxl"},
                           train={"rank": 16, "memory": memory, **train})  # fmt: skip
        params = load_project(write_params(tmp_path / folder, data)).params
        return plan_report(params, "stabilityai/sdxl", get_family("sdxl"), CUDA).estimate

    plain, text = report("a"), report("b", train_text_encoder=True)
    clip_l, big_g = 123_060_480, reference_component_params("sdxl", "text_encoder_2")
    assert text.weights - plain.weights == 2 * (clip_l + big_g)  # bf16 copies, trained
    assert text.lora - plain.lora == 8 * 4 * 16 * 2 * (768 * 12 + 1280 * 32)  # q/k/v/out LoRA
    kept = report("c", memory={"offload_encoders": False})  # the base pipeline stays
    assert kept.weights > plain.weights + 2 * denoiser_size("sdxl").params
