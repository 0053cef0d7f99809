"""The params schema: the shipped file validates, bad input fails with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from charloop.params.project import ParamsError, load_project, params_hash
from charloop_cli.main import app
from tests.conftest import REPO, tiny_params, write_params


def test_shipped_params_file_validates():
    project = load_project(REPO / "params.yaml")
    assert project.params.character.trigger
    assert project.model_ref(project.params.base_model.path) == str(REPO / "models" / "world-sd15")
    assert Path(project.model_ref(project.params.base_model.path)).is_dir()


def test_tiny_example_validates_and_points_at_the_tiny_models():
    project = load_project(REPO / "examples" / "tiny.yaml")
    base = Path(project.model_ref(project.params.base_model.path))
    assert base == REPO / "models" / "tiny-sd15" and base.is_dir()
    assert project.character_dir == REPO / "runs" / "kira"
    default = load_project(REPO / "params.yaml")
    assert project.params.model_name != default.params.model_name  # never mixed in a registry


def test_defaults_fill_optional_sections(tmp_path):
    data = tiny_params()
    del data["train"], data["loop"]
    params = load_project(write_params(tmp_path, data)).params
    assert params.train.rank == 4
    assert params.model_name == "kira-lora"


def _problems(tmp_path: Path, data: dict) -> list[str]:
    with pytest.raises(ParamsError) as info:
        load_project(write_params(tmp_path, data))
    return info.value.problems


def test_unknown_field_names_path_and_allowed_fields(tmp_path):
    data = tiny_params(train={"rank": 4, "learnin_rate": 0.1})
    problems = _problems(tmp_path, data)
    assert len(problems) == 1
    assert problems[0].startswith("train.learnin_rate: unknown field")
    assert "learning_rate" in problems[0]


def test_unknown_field_inside_discriminated_union(tmp_path):
    data = tiny_params()
    data["evaluate"]["embedder"]["model"] = "x"
    problems = _problems(tmp_path, data)
    assert any(
        p.startswith("evaluate.embedder.clip.model: unknown field") and "path" in p
        for p in problems
    )


def test_every_error_is_reported_at_once(tmp_path):
    data = tiny_params(base_model={"path": "m", "family": "pixart"}, loop={"max_iterations": 0})
    del data["character"]["trigger"]
    problems = _problems(tmp_path, data)
    joined = "\n".join(problems)
    assert "character.trigger: required field is missing" in joined
    assert "base_model.family" in joined and "'sdxl'" in joined
    assert "loop.max_iterations" in joined and "greater than or equal to 1" in joined


def test_unknown_embedder_type_lists_allowed_tags(tmp_path):
    data = tiny_params()
    data["evaluate"]["embedder"] = {"type": "siglip", "path": "x"}
    problems = _problems(tmp_path, data)
    assert any("evaluate.embedder" in p and "'clip'" in p and "'dinov2'" in p for p in problems)


def test_template_placeholders_are_checked(tmp_path):
    data = tiny_params(generate={"prompt_template": "{trigger}, {colour}"})
    assert any("colour" in p for p in _problems(tmp_path, data))


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("character:\n  name: [unclosed\n")
    with pytest.raises(ParamsError) as info:
        load_project(path)
    assert "line" in info.value.problems[0]


def test_params_hash_ignores_loop_settings_only(tmp_path):
    base = tiny_params()
    a = load_project(write_params(tmp_path / "a", base)).params
    b = load_project(write_params(tmp_path / "b", tiny_params(loop={"max_iterations": 9}))).params
    c = load_project(write_params(tmp_path / "c", tiny_params(train={"rank": 8}))).params
    assert params_hash(a) == params_hash(b)
    assert params_hash(a) != params_hash(c)


def test_cli_validate_ok_and_error_exit_code(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(REPO / "params.yaml")])
    assert ok.exit_code == 0 and "OK" in ok.output
    bad = tiny_params(
        filter={"discriminators": [{"type": "quality", "exposure_range": [0.9, 0.1]}]}
    )
    result = runner.invoke(app, ["validate", str(write_params(tmp_path, bad))])
    assert result.exit_code == 2
    assert "filter.discriminators.0.quality" in result.output and "exposure_range" in result.output


def test_prompt_adherence_needs_a_clip_embedder(tmp_path):
    data = tiny_params(
        filter={
            "embedder": {"type": "dinov2", "path": "x"},
            "discriminators": [{"type": "prompt_adherence"}],
        }
    )
    assert any("text tower" in p for p in _problems(tmp_path, data))


def test_cli_validate_missing_file(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "file not found" in result.output


def test_shipped_dvc_yaml_calls_existing_cli_stages():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    runner = CliRunner()
    for name, stage in stages.items():
        words = stage["cmd"].split()
        command = "log-run" if name == "log" else name
        assert words[:3] == ["charloop", "stage", command]
        assert runner.invoke(app, ["stage", command, "--help"]).exit_code == 0
        for dep in stage["deps"]:
            assert (REPO / dep).exists() or dep.startswith("data/"), dep


def test_prefect_yaml_deployments_point_at_real_flows():
    import importlib

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"kira-loop", "kira-promote", "kira-loop-docker", "kira-loop-k8s"} <= names
    for deployment in spec["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, function)), deployment["entrypoint"]
        assert deployment["parameters"]["params_file"] == "params.yaml"


def test_tracking_uri_from_params_then_environment_then_default(tmp_path, monkeypatch):
    from charloop.params.project import load_project
    from tests.conftest import tiny_params, write_params

    monkeypatch.delenv("CHARLOOP_TRACKING_URI", raising=False)
    project = load_project(write_params(tmp_path, tiny_params()))
    assert project.tracking_uri == f"sqlite:///{tmp_path}/.charloop/mlflow.db"
    monkeypatch.setenv("CHARLOOP_TRACKING_URI", "http://mlflow.internal:5000")
    assert project.tracking_uri == "http://mlflow.internal:5000"
    pinned = tiny_params(registry={"tracking_uri": "sqlite:///stores/db.sqlite"})
    project = load_project(write_params(tmp_path, pinned))
    assert project.tracking_uri == f"sqlite:///{tmp_path}/stores/db.sqlite"
