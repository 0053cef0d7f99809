"""Reliability: kill real loop processes at failpoints, lock out a second loop, bad input.

The kill test runs ``charloop run`` in a subprocess that SIGKILLs itself at each failpoint
in turn, then a clean run, and checks that finished stages were not redone, that no model
version is duplicated and that no data was lost. The counts are printed at the end of the
session (see ``pytest_terminal_summary`` in conftest).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from charloop.core.faults import ENV, POINTS
from charloop.core.hashing import tree_digest
from charloop.core.locking import LoopLocked, character_lock
from charloop.params.project import load_project
from charloop.stages.contract import MARKER
from charloop.stages.layout import IterationPaths
from tests.conftest import tiny_params, write_params

SUMMARY: dict[str, int] = {"faults injected": 0, "runs recovered": 0, "data lost": 0}


def _run(params: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """``charloop run`` in its own session; when it dies, its whole process group goes too
    (as when a container or systemd unit dies), including Prefect's ephemeral API server."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["PREFECT_HOME"] = str(params.parent / ".prefect-home")
    if crash_at:
        env[ENV] = crash_at
    charloop = str(Path(sys.executable).parent / "charloop")
    # Files, not pipes: a killed run's orphaned server would hold a pipe open forever.
    logs = [params.parent / f"run-{n}.{crash_at or 'clean'}.log" for n in ("out", "err")]
    with logs[0].open("w") as out, logs[1].open("w") as err:
        process = subprocess.Popen(
            [charloop, "run", "-p", str(params)],
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        try:
            process.wait(timeout=300)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    stdout, stderr = (log.read_text() for log in logs)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _markers(paths: IterationPaths) -> dict[str, float]:
    return {
        p.parent.name: p.stat().st_mtime_ns for p in paths.root.glob(f"*/{MARKER}") if p.is_file()
    }


@pytest.mark.reliability
def test_killed_loop_resumes_at_every_failpoint(tmp_path):
    data = tiny_params(
        loop={"max_iterations": 1},
        train={"max_train_steps": 6, "batch_size": 2, "checkpoint_every": 2},
    )
    params = write_params(tmp_path, data)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    project = load_project(params)
    paths = IterationPaths.of(project.workdir, 1)
    sealed: dict[str, float] = {}
    for point in POINTS:
        crashed = _run(params, point)
        SUMMARY["faults injected"] += 1
        assert crashed.returncode == -9, f"{point}: {crashed.stderr[-2000:]}"
        before = _markers(paths)
        # Stages sealed before this crash must survive it untouched.
        assert {k: before.get(k) for k in sealed} == sealed, point
        sealed = before
    final = _run(params)
    assert final.returncode == 0, final.stderr[-3000:]
    SUMMARY["runs recovered"] += len(POINTS)
    after = _markers(paths)
    assert {k: after[k] for k in sealed} == sealed, "finished stages were redone"
    train = json.loads((paths.adapter / MARKER).read_text())["summary"]
    assert train["resumed_from"] == 2, "training restarted instead of resuming"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.tracking_uri)
    versions = client.search_model_versions(f"name = '{project.params.model_name}'")
    assert len(versions) == 1, "a crashed registration left a duplicate version"
    runs = client.search_runs(
        [client.get_experiment_by_name(project.params.experiment_name).experiment_id]
    )
    assert len(runs) == 1, "the run of the crashed registration was not reused"
    # No data lost: every stage folder matches its seal, and DVC recorded the same bytes.
    lost = 0
    for folder in paths.versioned:
        record = json.loads((folder / MARKER).read_text())
        lost += tree_digest(folder, exclude=(MARKER,)) != record["digest"]
        lost += not Path(f"{folder}.dvc").is_file()
    SUMMARY["data lost"] += lost
    assert lost == 0
    assert versions[0].tags["dataset_sha256"] == tree_digest(paths.dataset, exclude=(MARKER,))


def test_a_second_loop_on_the_same_character_is_refused(make_project, prefect_harness):
    from flows.character_loop import character_loop

    project = make_project(loop={"max_iterations": 1, "lock_timeout_s": 0.5})
    locked = pytest.raises(LoopLocked, match=r"character 'kira' is locked by another run .*pid")
    with character_lock(project.character_dir, 0, "kira"), locked:
        character_loop(params_file=str(project.params_file))
    assert not project.workdir.exists(), "the refused loop must not start any stage"


def test_changed_params_start_a_new_lineage_branch(tmp_path):
    base = load_project(write_params(tmp_path / "a", tiny_params()))
    same_results = load_project(
        write_params(tmp_path / "a", tiny_params(loop={"max_iterations": 5}))
    )
    new_rank = load_project(
        write_params(tmp_path / "a", tiny_params(train={"rank": 8, "max_train_steps": 6}))
    )
    assert same_results.workdir == base.workdir  # loop settings do not change results
    assert new_rank.workdir != base.workdir and new_rank.character_dir == base.character_dir
    assert new_rank.branch.startswith("params-")


def test_bad_base_model_and_unwritable_workdir_fail_before_any_work(tmp_path):
    from charloop.lineage.preflight import preflight

    missing = load_project(
        write_params(tmp_path / "m", tiny_params(base_model={"path": "./models/nope"}))
    )
    with pytest.raises(FileNotFoundError, match="holds no diffusers pipeline"):
        preflight(missing)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a-file").write_text("x")
    blocked = load_project(
        write_params(tmp_path / "w", tiny_params(loop={"workdir": "a-file/runs"}))
    )
    with pytest.raises(PermissionError, match=r"loop\.workdir: cannot write"):
        preflight(blocked)
    result = _run(blocked.params_file)
    assert result.returncode != 0 and "loop.workdir: cannot write" in result.stderr


def test_params_in_a_subfolder_version_a_workdir_beside_it(tmp_path):
    """examples/tiny.yaml's layout: params in a subfolder, ``workdir: ../runs``."""
    from charloop.lineage import versioning
    from charloop.lineage.publish import prepare_stores

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    data = tiny_params()
    data["loop"] = {"workdir": "../runs"}
    project = load_project(write_params(tmp_path / "examples", data))
    prepare_stores(project)
    assert (tmp_path / ".dvc").is_dir() and not (tmp_path / "examples" / ".dvc").exists()
    folder = project.workdir / "iter-001" / "04_dataset"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    assert versioning.track([folder])[str(folder)].endswith(".dir")
    remote = versioning.dvc_root(tmp_path)
    assert remote == tmp_path.resolve() or remote == tmp_path
