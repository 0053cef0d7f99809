"""Prefect deployments for automated retraining: cron schedules and ingest events.

Needs a real Prefect API (``prefect server start`` or Prefect Cloud, via
``PREFECT_API_URL``) and a worker on the work pool; see ``prefect.yaml`` for process,
docker and kubernetes pools.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from charloop.params.project import Project

INGEST_EVENT = "charloop.references.ingested"
CODE_ROOT = Path(__file__).resolve().parents[1]


def resource_id(character: str) -> str:
    """The Prefect event resource that names one character."""
    return f"charloop.character.{character}"


def ensure_work_pool(name: str) -> None:
    """Create a process work pool named ``name`` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def deploy(project: Project) -> dict[str, str]:
    """Create (or update) the loop and promotion deployments of ``project``'s character.

    The loop deployment runs on the cron in ``schedule.cron`` and, with
    ``schedule.retrain_on_ingest``, whenever ``charloop ingest`` emits an ingest event for
    this character. Returns deployment names and ids.
    """
    from prefect import Flow
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    rules = project.params.schedule
    name = project.params.subject
    params = {"params_file": str(project.params_file)}
    ensure_work_pool(rules.work_pool)
    triggers: list[Any] = []
    if rules.retrain_on_ingest:
        triggers.append(
            DeploymentEventTrigger(
                name=f"{name}-references-ingested",
                expect={INGEST_EVENT},
                match={"prefect.resource.id": resource_id(name)},
                parameters=params,
            )
        )
    schedules = [Cron(rules.cron, timezone=rules.timezone)] if rules.cron else None
    common: dict[str, Any] = dict(
        work_pool_name=rules.work_pool, build=False, push=False, print_next_steps=False
    )
    loop: Any = Flow.from_source(str(CODE_ROOT), "flows/character_loop.py:character_loop")
    loop_id = loop.deploy(
        name=f"{name}-loop",
        schedules=schedules,
        triggers=triggers,
        parameters=params,
        description=f"charloop retraining of {name}",
        **common,
    )
    promote: Any = Flow.from_source(str(CODE_ROOT), "flows/promote.py:promote")
    promote_id = promote.deploy(
        name=f"{name}-promote",
        parameters=params,
        description=f"promote a {name} LoRA version (pass 'version')",
        enforce_parameter_schema=False,
        **common,
    )
    return {
        f"character-loop/{name}-loop": str(loop_id),
        f"promote-lora/{name}-promote": str(promote_id),
    }


def emit_ingested(character: str, added: list[str], references_md5: str | None) -> None:
    """Tell Prefect that new reference images arrived (triggers the loop deployment)."""
    from prefect.events import emit_event

    emit_event(
        event=INGEST_EVENT,
        resource={
            "prefect.resource.id": resource_id(character),
            "prefect.resource.name": character,
        },
        payload={"added": added, "references_md5": references_md5},
    )
