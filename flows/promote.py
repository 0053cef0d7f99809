"""Promotion: gates, optional human approval, then production alias, audit and release."""

from __future__ import annotations

from typing import Any, NoReturn

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from charloop.lineage.promotion import Gate, PromotionRefused
from charloop.params.project import Project, load_project
from flows.pausing import mark_running
from tasks.promotion import apply_promotion_task, audit_task, check_promotion_task, failed_gates


class ApprovalInput(RunInput):
    """The approval form (Prefect UI, or ``resume_flow_run(run_input=...)``)."""

    approver: str = Field(description="Who decides (written to the version's audit tags).")
    approve: bool = Field(default=False, description="Promote this version to production.")
    comment: str = Field(default="", description="Why (the promotion reason).")


@flow(name="promote-lora", flow_run_name="{version}", validate_parameters=True)
def promote(params_file: str, version: str, approver: str = "", reason: str = "") -> dict[str, Any]:
    """Promote a registered version to production if every gate passes.

    Raises:
        PromotionRefused: a gate failed, or approval was declined or never came; the
            registry is unchanged.
    """
    project = load_project(params_file)
    rules = project.params.promote
    name = project.params.model_name
    check = check_promotion_task(project, version)
    if failed := failed_gates(check):
        _refuse(project, version, approver, reason, failed)
    if rules.require_approval:
        passed = "; ".join(g["detail"] for g in check["gates"])
        _say_how_to_answer(name, version, rules.approval_timeout_s)
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalInput.with_initial_data(
                    description=f"Promote {name} v{version} to production? Gates: {passed}",
                    approver=approver,
                    comment=reason,
                ),
                timeout=rules.approval_timeout_s,
                poll_interval=rules.approval_poll_s,
                key=f"approve-{version}",
            )
        except FlowPauseTimeout:
            mark_running("approval timed out")
            detail = f"no decision within {rules.approval_timeout_s}s"
            _refuse(project, version, approver, reason, [Gate("approval", False, detail)])
        if not answer.approve:
            detail = f"declined by {answer.approver}: {answer.comment or 'no comment'}"
            audit_task(project, "approval-declined", version, answer.approver, answer.comment)
            _refuse(project, version, approver, reason, [Gate("approval", False, detail)])
        if not answer.approver.strip():
            detail = "approved without a named approver"
            _refuse(project, version, approver, reason, [Gate("approval", False, detail)])
        approver, reason = answer.approver, answer.comment or reason
        audit_task(project, "approved", version, approver, reason, passed)
    return apply_promotion_task(project, version, approver or "unspecified", reason)


def _refuse(project: Project, version: str, by: str, reason: str, failed: list[Gate]) -> NoReturn:
    """Record the refusal in the audit log, then raise it (the registry is unchanged)."""
    detail = "; ".join(f"{g.name}: {g.detail}" for g in failed)
    audit_task(project, "promotion-refused", version, by or "unspecified", reason, detail)
    raise PromotionRefused(project.params.model_name, version, failed)


def _say_how_to_answer(name: str, version: str, timeout_s: int) -> None:
    """Tell the person at the terminal exactly how to answer the pause."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        api = client.api_url
    get_run_logger().warning(
        "%s v%s waits for approval (up to %ds). In another terminal:\n"
        "  PREFECT_API_URL=%s charloop approve %s %s --approver NAME --reason TEXT\n"
        "  (or `charloop reject ...`), or use the form in the Prefect UI.",
        name, version, timeout_s, str(api).rstrip("/"), name, version,
    )  # fmt: skip
