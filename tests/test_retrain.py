"""Retraining extends the lineage: new references start a new round after the registered
iterations, whose folders never change; identical training data has an identical hash."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charloop.core.hashing import tree_digest
from charloop.lineage.ingest import ingest_references
from charloop.lineage.rounds import ROUNDS_FILE, STAGE_MODULES, read_rounds
from charloop.params.project import load_project
from charloop.stages.caption.stage import training_data_digest
from charloop.stages.contract import RegisteredFolder, identity
from charloop.stages.layout import PUBLISHED, IterationPaths
from charloop.stages.results import Dataset
from tests.conftest import REPO, tiny_params, write_params


def _image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for seed in (1, 2):
        _image(root / "refs" / f"kira-{seed}.png", seed)
    data = tiny_params(loop={"max_iterations": 1, "convergence_epsilon": 0.0})
    data["character"]["references"] = "refs"
    params = write_params(root, data)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "params"], cwd=root, check=True)
    return load_project(params)


def _versions(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.tracking_uri)
    found = client.search_model_versions(f"name = '{project.params.model_name}'")
    return client, {str(v.version): v for v in found}


def _snapshot(folder: Path) -> dict[str, object]:
    """Every file's bytes digest and mtime: a rewrite changes at least the mtimes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _ingest(project, seed: int, tmp: Path) -> None:
    drop = tmp / f"drop-{seed}"
    _image(drop / f"sketch-{seed}.png", seed)
    report = ingest_references(drop, project.resolve("refs"))
    assert report.added == [f"sketch-{seed}.png"]


@pytest.mark.e2e
def test_retrains_extend_the_chain_and_never_rewrite_history(studio, prefect_harness, tmp_path):
    from flows.character_loop import character_loop

    params_file = str(studio.params_file)
    first = character_loop(params_file=params_file)
    assert [(r["round"], r["iteration"], r["version"]) for r in first] == [(1, 1, "1")]
    iter1 = IterationPaths.of(studio.workdir, 1).root
    before = _snapshot(iter1)

    # An artist drops new reference art: the retrain is round 2, iteration 2, child of v1.
    _ingest(studio, 3, tmp_path)
    second = character_loop(params_file=params_file)
    assert [(r["round"], r["iteration"], r["version"]) for r in second] == [(2, 2, "2")]
    client, versions = _versions(studio)
    assert versions["2"].tags["parent_version"] == "1"
    assert versions["2"].tags["parent_adapter_sha256"] == "none"  # rendered by the base
    assert _snapshot(iter1) == before  # the registered folder was not touched

    # With a production version, the next retrain supersedes it (not the newest).
    client.set_registered_model_alias(studio.params.model_name, "production", "1")
    _ingest(studio, 4, tmp_path)
    third = character_loop(params_file=params_file)
    assert [(r["round"], r["iteration"], r["version"]) for r in third] == [(3, 3, "3")]
    _, versions = _versions(studio)
    assert versions["3"].tags["parent_version"] == "1"
    rounds = read_rounds(studio.workdir)
    assert [(r.number, r.first_iteration, r.supersedes) for r in rounds] == [
        (1, 1, None),
        (2, 2, "1"),
        (3, 3, "1"),
    ]

    # Unchanged inputs: the newest round is reused whole, nothing new is registered.
    again = character_loop(params_file=params_file)
    assert [(r["round"], r["iteration"], r["version"]) for r in again] == [(3, 3, "3")]
    assert sorted(_versions(studio)[1]) == ["1", "2", "3"]
    assert _snapshot(iter1) == before
    assert json.loads((studio.workdir / ROUNDS_FILE).read_text())[-1]["number"] == 3


def test_a_stage_refuses_to_redo_a_registered_folder(tmp_path):
    root = tmp_path / "iter-001"
    out = root / "04_dataset"
    out.mkdir(parents=True)
    stage = identity(Dataset, out, "charloop.stages.caption.stage", anything=1)
    assert stage.done() is None  # not registered: the stage may run
    (root / PUBLISHED).write_text(json.dumps({"model": "kira-lora", "version": "7"}))
    with pytest.raises(RegisteredFolder, match="model version 7"):
        stage.done()


def test_identical_training_data_has_an_identical_hash(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, reviewer in ((one, "ana"), (two, "ben")):
        _image(folder / "8_zxq_kira" / "a.png", 1)
        (folder / "8_zxq_kira" / "a.txt").write_text("zxq kira, watercolor\n")
        (folder / "manifest.jsonl").write_text(json.dumps({"reviewer": reviewer}) + "\n")
        (folder / "_stage.json").write_text(json.dumps({"fingerprint": reviewer}))
    assert tree_digest(one) != tree_digest(two)  # the folders differ in bookkeeping only
    assert training_data_digest(one) == training_data_digest(two)
    (two / "8_zxq_kira" / "a.txt").write_text("zxq kira, sketch\n")
    assert training_data_digest(one) != training_data_digest(two)
    shutil.move(two / "8_zxq_kira", two / "1_zxq_kira")  # fewer repeats: other training data
    (two / "1_zxq_kira" / "a.txt").write_text("zxq kira, watercolor\n")
    assert training_data_digest(one) != training_data_digest(two)


def test_every_fingerprinted_stage_module_is_in_the_round_inputs():
    """A module whose code fingerprints a stage but not the round would let a code change
    reach a registered folder (the stage guard would then refuse the run)."""
    found = set()
    for path in (REPO / "charloop").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "identity"
                and any(isinstance(a, ast.Name) and a.id == "__name__" for a in node.args)
            ):
                found.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert found == set(STAGE_MODULES)
