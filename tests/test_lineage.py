"""Lineage, checkout, promotion (gates, approval, refusal), rollback and generate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from charloop.core.hashing import tree_digest
from charloop.lineage.chain import param_changes
from charloop.lineage.promotion import AdapterMismatch, PromotionRefused, metric_gates
from charloop.params.project import load_project
from charloop.params.promote import PromoteParams
from charloop.stages.layout import IterationPaths
from charloop_cli.main import app
from tasks.promotion import apply_promotion_task
from tests.conftest import tiny_params, write_params

pytestmark = pytest.mark.e2e
MODEL = "kira-lora"


@pytest.fixture(scope="module")
def studio(tmp_path_factory, prefect_harness):
    """A git project whose loop ran three iterations (three chained versions).

    Every round is counted better than the last here, so the chain is 3 -> 2 -> 1 whatever
    the tiny model's metrics do (the round rules are tested in ``test_improving.py``)."""
    import flows.character_loop
    from charloop.stages.evaluate.convergence import Verdict
    from flows.character_loop import character_loop

    def every_round_better(history, epsilon, max_iterations, patience=1, metric="auto"):
        done = len(history) >= max_iterations
        return Verdict(done, "budget" if done else "continuing", False, len(history) - 1)

    root = tmp_path_factory.mktemp("lineage")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    data = tiny_params(loop={"max_iterations": 3, "convergence_epsilon": 0.0})
    params = write_params(root, data)
    subprocess.run(["git", "add", "params.yaml"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "params"], cwd=root, check=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flows.character_loop, "decide", every_round_better)
        rows = character_loop(params_file=str(params))
    assert [r["version"] for r in rows] == ["1", "2", "3"]
    return load_project(params)


def _variant(studio, name: str, **promote: object) -> str:
    """Another params file in the same project (same stores), with other promotion rules."""
    data = yaml.safe_load(studio.params_file.read_text())
    data["promote"] = promote
    path = studio.root / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _client(studio):
    from mlflow.tracking import MlflowClient

    return MlflowClient(studio.tracking_uri)


def _alias(studio, alias: str) -> str | None:
    try:
        return str(_client(studio).get_model_version_by_alias(MODEL, alias).version)
    except Exception:
        return None


def test_param_changes_and_metric_gates_are_explained():
    assert param_changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == {
        "b": ("2", "3"),
        "c": (None, "4"),
    }
    rules = PromoteParams(min_metrics={"x": 0.5}, max_metrics={"y": 0.9}, max_regression={"x": 0.1})
    gates = {g.name: g for g in metric_gates({"x": 0.3, "y": 0.95}, {"x": 0.45}, rules)}
    assert not gates["min x"].passed and "short by 0.2000" in gates["min x"].detail
    assert not gates["max y"].passed and "over by 0.0500" in gates["max y"].detail
    assert not gates["no regression x"].passed and "down 0.1500" in gates["no regression x"].detail
    assert all(g.passed for g in metric_gates({"x": 0.6, "y": 0.5}, {"x": 0.65}, rules))


def test_lineage_walks_back_to_the_base_model(studio):
    result = CliRunner().invoke(app, ["lineage", f"{MODEL}:3", "-p", str(studio.params_file)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in lines] == ["3", "2", "1"]
    assert "(root)" in lines[-1]
    version = _client(studio).get_model_version(MODEL, "1")
    assert version.tags["dataset_hash"][:16] in lines[-1]
    assert version.tags["dataset_dvc_md5"] in lines[-1]
    assert [line.split("│")[2].strip() for line in lines] == ["2", "1", "-"]  # parents
    assert version.tags["params_hash"] in lines[-1]
    assert "base model:" in result.output
    as_json = CliRunner().invoke(
        app, ["lineage", f"{MODEL}:3", "--json", "-p", str(studio.params_file)]
    )
    rows = json.loads(as_json.output)
    assert [(r["version"], r["parent"]) for r in rows] == [("3", "2"), ("2", "1"), ("1", None)]
    for key in (
        "dataset_hash",
        "dataset_dvc_md5",
        "dataset_sha256",
        "params_hash",
        "git_commit",
        "adapter_sha256",
        "kohya_sha256",
    ):
        assert rows[-1]["tags"][key] == version.tags[key]
    missing = CliRunner().invoke(app, ["lineage", f"{MODEL}:99", "-p", str(studio.params_file)])
    assert missing.exit_code == 2 and "not found" in missing.output  # bad input


def test_refused_promotion_names_the_gate_and_changes_nothing(studio):
    strict = _variant(studio, "strict.yaml", min_metrics={"identity_consistency": 2.0})
    result = CliRunner().invoke(app, ["promote", MODEL, "2", "-p", strict])
    assert result.exit_code == 3, result.output
    assert "min identity_consistency" in result.output and "short by" in result.output
    assert _alias(studio, "production") is None


def test_promote_exports_a_release_then_rollback_restores_previous(studio, tmp_path, monkeypatch):
    params = str(studio.params_file)
    runner = CliRunner()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    first = runner.invoke(app, ["promote", MODEL, "2", "--approver", "ana", "-p", params])
    assert first.exit_code == 0, first.output
    # the gate's and the export's downloads of the adapter are gone again
    assert not list(scratch.glob("charloop-adapter-*"))
    assert _alias(studio, "production") == "2" and _alias(studio, "candidate") == "3"
    tags = _client(studio).get_model_version(MODEL, "2").tags
    assert tags["approved_by"] == "ana" and tags["approved_at"]
    release = studio.root / "releases" / MODEL / "v2"
    assert {p.name for p in release.iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "lora_kohya.safetensors",
        "MODEL_CARD.md",
        "sample_grid.png",
        f"{MODEL}.safetensors",
        f"{MODEL}.json",
        f"{MODEL}.png",
    }
    _check_invoke_ready(studio, release, tags)
    card = (release / "MODEL_CARD.md").read_text()
    assert "zxq kira" in card and tags["dataset_hash"] in card and "| 1 | 1 |" in card
    # A version that must beat production by 1.0 is refused, with the numbers.
    picky = _variant(studio, "picky.yaml", max_regression={"identity_consistency": -1.0})
    refused = runner.invoke(app, ["promote", MODEL, "3", "-p", picky])
    assert refused.exit_code == 3 and "vs production" in refused.output
    second = runner.invoke(app, ["promote", MODEL, "1", "--approver", "bo", "-p", params])
    assert second.exit_code == 0, second.output
    assert (_alias(studio, "production"), _alias(studio, "previous")) == ("1", "2")
    back = runner.invoke(
        app, ["rollback", MODEL, "--approver", "ana", "--reason", "x", "-p", params]
    )
    assert back.exit_code == 0, back.output
    assert (_alias(studio, "production"), _alias(studio, "previous")) == ("2", "1")
    assert (studio.root / "releases" / MODEL / "PRODUCTION").read_text().strip() == "v2"
    audit = runner.invoke(app, ["audit", MODEL, "-p", params])
    assert audit.exit_code == 0, audit.output
    cells = [line.split("│")[3].strip() for line in audit.output.splitlines() if "│" in line]
    assert [c for c in cells if c][1:] == [
        "promoted",
        "promotion-refused",
        "promoted",
        "rolled-back",
    ]


def _check_invoke_ready(studio, release, tags) -> None:
    """The release's <name>.* trio: sidecar, cover, model-spec header, loads everywhere."""
    from charloop.core.hashing import sha256_file
    from charloop.core.safetensors_header import read_header
    from charloop.models.consumers.base_modules import from_pipeline_folder
    from charloop.models.consumers.check import check_adapter
    from charloop.models.consumers.reader import read_adapter_file

    sidecar = json.loads((release / f"{MODEL}.json").read_text())
    assert sidecar["activation text"] == "zxq kira" and sidecar["sd version"] == "SD1"
    with Image.open(release / f"{MODEL}.png") as cover:
        assert cover.size == (96, 96) and len(set(cover.getdata())) > 10  # a picture
    shipped = release / f"{MODEL}.safetensors"
    assert sha256_file(shipped) == tags["kohya_sha256"]
    meta = read_header(shipped)["__metadata__"]
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.trigger_phrase"] == "zxq kira" and meta["modelspec.title"] == "kira"
    assert meta["modelspec.resolution"] == "64x64" and meta["ss_base_model_version"] == "sd_v1"
    layout = from_pipeline_folder(Path(studio.model_ref(studio.params.base_model.path)))
    verdicts = {v.consumer: v.loads for v in check_adapter(read_adapter_file(shipped), layout)}
    # InvokeAI needs SD1.5's 768-wide cross-attention; the tiny model's is 32 wide.
    assert verdicts == {"diffusers": True, "kohya sd-scripts / A1111": True, "ComfyUI": True,
                        "Forge": True, "InvokeAI": False}  # fmt: skip


def _answer_when_paused(run_input: dict[str, object]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        for _ in range(240):
            paused = [r for r in client.read_flow_runs() if r.state and r.state.is_paused()]
            if paused:
                resume_flow_run(paused[0].id, run_input=run_input)
                return
            time.sleep(0.25)


def _answer_from_the_terminal(args: list[str]) -> None:
    """`charloop approve|reject ...` once the promotion is paused (as a person would)."""
    from flows.approval import NoPausedPromotion, paused_promotion

    for _ in range(240):
        try:
            paused_promotion(args[2])
            break
        except NoPausedPromotion:
            time.sleep(0.25)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def test_promotion_waits_for_approval(studio):
    from flows.promote import promote

    gated = _variant(studio, "gated.yaml", require_approval=True, approval_poll_s=1)
    params = ["-p", str(studio.params_file)]
    no = ["reject", MODEL, "3", "--approver", "lead", "--reason", "hands are off-model", *params]
    thread = threading.Thread(target=_answer_from_the_terminal, args=(no,))
    thread.start()
    with pytest.raises(PromotionRefused, match="declined by lead: hands are off-model"):
        promote(gated, "3")
    thread.join(5)
    assert _alias(studio, "production") != "3"
    yes = {"approver": "lead", "approve": True, "comment": "approved for the trailer"}
    thread = threading.Thread(target=_answer_when_paused, args=(yes,))
    thread.start()
    result = promote(gated, "3")
    thread.join(5)
    assert result["production"] == "3" and _alias(studio, "production") == "3"
    tags = _client(studio).get_model_version(MODEL, "3").tags
    assert (tags["approved_by"], tags["promotion_reason"]) == ("lead", "approved for the trailer")
    nobody = {"approver": " ", "approve": True, "comment": ""}
    thread = threading.Thread(target=_answer_when_paused, args=(nobody,))
    thread.start()
    with pytest.raises(PromotionRefused, match="without a named approver"):
        promote(gated, "2")
    thread.join(5)
    missing = CliRunner().invoke(app, ["approve", MODEL, "2", "--approver", "ana", *params])
    assert missing.exit_code == 2 and "no promotion of version 2 is waiting" in missing.output
    unknown = CliRunner().invoke(app, ["approve", "nobody-lora", "1", "--approver", "ana", *params])
    assert unknown.exit_code == 2 and "registered model 'nobody-lora'" in unknown.output
    assert "waiting" not in unknown.output  # answered from the registry, not the Prefect API


def test_generate_verifies_the_adapter_hash(studio, tmp_path):
    params = str(studio.params_file)
    out = tmp_path / "kira.png"
    args = ["generate", "zxq kira, flat colors, in a forest", "--model", f"{MODEL}:2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "-p", params])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (64, 64)
    source = Path(_client(studio).get_model_version(MODEL, "2").source.removeprefix("file://"))
    weights = source / "pytorch_lora_weights.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-8] + b"tampered")
        tampered = CliRunner().invoke(app, [*args, "--out", str(out), "-p", params])
        assert tampered.exit_code == 3 and "does not match" in tampered.output
        refused = CliRunner().invoke(app, ["promote", MODEL, "2", "-p", params])
        assert refused.exit_code == 3 and "adapter hash" in refused.output
        # bytes changed while an approval waited: the export re-checks and refuses
        before = _alias(studio, "production")
        with pytest.raises(AdapterMismatch, match="does not match"):
            apply_promotion_task.fn(load_project(params), "2", "ana", "after the pause")
        assert _alias(studio, "production") == before
    finally:
        weights.write_bytes(original)


def test_checkout_restores_exact_bytes_after_the_workspace_moved_on(studio):
    """Iteration 1's dataset and adapter come back from the DVC remote, byte for byte."""
    paths = IterationPaths.of(studio.workdir, 1)
    expected = {
        "dataset": tree_digest(paths.dataset),
        "adapter": tree_digest(paths.adapter),
    }
    shutil.rmtree(paths.root)  # the workspace moved on: iteration 1's folders are gone
    cache = studio.root / ".dvc" / "cache"
    shutil.rmtree(cache)  # and so is the local cache: only the remote still has the data
    out = studio.root / "restored"
    result = CliRunner().invoke(
        app, ["checkout", f"{MODEL}:1", "--out", str(out), "-p", str(studio.params_file)]
    )
    assert result.exit_code == 0, result.output
    assert tree_digest(out / "dataset") == expected["dataset"]
    assert tree_digest(out / "adapter") == expected["adapter"]
    assert "verified" in result.output


def test_approve_without_a_prefect_api_answers_in_one_line(studio):
    """No PREFECT_API_URL: Prefect's temporary server starts with telemetry off and nothing
    of it reaches the terminal (it once printed ~130 lines of sqlite lock tracebacks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(studio.root / ".prefect-home")  # its own fresh database
    result = subprocess.run(
        [sys.executable, "-m", "charloop_cli.main", "approve", MODEL, "2", "--approver", "ana",
         "-p", str(studio.params_file)],
        capture_output=True, text=True, env=env, cwd=studio.root, timeout=300,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert "Traceback" not in output and "database is locked" not in output, output
    assert "no promotion of version 2 is waiting" in output
    assert len(output.splitlines()) <= 3, output
