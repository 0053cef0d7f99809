"""The README's DVC commands on a copy of the project with the tiny example's models:
`dvc repro`, `dvc exp run -S`, `dvc exp show`, `dvc metrics show|diff` (runs in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from charloop.params.schema import Params
from tests.conftest import FAMILY_IDS, FAMILY_MODELS, REPO, tiny_params


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_dvc_repro_runs_one_iteration(tmp_path, family):
    """The DVC pipeline's stages, on each embedded family (the same library calls)."""
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    params = tiny_params()
    params["base_model"]["path"] = f"models/{FAMILY_MODELS[family]}"
    params["evaluate"]["embedder"]["path"] = "models/tiny-clip"
    # DVC reads each stage's params sections from the file: write every section out.
    full = Params.model_validate(params).model_dump(mode="json", exclude_none=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(command, cwd=tmp_path, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    repro = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert repro.returncode == 0, repro.stderr[-3000:] + repro.stdout[-3000:]
    metrics = json.loads((tmp_path / "data/06_evaluation/metrics.json").read_text())
    assert -1 <= metrics["identity_consistency"] <= 1
    # dvc repro's adapter carries the same provenance keys as the flow's (one builder).
    from charloop.core.safetensors_header import read_header
    from charloop.lineage.provenance import PROVENANCE_KEYS

    header = read_header(tmp_path / "data/05_adapter/pytorch_lora_weights.safetensors")
    keys = {k for k in header["__metadata__"] if k.startswith("charloop.")}
    assert keys == {f"charloop.{k}" for k in PROVENANCE_KEYS}
    assert header["__metadata__"]["charloop.base_model_family"] == family
    logged = json.loads((tmp_path / "data/mlflow_run.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(logged) and logged["parent_version"] == "none"
    shown = subprocess.run(
        ["dvc", "metrics", "show", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "identity_consistency" in shown.stdout, shown.stderr[-2000:]
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    stages = {"generate", "filter", "review", "caption", "train", "evaluate", "log"}
    assert set(lock["stages"]) == stages
    status = subprocess.run(
        ["dvc", "status"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    assert "up to date" in status.stdout.lower()
    # A one-parameter experiment: only train, evaluate and log rerun; both land in MLflow.
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=tmp_path, check=True)
    exp = subprocess.run(
        ["dvc", "exp", "run", "-S", "train.rank=8"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert exp.returncode == 0, exp.stderr[-3000:] + exp.stdout[-3000:]
    assert "Running stage 'generate'" not in exp.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/.charloop/mlflow.db")
    experiment = client.get_experiment_by_name("charloop-kira-dvc")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.params["train.rank"] for r in runs) == ["4", "8"]
    names = {r.data.params["train.rank"]: r.data.tags["dvc_exp_name"] for r in runs}
    assert names["4"] == "workspace" and names["8"] not in ("", "workspace")
    assert all("identity_consistency" in r.data.metrics for r in runs)
    shown = _dvc(["exp", "show", "--json"], tmp_path, env)
    assert '"identity_consistency"' in shown and '"rank"' in shown, shown[-2000:]
    diff = _dvc(["metrics", "diff", "HEAD", "--all", "--json"], tmp_path, env)
    assert "identity_consistency" in diff
    # dvc plots: the loss curves and per-context identity of the baseline and the experiment.
    plots = json.loads(_dvc(["plots", "show", "--json"], tmp_path, env))
    drawn = json.dumps(plots)
    assert all(name in drawn for name in ("training loss", "validation loss", "lora_identity"))
    train_rows = json.loads((tmp_path / "data/plots/train_loss.json").read_text())
    assert len(train_rows) == params["train"]["max_train_steps"]
    assert {"step", "loss", "learning_rate"} <= set(train_rows[0])
    overlaid = _dvc(["plots", "diff", "HEAD", names["8"], "--json"], tmp_path, env)
    assert "HEAD" in overlaid and names["8"] in overlaid


@pytest.mark.parametrize("name", ["params.yaml", "examples/tiny.yaml", "examples/cast.yaml"])
def test_dvc_set_rewrites_only_the_value_it_sets(name, tmp_path):
    """`dvc exp run -S train.rank=16` rewrites the params file through DVC's YAML dumper;
    the shipped files are already in its style, so only the value's line changes."""
    from dvc.utils.serialize import modify_yaml

    original = (REPO / name).read_text(encoding="utf-8")
    copy = tmp_path / "params.yaml"
    copy.write_text(original, encoding="utf-8")
    with modify_yaml(copy) as data:
        data["train"]["rank"] = 16
    changed = [
        (old, new)
        for old, new in zip(original.splitlines(), copy.read_text().splitlines(), strict=True)
        if old != new
    ]
    assert len(changed) == 1 and changed[0][1].strip().startswith("rank: 16"), changed


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
