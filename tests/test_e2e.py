"""The whole loop through Prefect, with DVC and MLflow, in a temporary git repository."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from charloop.core import atomic
from charloop.params.project import load_project
from charloop.stages.layout import IterationPaths
from tests.conftest import FAMILY_IDS, base_model, tiny_params, write_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=FAMILY_IDS)
def family(request) -> str:
    """The whole loop runs on each embedded family."""
    return request.param


@pytest.fixture(scope="module")
def git_project(tmp_path_factory, family):
    root = tmp_path_factory.mktemp(f"studio-{family}")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    data = tiny_params(base_model=base_model(family))
    data["evaluate"]["seeds"] = [7, 8]  # two seeds per context: diversity is measured
    params = write_params(root, data)
    subprocess.run(["git", "add", "params.yaml"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "params"], cwd=root, check=True)
    return load_project(params)


@pytest.fixture(scope="module")
def loop_result(git_project, prefect_harness):
    from flows.character_loop import character_loop

    started = time.perf_counter()
    rows = character_loop(params_file=str(git_project.params_file))
    return rows, time.perf_counter() - started


def _client(project):
    from mlflow.tracking import MlflowClient

    return MlflowClient(project.tracking_uri)


def _versions(project):
    client = _client(project)
    found = client.search_model_versions(f"name = '{project.params.model_name}'")
    return sorted(found, key=lambda v: int(v.version))


def test_two_iterations_register_two_chained_versions(loop_result, git_project, family):
    rows, _ = loop_result
    assert [r["iteration"] for r in rows] == [1, 2]
    v1, v2 = _versions(git_project)
    assert (str(v1.version), str(v2.version)) == ("1", "2")
    assert v1.tags["parent_version"] == "none"
    assert v2.tags["parent_version"] == str(v1.version)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=git_project.root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for version in (v1, v2):
        assert version.tags["git_commit"].startswith(commit)
        assert len(version.tags["params_hash"]) == 16
        assert version.tags["base_model_family"] == family
        assert version.tags["adapter_sha256"] == version.tags["adapter_sha256"].lower()
    client = _client(git_project)
    best = [r for r in rows if r["best"]][-1]  # the best round, not the last, is candidate
    assert rows[0]["best"] and rows[1]["best"] == (best is rows[1])
    assert str(
        client.get_model_version_by_alias(git_project.params.model_name, "candidate").version
    ) == str(best["version"])
    run = client.get_run(v2.run_id)
    assert "identity_consistency" in run.data.metrics
    assert run.inputs.dataset_inputs[0].dataset.digest == v2.tags["dataset_hash"][:36]


def test_dataset_hashes_name_the_training_data_and_the_dvc_folder(loop_result, git_project):
    from dvc.api import DVCFileSystem

    from charloop.core.hashing import sha256_file
    from charloop.stages.caption.stage import training_data_digest
    from charloop.stages.layout import published_version

    fs = DVCFileSystem(str(git_project.root))
    for version in _versions(git_project):
        paths = IterationPaths.of(git_project.workdir, int(version.tags["iteration"]))
        relative = paths.dataset.relative_to(git_project.root).as_posix()
        assert fs.info(relative)["dvc_info"]["md5"] == version.tags["dataset_dvc_md5"]
        assert training_data_digest(paths.dataset) == version.tags["dataset_hash"]
        assert published_version(paths.root) == str(version.version)
        weights = paths.adapter / "pytorch_lora_weights.safetensors"
        assert sha256_file(weights) == version.tags["adapter_sha256"]
        assert Path(f"{paths.dataset}.dvc").is_file() and Path(f"{paths.adapter}.dvc").is_file()
    remote = git_project.resolve(".charloop/dvc-remote")
    assert any(remote.rglob("*")), "iterations are pushed to the local DVC remote"


def test_iteration_two_trains_on_the_best_images_of_both_iterations(loop_result, git_project):
    first = IterationPaths.of(git_project.workdir, 1)
    second = IterationPaths.of(git_project.workdir, 2)

    def generated_rows(paths):
        rows = atomic.read_jsonl(paths.dataset / "manifest.jsonl")
        return {r["id"]: r for r in rows if "reference" not in r}

    earlier, now = generated_rows(first), generated_rows(second)
    kept_now = atomic.read_jsonl(second.reviewed / "kept.jsonl")
    assert set(now) <= set(earlier) | {r["id"] for r in kept_now}
    assert 2 in {r["iteration"] for r in now.values()}
    scenes = [json.dumps(r["context"], sort_keys=True) for r in now.values()]
    assert max(scenes.count(s) for s in scenes) <= git_project.params.caption.dataset.per_context
    counts = {str(i): [r["iteration"] for r in now.values()].count(i) for i in (1, 2)}
    tagged = _versions(git_project)[1].tags["dataset_sources"]
    assert tagged == ",".join(f"{i}:{n}" for i, n in counts.items() if n)
    for row in now.values():  # where each came from, restored with the dataset by DVC
        origin = IterationPaths.of(git_project.workdir, row["iteration"]).generated / row["file"]
        assert row["source"] == origin.relative_to(git_project.root).as_posix()
        assert (second.dataset / row["dataset_file"]).is_file()


def test_iteration_two_was_generated_with_iteration_one_adapter(loop_result, git_project):
    first = IterationPaths.of(git_project.workdir, 1)
    second = IterationPaths.of(git_project.workdir, 2)
    rows = atomic.read_jsonl(second.generated / "manifest.jsonl")
    from charloop.core.hashing import sha256_file

    expected = sha256_file(first.adapter / "pytorch_lora_weights.safetensors")
    portable = first.adapter.relative_to(git_project.root).as_posix()  # the project can move
    assert rows and all(r["adapter"]["path"] == portable for r in rows)
    assert all(r["adapter"]["sha256"] == expected for r in rows)
    first_rows = atomic.read_jsonl(first.generated / "manifest.jsonl")
    assert all(r["adapter"] is None for r in first_rows)


def test_evaluation_reports_reach_mlflow_and_prefect(loop_result, git_project, tmp_path):
    from PIL import Image
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    rows, _ = loop_result
    v1, v2 = _versions(git_project)
    client = _client(git_project)
    for version, row in zip((v1, v2), rows, strict=True):
        metrics = client.get_run(version.run_id).data.metrics
        assert {"trigger_effect", "diversity", "base_diversity"} <= set(metrics)
        assert metrics["trigger_effect"] == pytest.approx(
            row["identity_consistency"] - row["base_identity_consistency"]
        )
        losses = client.get_metric_history(version.run_id, "train/loss")
        assert [m.step for m in losses] == list(range(1, 7))  # one point per optimizer step
        validation = client.get_metric_history(version.run_id, "train/validation_loss")
        assert sorted(m.step for m in validation)[0] == 0 and len(validation) >= 2
        images = [a.path for a in client.list_artifacts(version.run_id, "images")]
        step = version.tags["iteration"]
        for key in ("contact_sheet", "metrics_history"):
            assert any(p.startswith(f"images/{key}+step+{step}+") for p in images), (key, images)
    plot = IterationPaths.of(git_project.workdir, 2).reports / "metrics_history.png"
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 100
    summary_file = client.download_artifacts(v2.run_id, "summary.json", str(tmp_path))
    summary = json.loads(Path(summary_file).read_text())
    assert summary["change_vs_previous"]["identity_consistency"] == pytest.approx(
        rows[1]["identity_consistency"] - rows[0]["identity_consistency"]
    )
    keys = ["kira-iter-2-metrics", "kira-iter-2-per-context", "kira-iter-2-history"]
    with get_client(sync_client=True) as prefect:
        # The newest of each key: other modules' loops of a "kira" write the same keys.
        found = prefect.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=keys))
        )
    by_key = {a.key: a for a in found}
    assert set(by_key) == set(keys)
    assert "change vs previous" in str(by_key["kira-iter-2-metrics"].data)
    assert "diversity" in str(by_key["kira-iter-2-per-context"].data)


def test_rerun_reuses_everything_and_registers_nothing_new(loop_result, git_project):
    from flows.character_loop import character_loop

    rows, first_seconds = loop_result
    started = time.perf_counter()
    again = character_loop(params_file=str(git_project.params_file))
    elapsed = time.perf_counter() - started
    assert [r["version"] for r in again] == [r["version"] for r in rows]
    assert len(_versions(git_project)) == 2
    assert elapsed < first_seconds, (elapsed, first_seconds)


def _provenance_headers(adapter_dir: Path) -> dict[str, dict[str, str]]:
    from charloop.core.safetensors_header import read_header

    return {
        name: {
            k: v
            for k, v in read_header(adapter_dir / name).get("__metadata__", {}).items()
            if k.startswith("charloop.")
        }
        for name in ("pytorch_lora_weights.safetensors", "lora_kohya.safetensors")
    }


def test_flow_and_cli_train_write_the_same_provenance(loop_result, git_project, tmp_path):
    """One provenance builder: the flow's adapter and `charloop stage train` (what dvc.yaml
    runs) on the same dataset carry the same keys and values, and the registry's tags
    are those values."""
    from typer.testing import CliRunner

    from charloop.lineage.provenance import PROVENANCE_KEYS
    from charloop_cli.main import app

    first, second = (IterationPaths.of(git_project.workdir, i) for i in (1, 2))
    flow_headers = _provenance_headers(second.adapter)
    expected_keys = {f"charloop.{k}" for k in PROVENANCE_KEYS}
    assert all(set(h) == expected_keys for h in flow_headers.values())
    assert flow_headers["pytorch_lora_weights.safetensors"]["charloop.parent_version"] == "1"
    out = tmp_path / "cli-adapter"
    args = ["stage", "train", str(second.dataset), str(out), "--params"]
    args += [str(git_project.params_file), "--iteration", "2", "--parent", str(first.adapter)]
    result = CliRunner().invoke(app, [*args, "--parent-version", "1"])
    assert result.exit_code == 0, result.output
    assert _provenance_headers(out) == flow_headers
    provenance = json.loads((second.adapter / "provenance.json").read_text())
    assert json.loads((out / "provenance.json").read_text()) == provenance
    _, v2 = _versions(git_project)
    assert {k: v2.tags[k] for k in PROVENANCE_KEYS} == provenance


def test_a_copied_project_reuses_every_stage(loop_result, git_project, tmp_path):
    """Nothing charloop writes under runs/ names the project's absolute path: a copy of
    the project re-runs without redoing a stage or registering a version again."""
    import shutil

    from flows.character_loop import character_loop

    moved = tmp_path / "elsewhere" / "studio"
    shutil.copytree(git_project.root, moved, symlinks=True)
    runs = moved / git_project.workdir.relative_to(git_project.root)
    original = str(git_project.root)
    for path in runs.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".dvc"):
            assert original not in path.read_text(encoding="utf-8"), path
    config = (moved / ".dvc" / "config.local").read_text()
    assert original not in config  # the DVC remote is relative to .dvc/
    markers = {p: p.stat().st_mtime_ns for p in runs.rglob("_stage.json")}
    rows = character_loop(params_file=str(moved / "params.yaml"))
    assert [r["version"] for r in rows] == ["1", "2"]  # found, not registered again
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("_stage.json")} == markers
    # The copy's lineage and checkout work from its own stores, byte for byte.
    from typer.testing import CliRunner

    from charloop.core.hashing import tree_digest
    from charloop_cli.main import app

    copied = ["-p", str(moved / "params.yaml")]
    model = git_project.params.model_name
    shown = CliRunner().invoke(app, ["lineage", f"{model}:2", "--json", *copied])
    assert shown.exit_code == 0, shown.output
    assert [step["version"] for step in json.loads(shown.output)] == ["2", "1"]
    out = moved / "restored"
    restored = CliRunner().invoke(app, ["checkout", f"{model}:2", "--out", str(out), *copied])
    assert restored.exit_code == 0, restored.output
    second = IterationPaths.of(git_project.workdir, 2)
    assert tree_digest(out / "dataset") == tree_digest(second.dataset)
    assert tree_digest(out / "adapter") == tree_digest(second.adapter)
    # The accumulated dataset comes back with where each image came from.
    rows = [r for r in atomic.read_jsonl(out / "dataset" / "manifest.jsonl") if "iteration" in r]
    assert rows and all((out / "dataset" / r["dataset_file"]).is_file() for r in rows)
    assert {r["source"].split("/iter-")[1][:3] for r in rows} == {
        f"{r['iteration']:03d}" for r in rows
    }


def test_a_moved_project_serves_its_adapters_from_its_own_artifact_store(
    loop_result, git_project, tmp_path
):
    """MLflow stored absolute artifact URIs; they are resolved under the moved project's
    own artifact store when the old place is gone."""
    import shutil

    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from charloop.params.project import load_project
    from charloop_cli.main import app

    moved = tmp_path / "moved" / "studio"
    shutil.copytree(git_project.root, moved, symlinks=True)
    copy = load_project(moved / "params.yaml")
    MlflowClient(copy.tracking_uri).set_registered_model_alias(
        copy.params.model_name, "production", "2"
    )  # in the copy's own registry: the original never had a production version
    away = git_project.root.with_name(git_project.root.name + "-away")
    git_project.root.rename(away)  # the original place is gone for this test
    try:
        out = tmp_path / "kira.png"
        result = CliRunner().invoke(
            app,
            ["generate", "zxq kira, watercolor", "--model", "kira-lora@production",
             "--out", str(out), "-p", str(moved / "params.yaml")],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert out.is_file() and "adapter" in result.output
    finally:
        away.rename(git_project.root)


def test_dvc_pull_restores_the_runs_of_a_fresh_copy(loop_result, git_project, tmp_path):
    """The README's `dvc pull -R runs`: with the cache and the folders gone, the iterations
    come back from the DVC remote byte for byte."""
    import os
    import shutil
    import sys

    from charloop.core.hashing import tree_digest

    copy = tmp_path / "pulled"
    shutil.copytree(git_project.root, copy, symlinks=True)
    runs = copy / git_project.workdir.relative_to(git_project.root)
    expected = {p: tree_digest(p) for p in sorted(runs.glob("iter-*/0*_*")) if p.is_dir()}
    assert expected
    shutil.rmtree(copy / ".dvc" / "cache")
    for folder in expected:
        shutil.rmtree(folder)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    pulled = subprocess.run(
        ["dvc", "pull", "-R", "runs"], cwd=copy, env=env, capture_output=True, text=True
    )
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert {p: tree_digest(p) for p in expected} == expected


def test_generate_refuses_a_lora_of_another_family(loop_result, git_project, family):
    """The registered LoRA records its base family; params on the other family's base
    get exit 2 naming both, and no image."""
    from typer.testing import CliRunner

    from charloop_cli.main import app

    other = "sdxl" if family == "sd15" else "sd15"
    data = tiny_params(base_model=base_model(other))
    params = git_project.root / "params-other.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    out = git_project.root / "other.png"
    model = f"{git_project.params.model_name}@candidate"
    args = ["generate", "zxq kira", "--model", model, "--out", str(out), "-p", str(params)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"is an {family} LoRA" in result.output and f"base model is {other}" in result.output
    assert not out.exists()
    params.unlink()
