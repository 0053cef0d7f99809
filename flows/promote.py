"""Promotion: gates, optional human approval, then production alias, audit and release."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from charloop.lineage.promotion import Gate, PromotionRefused
from charloop.params.project import load_project
from flows.pausing import mark_running
from tasks.promotion import apply_promotion_task, check_promotion_task, failed_gates


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
        raise PromotionRefused(name, version, failed)
    if rules.require_approval:
        passed = "; ".join(g["detail"] for g in check["gates"])
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
            raise PromotionRefused(name, version, [Gate("approval", False, detail)]) from None
        if not answer.approve:
            detail = f"declined by {answer.approver}: {answer.comment or 'no comment'}"
            raise PromotionRefused(name, version, [Gate("approval", False, detail)])
        approver, reason = answer.approver, answer.comment or reason
    return apply_promotion_task(
        project, version, approver or "unspecified", reason, check["adapter_dir"]
    )
