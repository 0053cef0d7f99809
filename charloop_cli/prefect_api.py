"""Boot Prefect's temporary local API while the flow's modules import.

With no ``PREFECT_API_URL``, Prefect starts a temporary API server (a uvicorn subprocess
serving ``prefect.server.api.server:create_app``) at the flow's first API call and waits for
it: about 9 s on a 2-core machine, after the ~8 s it takes to import the flow (torch,
diffusers, prefect, mlflow). ``charloop run`` starts the same server first, so the two
overlap, and points the flow at it; if it does not come up, Prefect starts its own as usual.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable

logger = logging.getLogger(__name__)

# The environment Prefect itself gives its temporary server (no UI, ephemeral app).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_temporary_api(timeout_s: float = 120.0) -> Callable[[], str | None]:
    """Start the temporary API now; returns a function that waits and gives its URL.

    The waiting function returns None (and Prefect starts its own server later) when a
    Prefect API is configured, the temporary server is disabled, or this one failed.
    """
    if os.environ.get("PREFECT_API_URL") or os.environ.get(
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true"
    ).lower() in ("0", "false"):
        return lambda: None
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    command = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "error",
               "--lifespan", "on"]  # fmt: skip
    process = subprocess.Popen(
        command,
        env={**os.environ, **SERVER_ENV},
        stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    atexit.register(_stop, process)
    started = time.monotonic()

    def wait() -> str | None:
        while time.monotonic() - started < timeout_s and process.poll() is None:
            if _healthy(url):
                logger.info("temporary Prefect API on %s", url)
                return url
            time.sleep(0.1)
        logger.warning("temporary Prefect API did not start; Prefect will start its own")
        _stop(process)
        return None

    return wait


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the server when ``charloop run`` dies, even by kill -9 (atexit
    handlers do not run then, and an orphaned server would hold its port and database)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
