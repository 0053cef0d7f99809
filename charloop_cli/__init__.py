"""The ``charloop`` command: the application layer above flows, tasks and the library."""

import os

# A temporary Prefect server charloop starts (or Prefect starts for it) must not phone home:
# offline its telemetry heartbeat fails and fills the terminal with sqlite lock tracebacks.
# Set before anything imports Prefect; a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
