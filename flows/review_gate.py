"""The human review gate: pause the loop until a person accepts or rejects candidates."""

from __future__ import annotations

from typing import Literal

from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL
from pydantic import Field

from charloop.params.project import Project
from charloop.stages.layout import IterationPaths
from charloop.stages.results import Filtered, Generated, Reviewed
from charloop.stages.review.stage import (
    HumanDecisions,
    ReviewTimedOut,
    load_decisions,
    save_decisions,
)
from flows.pausing import mark_running
from tasks.stages import export_review_task, review_task

DESK_PORT = 8765
"""``charloop review serve``'s default port (the link in the pause message)."""


class ReviewInput(RunInput):
    """The form a reviewer fills in (Prefect UI, or ``resume_flow_run(run_input=...)``)."""

    reviewer: str = Field(description="Who reviewed (recorded in the dataset manifest).")
    keep: list[str] = Field(default=[], description="Ids to keep, overriding the filter.")
    reject: list[str] = Field(default=[], description="Ids to reject, overriding the filter.")
    comment: str = Field(default="", description="Why (recorded with the decisions).")
    via: Literal["prefect", "web"] = Field(
        default="prefect", description="Where the answer came from (the review desk sets 'web')."
    )


def review_gate(
    project: Project, iteration: int, generated: Generated, filtered: Filtered
) -> Reviewed:
    """The review stage, pausing for a person first when ``review.enabled``.

    Decisions already applied on the desk (``charloop review apply``) are used without
    pausing, so a run stopped by ``on_timeout: fail`` continues once they exist.

    Raises:
        ReviewTimedOut: nobody answered within ``review.timeout_s`` and ``on_timeout`` is
            'fail'.
    """
    rules = project.params.review
    desk = IterationPaths.of(project.workdir, iteration).review_desk
    decisions = load_decisions(desk)
    if decisions is not None or not rules.enabled:
        return review_task(project, iteration, generated, filtered, decisions)
    sheet = export_review_task(project, iteration, generated, filtered)
    create_markdown_artifact(
        key=f"{project.params.subject}-iter-{iteration}-review".replace("_", "-"),
        markdown=_instructions(iteration, filtered, sheet, project),
        description=f"Review gate, iteration {iteration}",
    )
    try:
        answer = pause_flow_run(
            wait_for_input=ReviewInput.with_initial_data(
                description=_instructions(iteration, filtered, sheet, project), reviewer=""
            ),
            timeout=rules.timeout_s,
            poll_interval=rules.poll_interval_s,
            key=f"review-{iteration}",
        )
    except FlowPauseTimeout:
        mark_running(f"review of iteration {iteration} timed out")
        if rules.on_timeout == "fail":
            raise ReviewTimedOut(
                f"no review decisions for iteration {iteration} within {rules.timeout_s}s; "
                f"edit the 'decision' column of {sheet}, run `charloop review apply {sheet} "
                "--reviewer NAME`, then run the loop again (finished stages are reused)"
            ) from None
        get_run_logger().warning("review timed out: keeping the filter's decisions")
        return review_task(project, iteration, generated, filtered, None, timed_out=True)
    decisions = HumanDecisions(
        keep=tuple(answer.keep),
        reject=tuple(answer.reject),
        reviewer=answer.reviewer,
        comment=answer.comment,
        via=answer.via,
    )
    save_decisions(desk, decisions)  # a resumed or repeated run does not ask again
    return review_task(project, iteration, generated, filtered, decisions)


def _instructions(iteration: int, filtered: Filtered, sheet: str, project: Project) -> str:
    kept, total = filtered.kept, filtered.candidates
    desk = f"http://127.0.0.1:{DESK_PORT}/iteration/{iteration}"
    api = PREFECT_API_URL.value() or "<this run's Prefect API>"
    return "\n".join(
        [
            f"### Review iteration {iteration}: the filter kept {kept} of {total} images",
            "",
            f"**Review desk:** run `PREFECT_API_URL={api} charloop review serve -p "
            f"{project.params_file}` and open "
            f"[{desk}]({desk}): a grid of the candidates with the filter's reasons and scores; "
            "k keeps, x rejects, submitting resumes this run.",
            "",
            f"Contact sheet: `{filtered.path}/contact_sheet.png`; candidates and reasons: "
            f"`{sheet}` and the review-candidates table artifact.",
            "",
            "List ids to **keep** (rescue a rejected image) or **reject** (drop a kept one);",
            "ids you leave out keep the filter's decision.",
        ]
    )
