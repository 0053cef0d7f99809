"""Hostile inputs and tampered files: each is refused at its cause and reported.

Every test here plants one fault (a pickle, a corrupt seal, a tampered adapter file, a
hostile name, a decompression bomb...) and checks that charloop refuses it with a clear
message; :data:`SUMMARY` feeds the reliability summary CI prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from charloop.core import atomic
from charloop.params.project import ParamsError, load_project
from tests.conftest import REPO, tiny_params, write_params

SUMMARY: dict[str, int] = {"hostile inputs refused": 0, "tampered files detected": 0}


def _refused(kind: str = "hostile inputs refused") -> None:
    SUMMARY[kind] += 1


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "pwned"))


def test_a_planted_pickle_checkpoint_is_refused_and_reported(tmp_path, caplog):
    from charloop.stages.train.checkpoint import Checkpointer

    root = tmp_path / "ckpt"
    root.mkdir()
    torch.save({"step": 10, "log": {}}, root / "step-000010.pt")  # a genuine, older one
    marker = tmp_path / "ran.txt"
    (root / "step-000020.pt").write_bytes(pickle.dumps({"step": _Payload(marker)}))
    with caplog.at_level(logging.ERROR):
        state = Checkpointer(root, 10).latest()
    assert not marker.exists(), "the planted pickle ran"
    assert state is not None and state["step"] == 10  # fell back to the genuine checkpoint
    assert "step-000020.pt REFUSED" in caplog.text
    _refused("tampered files detected")


def test_no_torch_load_without_weights_only_anywhere():
    offenders = []
    for folder in ("charloop", "charloop_world", "charloop_cli", "tasks", "flows", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
                if "weights_only=True" not in match.group(1):
                    offenders.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert offenders == []


def test_a_corrupt_or_edited_seal_is_redone_and_never_read(tmp_path, caplog):
    from charloop.stages.contract import MARKER, CorruptSeal, identity, read_output
    from charloop.stages.results import Generated

    stage = identity(Generated, tmp_path / "out", "charloop.stages.generate.stage", x=1)
    with atomic.staged_dir(stage.out_dir) as staging:
        (staging / "a.txt").write_text("a")
        stage.seal(staging, images=1)
    assert stage.done() is not None and read_output(stage.out_dir, Generated).images == 1
    marker = stage.out_dir / MARKER
    good = marker.read_text()
    record = json.loads(good)
    record["summary"]["images"] = 99  # valid JSON, edited fact: the seal no longer matches
    marker.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        assert stage.done() is None and stage.cache_key() is None
    assert "seal does not match" in caplog.text
    with pytest.raises(CorruptSeal, match="seal does not match"):
        read_output(stage.out_dir, Generated)
    for garbage in ("{not json", "[]", "\x00\xff"):
        marker.write_text(garbage)
        assert stage.done() is None
        with pytest.raises(CorruptSeal):
            read_output(stage.out_dir, Generated)
        _refused("tampered files detected")
    marker.write_text(good)
    (stage.out_dir / "a.txt").write_text("edited")
    with pytest.raises(CorruptSeal, match="content does not match"):
        read_output(stage.out_dir, Generated)


def test_publish_refuses_a_folder_changed_after_its_stage(tmp_path):
    from charloop.lineage.publish import verify_seals
    from charloop.stages.contract import CorruptSeal, identity
    from charloop.stages.results import Generated

    stage = identity(Generated, tmp_path / "gen", "charloop.stages.generate.stage")
    with atomic.staged_dir(stage.out_dir) as staging:
        (staging / "a.txt").write_text("a")
        result = stage.seal(staging, images=1)

    class Results:
        def all(self):  # type: ignore[no-untyped-def]
            return [result]

    verify_seals(Results())  # type: ignore[arg-type]
    (stage.out_dir / "a.txt").write_text("tampered")
    with pytest.raises(CorruptSeal):
        verify_seals(Results())  # type: ignore[arg-type]
    _refused("tampered files detected")


def test_both_adapter_files_are_hash_checked(tmp_path):
    from charloop.core.hashing import sha256_file
    from charloop.lineage.adapter_files import adapter_file_problems
    from charloop.stages.layout import ADAPTER_WEIGHTS, KOHYA_WEIGHTS

    (tmp_path / ADAPTER_WEIGHTS).write_bytes(b"diffusers")
    (tmp_path / KOHYA_WEIGHTS).write_bytes(b"kohya")
    tags = {
        "adapter_sha256": sha256_file(tmp_path / ADAPTER_WEIGHTS),
        "kohya_sha256": sha256_file(tmp_path / KOHYA_WEIGHTS),
    }
    assert adapter_file_problems(tmp_path, tags) == []
    (tmp_path / KOHYA_WEIGHTS).write_bytes(b"kohya, tampered")
    problems = adapter_file_problems(tmp_path, tags)
    assert len(problems) == 1 and problems[0].startswith(KOHYA_WEIGHTS)
    (tmp_path / ADAPTER_WEIGHTS).unlink()
    assert len(adapter_file_problems(tmp_path, tags)) == 2
    _refused("tampered files detected")


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("registry", {"model_name": "kira's-lora"}, "model_name"),
        ("registry", {"model_name": "team/kira"}, "model_name"),
        ("registry", {"experiment": "a'b"}, "experiment"),
        ("character", {"name": "kira", "trigger": "    ", "traits": []}, "trigger"),
        ("character", {"name": "kira", "trigger": "zxq, kira", "traits": []}, "trigger"),
        ("train", {"learning_rate": float("inf")}, "learning_rate"),
        ("train", {"max_train_steps": True}, "max_train_steps"),
        ("filter", {"min_kept": 500}, "filter.min_kept=500 is more than the 8 images"),
        ("promote", {"release_dir": "../../../tmp/x"}, "release_dir"),
        ("promote", {"release_dir": "/tmp/x"}, "release_dir"),
    ],
)
def test_hostile_params_are_refused_naming_the_field(tmp_path, section, value, message):
    data = tiny_params()
    data[section] = {**data.get(section, {}), **value} if section != "character" else value
    with pytest.raises(ParamsError) as caught:
        load_project(write_params(tmp_path, data))
    assert message in str(caught.value)
    _refused()


def test_registry_lookup_errors_are_not_taken_for_no_version(tmp_path):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from charloop.lineage.registry import find_version

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert find_version(client, "kira-lora", "abc") is None  # no model yet: none
    with pytest.raises(MlflowException):
        find_version(client, "kira's-lora", "abc")  # a filter error is raised, not "none"


def test_a_run_left_running_by_a_killed_attempt_is_marked_killed(tmp_path):
    from mlflow.tracking import MlflowClient

    from charloop.lineage.registry import _end_abandoned_runs, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "charloop-kira", (tmp_path / "art").as_uri())
    client = MlflowClient(uri)
    abandoned = client.create_run(exp, tags={"lineage_key": "k1"})
    other = client.create_run(exp, tags={"lineage_key": "k2"})
    _end_abandoned_runs(client, exp, "k1")
    assert client.get_run(abandoned.info.run_id).info.status == "KILLED"
    assert client.get_run(other.info.run_id).info.status == "RUNNING"


def test_a_decompression_bomb_is_skipped_and_an_all_bad_folder_is_an_error(tmp_path, monkeypatch):
    from charloop.scenes.references import NoUsableReferences, load_references

    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (64, 64), "red").save(refs / "good.png")
    Image.new("RGB", (400, 400), "blue").save(refs / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 400x400 is > 2x the limit
    loaded = load_references(refs)
    assert loaded.files == ["good.png"] and "too large" in loaded.skipped["huge.png"]
    (refs / "good.png").write_bytes(b"not a png")
    with pytest.raises(NoUsableReferences, match="holds no readable image"):
        load_references(refs)
    _refused()


def test_preflight_refuses_an_unwritable_registry_and_an_unreachable_hub_id(tmp_path, monkeypatch):
    from charloop.lineage.preflight import ModelNotFound, NotWritable, preflight

    project = load_project(write_params(tmp_path / "p", tiny_params()))
    db = tmp_path / "p" / ".charloop" / "mlflow.db"
    preflight(project)  # creates the store
    assert db.is_file()
    if os.geteuid() != 0:  # root ignores file modes
        db.chmod(0o444)
        with pytest.raises(NotWritable, match="read-only"):
            preflight(project)
        db.chmod(0o644)
    db.write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(NotWritable, match="cannot open the registry for writing"):
        preflight(project)
    db.unlink()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = load_project(
        write_params(
            tmp_path / "h", tiny_params(base_model={"path": "charloop-test/no-such-model"})
        )
    )
    started = time.monotonic()
    with pytest.raises(ModelNotFound, match=r"base_model\.path 'charloop-test/no-such-model'"):
        preflight(hub)
    assert time.monotonic() - started < 60
    _refused()


def test_release_and_adapter_files_are_readable_by_the_team(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_text(tmp_path / "a.txt", "x")
        with atomic.staged_dir(tmp_path / "folder") as staging:
            (staging / "b.txt").write_text("y")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == atomic.FILE_MODE == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755


def test_a_killed_writers_temp_files_are_swept_and_a_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "05_adapter"
    stale = tmp_path / f".05_adapter.{dead.pid}.abc123.tmp"
    live = tmp_path / f".05_adapter.{os.getpid()}.def456.tmp"
    stale.mkdir()
    live.mkdir()
    with atomic.staged_dir(final) as staging:
        (staging / "x").write_text("x")
    assert not stale.exists() and live.exists() and (final / "x").is_file()


def test_the_temporary_prefect_api_dies_with_a_killed_parent(tmp_path):
    if sys.platform != "linux":
        pytest.skip("parent-death signal is Linux only")
    script = (
        "import subprocess, sys, time\n"
        "from charloop_cli.prefect_api import _die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " preexec_fn=_die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
        with contextlib.suppress(ChildProcessError):  # reap it if it became our zombie
            os.waitpid(child_pid, os.WNOHANG)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the server child outlived its killed parent")


def test_checkpoint_folder_is_removed_once_the_adapter_is_written(tmp_path):
    from charloop.stages.train.checkpoint import Checkpointer

    root = tmp_path / ".05_adapter.checkpoints" / "fp"
    root.mkdir(parents=True)
    (root / "step-000002.pt").write_bytes(b"x")
    Checkpointer(root, 2).clear()
    assert not root.parent.exists()


def test_audit_log_appends_every_promotion_rollback_and_refusal(tmp_path):
    from mlflow.tracking import MlflowClient

    from charloop.lineage import audit
    from charloop.lineage.chain import LineageError
    from charloop.lineage.promotion import move_to_production, rollback

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("kira-lora")
    for _ in range(2):
        client.create_model_version("kira-lora", source=str(tmp_path))
    with pytest.raises(LineageError):
        rollback(client, "kira-lora", "ana", "no previous yet")
    move_to_production(client, "kira-lora", "1", "ana", "first")
    move_to_production(client, "kira-lora", "2", "bo", "better")
    rollback(client, "kira-lora", "cy", "regression")
    move_to_production(client, "kira-lora", "2", "dee", "fixed upstream")
    audit.record(client, "kira-lora", "promotion-refused", "1", "eve", "", "min identity")
    log = audit.events(client, "kira-lora")
    assert [(e.event, e.version, e.by) for e in log] == [
        ("rollback-refused", "", "ana"),
        ("promoted", "1", "ana"),
        ("promoted", "2", "bo"),
        ("rolled-back", "1", "cy"),
        ("promoted", "2", "dee"),
        ("promotion-refused", "1", "eve"),
    ]
    assert [e.seq for e in log] == list(range(1, 7))
    v2 = client.get_model_version("kira-lora", "2").tags
    assert "rolled_back_at" not in v2 and v2["approved_by"] == "dee"  # no stale mark
    with pytest.raises(ValueError, match="unknown audit event"):
        audit.record(client, "kira-lora", "deleted", "1", "x")
