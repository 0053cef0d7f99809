"""Casts: params, solo and joint scenes, identity blend, captions, per-character LoRAs,
cast metrics, and the whole loop with registry and promotion per cast."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from charloop.params.filter import IdentityCheck
from charloop.params.project import load_project
from charloop.params.schema import Params
from charloop.scenes.prompts import scene_text
from charloop.stages.filter.cast_identity import assign_strips, cast_identity, strips
from charloop.stages.filter.discriminators import Decision
from charloop.stages.generate.control import ControlMap, side_by_side
from charloop.stages.generate.stage import plan_jobs
from tests.conftest import FAMILY_IDS, FAMILY_MODELS, MODELS, base_model, tiny_params, write_params

KIRA = {"name": "kira", "trigger": "zxq kira", "traits": ["teal hair"], "references": "refs/kira"}
MILO = {"name": "milo", "trigger": "vyk milo", "traits": ["red cap"], "references": "refs/milo"}


def cast_params(family: str = "sd15", **cast: Any) -> dict[str, Any]:
    data = tiny_params(base_model=base_model(family))
    del data["character"]
    data["cast"] = {"name": "crew", "members": [KIRA, MILO], **cast}
    data["generate"] = {"images_per_prompt": 1, "batch_size": 8, "num_inference_steps": 2}
    data["filter"]["discriminators"] = [{"type": "quality"}, {"type": "identity"}]
    data["filter"]["min_kept"] = 1
    data["loop"] = {"max_iterations": 1}
    return data


def _write_refs(root: Path) -> None:
    for name, colour in (("kira", (200, 40, 40)), ("milo", (40, 40, 200))):
        folder = root / "refs" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            shade = tuple(max(0, c - 20 * i) for c in colour)
            Image.new("RGB", (64, 64), shade).save(folder / f"{i}.png")


def test_cast_params_validate_and_explain_mistakes():
    params = Params.model_validate(cast_params())
    assert params.subject == "crew" and [m.name for m in params.members] == ["kira", "milo"]
    assert params.model_name == "crew-lora"
    assert params.trigger_label == "kira=zxq kira; milo=vyk milo"
    assert params.cast is not None and params.cast.pair_list() == [("kira", "milo")]
    both = cast_params()
    both["character"] = KIRA
    with pytest.raises(ValidationError, match="exactly one of 'character'"):
        Params.model_validate(both)
    with pytest.raises(ValidationError, match=r"trigger \['zxq kira'\] repeated"):
        Params.model_validate(cast_params(members=[KIRA, {**MILO, "trigger": "zxq kira"}]))
    with pytest.raises(ValidationError, match="is part of"):
        Params.model_validate(cast_params(members=[KIRA, {**MILO, "trigger": "zxq kira two"}]))
    with pytest.raises(ValidationError, match=r"cast\.joint\.pairs"):
        Params.model_validate(cast_params(joint={"pairs": [["kira", "ana"]]}))
    with pytest.raises(ValidationError, match="unknown members"):
        Params.model_validate(cast_params(adapter_weights={"ana": 0.5}))


def test_plan_has_solo_scenes_per_member_and_laid_out_joint_scenes(tmp_path):
    project = load_project(
        write_params(tmp_path, cast_params(joint={"max_prompts": 2, "images_per_prompt": 1}))
    )
    jobs = plan_jobs(project, 1)
    scenes = [job.characters for job in jobs]
    assert scenes.count(("kira",)) == 4 and scenes.count(("milo",)) == 4  # 2x2 contexts
    assert scenes.count(("kira", "milo")) == 2
    joint = next(job for job in jobs if len(job.characters) == 2)
    assert joint.prompt.startswith("zxq kira on the left and vyk milo on the right")
    assert "teal hair" not in joint.prompt and "red cap" not in joint.prompt
    solo = next(job for job in jobs if job.characters == ("milo",))
    assert solo.prompt.startswith("vyk milo, red cap") and "zxq" not in solo.prompt
    assert len({job.seed for job in jobs}) == len(jobs) and len({j.id for j in jobs}) == len(jobs)
    row = {"characters": ["kira", "milo"], "context": joint.context}
    assert scene_text(project.params, row).startswith("a character on the left and a")


def test_side_by_side_layout_puts_each_control_map_in_its_half():
    red = ControlMap("red.png", "r", Image.new("RGB", (64, 64), (255, 0, 0)))
    blue = ControlMap("blue.png", "b", Image.new("RGB", (64, 64), (0, 0, 255)))
    layout = side_by_side(red, blue, 64)
    pixels = np.asarray(layout.image)
    assert layout.source == "red.png|blue.png" and pixels.shape == (64, 64, 3)
    assert (pixels[:, :32] == [255, 0, 0]).all() and (pixels[:, 32:] == [0, 0, 255]).all()


def _colour_embed(images: list[Image.Image]) -> np.ndarray:
    """A real, transparent embedder for the blend tests: the unit mean colour."""
    rows = np.stack([np.asarray(i, dtype=np.float64).reshape(-1, 3).mean(0) for i in images])
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _halves(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (64, 64), left)
    image.paste(Image.new("RGB", (32, 64), right), (32, 0))
    return image


def test_joint_scenes_where_identities_blend_are_rejected_with_the_reason():
    red, blue = (220, 30, 30), (30, 30, 220)
    images = {
        "solo-k": Image.new("RGB", (64, 64), red),
        "solo-m": Image.new("RGB", (64, 64), blue),
        "good": _halves(red, blue),
        "swapped": _halves(blue, red),
        "blended": _halves(red, red),
    }
    present = {"solo-k": ["kira"], "solo-m": ["milo"]} | {
        k: ["kira", "milo"] for k in ("good", "swapped", "blended")
    }
    refs = {"kira": _colour_embed([images["solo-k"]]), "milo": _colour_embed([images["solo-m"]])}

    def judge(laid_out: bool) -> dict[str, Decision]:
        decisions = [Decision(id=i, file=f"{i}.png") for i in images]
        emb = _colour_embed(list(images.values()))
        rule = IdentityCheck(max_outlier_z=None)
        facts = cast_identity(decisions, present, images, emb, refs, rule, _colour_embed, laid_out)
        assert facts["members"]["kira"]["anchor"] == "references"  # type: ignore[index]
        return {d.id: d for d in decisions}

    laid_out = judge(laid_out=True)
    assert laid_out["good"].kept and laid_out["solo-k"].kept
    assert laid_out["good"].scores["identity:kira"] > 0.99
    assert any("left character (kira) resembles milo" in r for r in laid_out["swapped"].reasons)
    assert any("right character (milo) resembles kira" in r for r in laid_out["blended"].reasons)
    free = judge(laid_out=False)  # no layout: strips are matched to members first
    assert free["swapped"].kept and not free["blended"].kept
    assert assign_strips(np.array([[0.1, 0.9], [0.8, 0.2]]), laid_out=False) == [1, 0]
    assert [s.size for s in strips(images["good"], 2)] == [(32, 64), (32, 64)]


def _random_lora(seed: int, rank: int, family: str = "sd15") -> Any:
    from peft.utils import get_peft_model_state_dict

    from charloop.families import get_family
    from charloop.stages.train.adapter import AdapterState
    from charloop.stages.train.loop import lora_config

    unet = get_family(family).load_denoiser(
        str(MODELS / FAMILY_MODELS[family]), None, torch.float32
    )
    unet.add_adapter(lora_config(rank, rank * 2, list(get_family(family).default_targets)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return AdapterState(
        get_peft_model_state_dict(unet),
        unet.peft_config["default"].to_dict(),
        family=family,
        denoiser_model_config=dict(unet.config),
    )


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_per_character_loras_combine_exactly_as_set_adapters(tmp_path, family):
    """The combined file renders what diffusers renders with both adapters and weights."""
    from charloop.models.pipeline import load_pipeline
    from charloop.stages.train.adapter import write_adapter
    from charloop.stages.train.cast import combine

    rank, alpha, weights = 2, 4.0, [1.0, 0.5]
    states = [_random_lora(1, rank, family), _random_lora(2, rank, family)]
    for name, state in zip("ab", states, strict=True):
        (tmp_path / name).mkdir()
        write_adapter(tmp_path / name, state, rank, alpha, {"member": name})
    merged = combine(states, [w * alpha / rank for w in weights])
    assert merged.denoiser_config["r"] == merged.denoiser_config["lora_alpha"] == 2 * rank
    (tmp_path / "ab").mkdir()
    write_adapter(tmp_path / "ab", merged, 2 * rank, 2 * rank, {})
    project = load_project(write_params(tmp_path / "p", tiny_params(base_model=base_model(family))))
    pipe = load_pipeline(
        project.model_ref(project.params.base_model.path), project.params.base_model
    )

    def render() -> np.ndarray:
        generator = torch.Generator().manual_seed(3)
        out = pipe("zxq kira", num_inference_steps=2, generator=generator, output_type="np",
                   height=64, width=64)  # fmt: skip
        return np.asarray(out.images)

    base = render()
    pipe.load_lora_weights(str(tmp_path / "a"), adapter_name="a")
    pipe.load_lora_weights(str(tmp_path / "b"), adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=weights)
    both = render()
    pipe.delete_adapters(["a", "b"])
    pipe.load_lora_weights(str(tmp_path / "ab"), adapter_name="ab")
    combined = render()
    pipe.delete_adapters("ab")
    assert np.abs(both - base).max() > 1e-3  # the LoRAs change the output...
    np.testing.assert_allclose(combined, both, atol=2e-4)  # ...and the combination is exact


@pytest.fixture(scope="module", params=FAMILY_IDS)
def crew(request, tmp_path_factory, prefect_harness):
    """A two-member cast through the whole loop, on each embedded family."""
    from flows.character_loop import character_loop

    root = tmp_path_factory.mktemp(f"crew-{request.param}")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    _write_refs(root)
    data = cast_params(request.param, lora="per_character", adapter_weights={"milo": 0.8})
    data["evaluate"]["seeds"] = [7, 8]
    params = write_params(root, data)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "crew"], cwd=root, check=True)
    rows = character_loop(params_file=str(params))
    return load_project(params), rows


def test_cast_loop_trains_per_character_loras_and_reports_bleed(crew):
    from charloop.stages.layout import IterationPaths

    project, rows = crew
    paths = IterationPaths.of(project.workdir, 1)
    for line in (paths.dataset / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        triggers = [project.params.member(n).trigger for n in row["characters"]]
        assert row["text"].split(", ")[: len(triggers)] == triggers
    toml = (paths.dataset / "dataset.toml").read_text()
    assert "keep_tokens = 1" in toml
    members = sorted(p.name for p in (paths.adapter / "members").iterdir())
    assert members == ["kira", "milo"]
    assert (paths.adapter / "members/kira/pytorch_lora_weights.safetensors").is_file()
    summary = json.loads((paths.adapter / "train_log.json").read_text())
    assert set(summary["members"]) == {"kira", "milo"}
    metrics = json.loads((paths.evaluation / "metrics.json").read_text())
    for key in (
        "bleed.kira.milo",
        "bleed.milo.kira",
        "base_bleed.kira.milo",
        "kira.joint_identity",
    ):
        assert -1.0 <= metrics[key] <= 1.0, key
    assert metrics["identity_consistency"] == pytest.approx(
        np.mean([metrics["kira.identity_consistency"], metrics["milo.identity_consistency"]])
    )
    assert 0.0 <= metrics["joint_blend_rate"] <= 1.0
    assert any(k.startswith("kira/") for k in metrics["per_context"])
    assert rows[0]["version"] == "1"


def test_cast_versions_are_registered_and_promoted_per_cast(crew):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from charloop_cli.main import app

    project, _ = crew
    client = MlflowClient(project.tracking_uri)
    version = client.get_model_version("crew-lora", "1")
    assert version.tags["trigger"] == "kira=zxq kira; milo=vyk milo"
    assert version.tags["character"] == "crew"
    result = CliRunner().invoke(
        app, ["promote", "crew-lora", "1", "--approver", "ana", "-p", str(project.params_file)]
    )
    assert result.exit_code == 0, result.output
    assert str(client.get_model_version_by_alias("crew-lora", "production").version) == "1"


def test_shipped_cast_example_validates_and_points_at_real_models():
    from tests.conftest import REPO

    project = load_project(REPO / "examples" / "cast.yaml")
    assert project.params.cast is not None and len(project.params.members) == 2
    assert Path(project.model_ref(project.params.base_model.path)).is_dir()
    assert Path(project.model_ref(project.params.filter.embedder.path)).is_dir()
