"""Deployments on a real Prefect server: ingesting references triggers a retraining run.

Starts ``prefect server start`` on loopback and a process worker, runs ``charloop deploy``
and ``charloop ingest``, waits for the triggered loop run to complete on the tiny model,
then stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from charloop_cli.main import app
from tests.conftest import tiny_params, write_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("w")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=handle, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_ingest_event_triggers_a_deployed_loop_run(tmp_path, monkeypatch):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    server = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    worker = None
    try:
        for _ in range(240):
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{api}/health", timeout=2).status == 200:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("prefect server did not start: " + (tmp_path / "server.log").read_text())
        for key in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_UI_ENABLED"):
            monkeypatch.setenv(key, env[key])
        subprocess.run(["git", "init", "-q", str(tmp_path / "studio")], check=True)
        data = tiny_params(
            character=tiny_params()["character"] | {"references": "refs"},
            loop={"max_iterations": 1},
            schedule={"cron": "0 3 * * 1", "work_pool": "charloop-test"},
        )
        params = write_params(tmp_path / "studio", data)
        runner = CliRunner()
        deployed = runner.invoke(app, ["deploy", "-p", str(params)])
        assert deployed.exit_code == 0, deployed.output
        worker = _start(
            [str(BIN / "prefect"), "worker", "start", "--pool", "charloop-test"],
            env,
            tmp_path / "worker.log",
        )
        new = tmp_path / "new-art"
        new.mkdir()
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(new / "kira.png")
        (new / "notes.txt").write_text("not an image")
        ingested = runner.invoke(app, ["ingest", str(new), "-p", str(params)])
        assert ingested.exit_code == 0, ingested.output
        assert "ingested 1 image" in ingested.output and "skipped notes.txt" in ingested.output
        state = _wait_for_triggered_run("character-loop", "kira-loop", 600)
        assert state == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
        assert (tmp_path / "studio" / ".charloop" / "mlflow.db").is_file()
        again = runner.invoke(app, ["ingest", str(new), "-p", str(params)])
        assert "already in the references as kira.png" in again.output
        assert "emitted" not in again.output
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)


def _wait_for_triggered_run(flow: str, deployment: str, timeout_s: float) -> str:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(f"{flow}/{deployment}")
        assert target.schedules and target.schedules[0].schedule.cron == "0 3 * * 1"
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs() if r.deployment_id == target.id]
            triggered = [r for r in runs if r.state and r.state.type.value != "SCHEDULED"]
            for run in triggered:
                if run.state.is_final():
                    return run.state.type.value
            time.sleep(2)
    return "TIMEOUT"
