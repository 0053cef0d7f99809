"""The stage contract: code fingerprints by import closure, one cache identity, typed
results that round-trip through their marker, and dvc.yaml deps from the same closure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from charloop.core.codegraph import closure, code_fingerprint
from charloop.lineage.dvc_stages import DVC_STAGE_CODE, code_deps, stale_deps
from charloop.stages.contract import MARKER, CorruptSeal, identity, read_output
from charloop.stages.results import (
    RESULT_TYPES,
    Adapter,
    Dataset,
    Generated,
    from_record,
    to_record,
)
from tests.conftest import REPO


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the library's sources to edit (fingerprints are cached per folder)."""
    folder = tmp_path / "charloop"
    shutil.copytree(REPO / "charloop", folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_fingerprint_covers_only_the_code_a_stage_imports(package_copy):
    generate, evaluate = "charloop.stages.generate.stage", "charloop.stages.evaluate.stage"
    before = {m: code_fingerprint(m, package_copy) for m in (generate, evaluate)}
    target = package_copy / "stages/evaluate/stage.py"
    target.write_text(target.read_text().replace('"""Evaluate:', '"""Evaluate (edited):', 1))
    code_fingerprint.cache_clear()
    closure.cache_clear()
    after = {m: code_fingerprint(m, package_copy) for m in (generate, evaluate)}
    assert after[generate] == before[generate]  # evaluate's docstring is not generate's code
    assert after[evaluate] != before[evaluate]
    shared = package_copy / "scenes/render.py"  # used by both: both change
    shared.write_text(shared.read_text() + "\n# edited\n")
    code_fingerprint.cache_clear()
    closure.cache_clear()
    assert code_fingerprint(generate, package_copy) != after[generate]
    assert code_fingerprint(evaluate, package_copy) != after[evaluate]


def test_closure_follows_imports_inside_functions():
    files = {p.relative_to(REPO).as_posix() for p in closure("charloop.models.embedder")}
    # load_embedder imports the world backend inside a function
    assert "charloop/models/world_embedder.py" in files
    assert "charloop/stages/train/stage.py" not in files
    assert not any(f.startswith("charloop_world") for f in files)


def test_shipped_dvc_yaml_code_deps_match_the_stage_closures():
    data = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert set(DVC_STAGE_CODE) == set(data["stages"])
    assert stale_deps(data) == {}
    assert "charloop/stages/train" in code_deps("train")  # the whole package
    assert not any(d.startswith("charloop/stages/train") for d in code_deps("generate"))
    assert data["metrics"] == ["data/06_evaluation/metrics.json"]


def test_stale_dvc_deps_are_reported():
    data = yaml.safe_load((REPO / "dvc.yaml").read_text())
    data["stages"]["filter"]["deps"].remove("charloop/stages/filter")
    assert list(stale_deps(data)) == ["filter"]


def _sealed(tmp_path: Path, **inputs: object):
    stage = identity(Generated, tmp_path / "out", "charloop.stages.generate.stage", **inputs)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a.png").write_bytes(b"png")
    result = stage.seal(staging, images=1)
    staging.rename(stage.out_dir)
    return stage, result


def test_identity_decides_done_for_runs_and_caches(tmp_path):
    stage, result = _sealed(tmp_path, seed=1)
    assert stage.done() == result and isinstance(stage.done(), Generated)
    assert stage.cache_key() is not None and stage.fingerprint in stage.cache_key()
    other = identity(Generated, stage.out_dir, "charloop.stages.generate.stage", seed=2)
    assert other.done() is None and other.cache_key() is None  # other inputs: redo
    as_dataset = identity(Dataset, stage.out_dir, "charloop.stages.generate.stage", seed=1)
    assert as_dataset.done() is None  # another stage's folder is never taken for this one
    (stage.out_dir / "a.png").write_bytes(b"edited")
    assert stage.done() is None and stage.cache_key() is None  # damaged output: redo


def test_a_corrupted_marker_is_redone_not_trusted(tmp_path):
    stage, _ = _sealed(tmp_path, seed=1)
    (stage.out_dir / MARKER).write_text("{not json")
    assert stage.done() is None
    with pytest.raises(CorruptSeal, match="not readable JSON"):
        read_output(stage.out_dir, Generated)
    (stage.out_dir / MARKER).write_text(json.dumps({"name": "generate", "summary": {"x": 1}}))
    assert stage.done() is None


def test_results_round_trip_through_their_marker_record():
    adapter = Adapter(
        path="/a",
        digest="d",
        fingerprint="f",
        weights_sha256="w",
        kohya_sha256="k",
        steps=3,
        final_loss=0.5,
        images=4,
        processes=1,
    )
    record = to_record(adapter)
    assert record["name"] == "train" and record["summary"]["weights_sha256"] == "w"
    assert from_record(json.loads(json.dumps(record))) == adapter
    assert adapter.ref.sha256 == "w" and adapter.ref.path == "/a"
    assert set(RESULT_TYPES) == {
        "generate",
        "generate-shard",
        "filter",
        "review",
        "caption",
        "train",
        "evaluate-shard",
        "evaluate",
    }
    with pytest.raises(ValueError, match="unknown stage"):
        from_record({"name": "nope"})


def test_stage_deps_cli_checks_and_rewrites_dvc_yaml(tmp_path):
    from typer.testing import CliRunner

    from charloop_cli.main import app

    runner = CliRunner()
    assert runner.invoke(app, ["stage", "deps", str(REPO / "dvc.yaml")]).exit_code == 0
    stale = tmp_path / "dvc.yaml"
    text = (REPO / "dvc.yaml").read_text()
    stale.write_text(text.replace("      - charloop/stages/filter\n", "", 1))
    result = runner.invoke(app, ["stage", "deps", str(stale)])
    assert result.exit_code == 3 and "filter" in result.output  # refused by the check
    assert runner.invoke(app, ["stage", "deps", str(stale), "--write"]).exit_code == 0
    assert yaml.safe_load(stale.read_text()) == yaml.safe_load(text)  # comments aside, exact
    assert "# `dvc metrics show`" in stale.read_text()  # comments kept
    missing = runner.invoke(app, ["stage", "deps", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2


def test_every_params_section_a_dvc_stage_reads_is_in_params_yaml():
    """`dvc repro` / `dvc exp run -S` on the shipped params.yaml need each section."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    needed = {p for stage in stages.values() for p in stage.get("params", [])}
    assert needed - set(yaml.safe_load((REPO / "params.yaml").read_text())) == set()
