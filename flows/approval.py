"""Answer a paused promotion from a terminal: ``charloop approve`` / ``charloop reject``.

The promotion flow (``flows/promote.py``) pauses with a keyed input form; these helpers
find that paused run on the Prefect API (``PREFECT_API_URL``, printed by the paused
promotion) and resume it with the answer, as the Prefect UI's form would.
"""

from __future__ import annotations

from typing import Any

from charloop.core.errors import BadInput


class NoPausedPromotion(BadInput):
    """No promotion of that version is waiting for an answer on this Prefect API."""


def paused_promotion(version: str) -> Any:
    """The paused ``promote-lora`` run for ``version`` (its run name is the version).

    Raises:
        NoPausedPromotion: none is paused.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-lora"])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[str(version)])),
        )
        api = client.api_url
    paused = [r for r in runs if r.state is not None and r.state.is_paused()]
    if not paused:
        raise NoPausedPromotion(
            f"no promotion of version {version} is waiting for approval on the Prefect API "
            f"at {api}; set PREFECT_API_URL to the one the paused `charloop promote` printed"
        )
    return paused[0]


def answer(version: str, approve: bool, approver: str, reason: str) -> str:
    """Resume the paused promotion of ``version`` with a decision; returns the run's name."""
    from prefect.flow_runs import resume_flow_run

    if not approver.strip():
        raise BadInput("--approver is required: the decision is recorded in the audit log")
    run = paused_promotion(version)
    resume_flow_run(run.id, run_input={"approver": approver, "approve": approve, "comment": reason})
    return str(run.name)
