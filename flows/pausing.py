"""Helpers for flows that pause for a person."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.states import Running


def mark_running(message: str) -> None:
    """Take an expired pause back to Running, or the API would fail the finished flow."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(context.flow_run.id, Running(message=message), force=True)
