"""charloop run boots Prefect's temporary API early (charloop_cli.prefect_api)."""

from __future__ import annotations

import urllib.request

from charloop_cli import prefect_api


def test_configured_api_is_left_alone(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_api.start_temporary_api()() is None


def test_disabled_temporary_server_is_not_started(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    assert prefect_api.start_temporary_api()() is None


def test_temporary_api_answers_and_stops(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    started: list = []
    monkeypatch.setattr(prefect_api.atexit, "register", lambda fn, p: started.append(p))
    url = prefect_api.start_temporary_api()()
    assert url is not None and url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        assert response.status == 200
    (process,) = started
    prefect_api._stop(process)
    assert process.poll() is not None
    assert not prefect_api._healthy(url)
