"""The consumer checker: each tool's loading rules applied to LoRA files of known shape."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from charloop.models.consumers.base_modules import BaseModules, sd15_reference, sdxl_reference
from charloop.models.consumers.check import check_adapter
from charloop.models.consumers.reader import UnreadableAdapter, read_adapter_file
from charloop.stages.train.kohya import to_kohya
from charloop_cli.main import main

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@pytest.fixture(scope="module")
def sd15() -> BaseModules:
    return sd15_reference()


def _peft_states(base: BaseModules) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rank-1 LoRA states (peft keys) on every SD1.5 module kohya's default set targets."""

    def lora(
        table: dict[str, tuple[int, ...]], targets: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        state = {}
        for path, (out_dim, in_dim, *_) in table.items():
            if path.endswith(targets) and ("attentions" in path or "encoder." in path):
                state[f"{path}.lora_A.weight"] = torch.zeros(1, in_dim)
                state[f"{path}.lora_B.weight"] = torch.zeros(out_dim, 1)
        return state

    return lora(base.unet, TARGETS), lora(base.text_encoder, TE_TARGETS)


def _verdicts(path: Path, base: BaseModules) -> dict[str, tuple[bool, str]]:
    return {v.consumer: (v.loads, v.detail) for v in check_adapter(read_adapter_file(path), base)}


def test_an_sd15_kohya_file_loads_everywhere_and_invokeai_calls_it_sd1(sd15, tmp_path):
    unet, te = _peft_states(sd15)
    assert len(unet) == 192 * 2 and len(te) == 72 * 2
    path = tmp_path / "kira.safetensors"
    save_file(to_kohya(unet, {"text_encoder": te}, alpha=8.0), str(path))
    verdicts = _verdicts(path, sd15)
    assert all(ok for ok, _ in verdicts.values()), verdicts
    assert verdicts["InvokeAI"][1].startswith("base sd-1; 264/264 modules")


def test_a_peft_file_loads_in_diffusers_only(sd15, tmp_path):
    unet, te = _peft_states(sd15)
    state = {f"unet.{k}": v for k, v in unet.items()}
    state |= {f"text_encoder.text_model.{k}": v for k, v in te.items()}
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(state, str(path))
    verdicts = _verdicts(path, sd15)
    assert verdicts["diffusers"][0]
    assert not verdicts["kohya sd-scripts / A1111"][0]
    comfy_ok, comfy = verdicts["ComfyUI"]
    # attention projections are unmapped; proj_in/out, ff and the text encoder load
    assert not comfy_ok and comfy.startswith(
        "136/264 modules; lora key not loaded: unet."
    )  # 16 blocks x 8
    assert verdicts["Forge"] == (False, "LoRA version mismatch: not applied at all")
    assert verdicts["InvokeAI"] == (False, "unrecognized token vector length None: not importable")


def test_mixed_key_formats_and_foreign_bases_are_caught(sd15, tmp_path):
    unet, _ = _peft_states(sd15)
    kohya = to_kohya(dict(list(unet.items())[:8]), None, alpha=1.0)
    mixed = {**kohya, **{f"unet.{k}": v for k, v in list(unet.items())[8:16]}}
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    ok, detail = _verdicts(tmp_path / "mixed.safetensors", sd15)["diffusers"]
    assert not ok and "mixed" in detail
    sdxl_like = {  # cross-attention 2048 wide: what an SDXL LoRA's attn2.to_k reads
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
            torch.zeros(1, 2048)
        ),
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (
            torch.zeros(640, 1)
        ),
    }
    save_file(sdxl_like, str(tmp_path / "sdxl.safetensors"))
    verdicts = _verdicts(tmp_path / "sdxl.safetensors", sd15)
    assert verdicts["InvokeAI"] == (False, "classified as sdxl, expected sd-1")
    assert not verdicts["kohya sd-scripts / A1111"][0]
    assert "do not fit the base weight" in verdicts["kohya sd-scripts / A1111"][1]


@pytest.fixture(scope="module")
def sdxl() -> BaseModules:
    return sdxl_reference()


def test_an_sdxl_kohya_file_loads_everywhere_and_invokeai_calls_it_sdxl(sdxl, tmp_path, capsys):
    """sd-scripts' SDXL module set (722 UNet, 72 + 192 text-encoder modules) named after
    the original UNet with lora_te1_/lora_te2_: every tool maps every key."""
    from charloop.families import get_family

    unet, te1 = _peft_states(BaseModules("sdxl", sdxl.unet, {"text_encoder": sdxl.text_encoder}))
    te2 = {
        f"{path}.lora_{p}.weight": torch.zeros(*((1, shape[1]) if p == "A" else (shape[0], 1)))
        for path, shape in sdxl.table("text_encoder_2").items()
        if path.endswith(TE_TARGETS) and "encoder." in path
        for p in "AB"
    }
    assert (len(unet), len(te1), len(te2)) == (722 * 2, 72 * 2, 192 * 2)
    texts = {"text_encoder": te1, "text_encoder_2": te2}
    path = tmp_path / "kira-sdxl.safetensors"
    save_file(to_kohya(unet, texts, 8.0, get_family("sdxl"), sdxl.unet_config), str(path))
    verdicts = _verdicts(path, sdxl)
    assert all(ok for ok, _ in verdicts.values()), verdicts
    assert verdicts["InvokeAI"][1].startswith("base sdxl; 986/986 modules")
    assert _verdicts(path, sd15_reference())["InvokeAI"] == (
        False, "classified as sdxl, expected sd-1",
    )  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(path), "--base", "sdxl"])
    assert stopped.value.code == 0, capsys.readouterr().out
    diffusers_file = {f"unet.{k}": v for k, v in unet.items()}
    diffusers_file |= {f"text_encoder_2.text_model.{k}": v for k, v in te2.items()}
    save_file(diffusers_file, str(tmp_path / "pytorch_lora_weights.safetensors"))
    verdicts = _verdicts(tmp_path / "pytorch_lora_weights.safetensors", sdxl)
    assert verdicts["diffusers"][0], verdicts["diffusers"]


def test_check_adapter_cli_exits_3_for_an_adapter_of_another_base(tmp_path, capsys):
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{name}.lora_down.weight": torch.zeros(1, 2048),
             f"{name}.lora_up.weight": torch.zeros(640, 1)}  # fmt: skip
    save_file(state, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path / "sdxl.safetensors"), "--base", "sd15"])
    out = capsys.readouterr().out
    assert stopped.value.code == 3 and "classified as sdxl, expected sd-1" in out
    # without --base the family comes from the file: its 2048-wide cross-attention input
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path / "sdxl.safetensors"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["files"][0]["base"] == "sdxl"
    assert report["files"][0]["base_from"] == "key layout"


def test_unreadable_files_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.write_text, (marker, "pwned"))

    cases = {
        "pickle.safetensors": pickle.dumps(Payload()),
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......",
        "short.safetensors": b"\x01",
    }
    good = tmp_path / "good.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(good))
    cases["truncated.safetensors"] = good.read_bytes()[:-10]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableAdapter):
            read_adapter_file(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pickle.pt", "pickle (refused"),
        ("truncated.safetensors", "truncated"),
        ("missing.safetensors", "does not exist"),
    ],
)
def test_check_adapter_cli_gives_a_verdict_and_exit_code(tmp_path, capsys, name, message):
    good = tmp_path / "good.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(good))
    if name == "pickle.pt":
        torch.save({"a": 1}, tmp_path / name, _use_new_zipfile_serialization=False)
    elif name == "truncated.safetensors":
        (tmp_path / name).write_bytes(good.read_bytes()[:-5])
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path / name)])
    text = capsys.readouterr().err
    assert stopped.value.code == 2 and message in text and "Traceback" not in text
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(good), "--base", str(tmp_path)])
    assert stopped.value.code == 2


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"ss_base_model_version": "sdxl_base_v1-0"}, ("sdxl", "ss_base_model_version")),
        ({"ss_base_model_version": "sd_v1"}, ("sd15", "ss_base_model_version")),
        ({"modelspec.architecture": "flux-1-dev/lora"}, ("flux", "modelspec.architecture")),
        ({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"},
         ("sdxl", "modelspec.architecture")),
        ({"charloop.base_model_family": "flux"}, ("flux", "charloop.base_model_family")),
        ({}, None),
    ],
)  # fmt: skip
def test_the_family_is_read_from_the_header(metadata, expected):
    from charloop.models.consumers.family_of_file import family_from_header

    assert family_from_header(metadata) == expected


def test_check_adapter_reads_the_family_and_checks_a_whole_folder(tmp_path, capsys):
    """An adapter folder as charloop writes it: both files checked, the family taken from
    each header (no --base), one JSON document for CI."""
    block = "lora_unet_double_blocks_0_img_attn_qkv"
    kohya = {f"{block}.lora_down.weight": torch.zeros(1, 3072),
             f"{block}.lora_up.weight": torch.zeros(9216, 1)}  # fmt: skip
    module = "transformer.transformer_blocks.0.attn.to_q"
    peft = {f"{module}.lora_A.weight": torch.zeros(1, 3072),
            f"{module}.lora_B.weight": torch.zeros(3072, 1)}  # fmt: skip
    header = {"ss_base_model_version": "flux1", "modelspec.architecture": "flux-1-dev/lora"}
    save_file(kohya, str(tmp_path / "lora_kohya.safetensors"), metadata=header)
    save_file(peft, str(tmp_path / "pytorch_lora_weights.safetensors"), metadata=header)
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert [Path(f["file"]).name for f in report["files"]] == [
        "lora_kohya.safetensors", "pytorch_lora_weights.safetensors",
    ]  # fmt: skip
    assert {(f["base"], f["base_from"]) for f in report["files"]} == {
        ("flux", "ss_base_model_version")
    }
    assert stopped.value.code == (0 if report["loads"] else 3)
    assert {c["consumer"] for c in report["files"][0]["consumers"]} >= {"diffusers", "ComfyUI"}
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path / "empty-dir-that-does-not-exist")])
    assert stopped.value.code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path / "empty")])
    assert stopped.value.code == 2 and "no .safetensors" in capsys.readouterr().err


def test_a_file_naming_no_family_asks_for_base(tmp_path, capsys):
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 4)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "cannot tell the base family" in err and "--base" in err


def test_check_adapter_on_100k_keys_stays_under_10_s(tmp_path, capsys):
    import time

    state = {f"lora_unet_m{i}.lora_down.weight": torch.zeros(1, 1) for i in range(50_000)}
    state |= {f"lora_unet_m{i}.lora_up.weight": torch.zeros(1, 1) for i in range(50_000)}
    path = tmp_path / "huge.safetensors"
    save_file(state, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    from charloop.models.consumers.base_modules import reference

    reference("sdxl")  # built once per process (diffusers import, meta model): not the keys
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stopped:
        main(["check-adapter", str(path), "--json"])
    elapsed = time.perf_counter() - started
    report = json.loads(capsys.readouterr().out)
    assert stopped.value.code == 3 and not report["loads"]  # none of those modules exist
    assert elapsed < 10.0, elapsed
