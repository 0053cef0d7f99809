"""Scheduling settings of params.yaml: Prefect deployments, cron and ingest events."""

from __future__ import annotations

from charloop.params.base import StrictModel


class ScheduleParams(StrictModel):
    """How ``charloop deploy`` schedules automated retraining (needs a Prefect server)."""

    cron: str | None = None
    """Cron schedule for the loop deployment, e.g. '0 3 * * 1' (null: no schedule)."""
    timezone: str = "UTC"
    """Timezone of the cron schedule."""
    work_pool: str = "charloop"
    """Prefect work pool the deployments run on (created as a process pool if missing)."""
    retrain_on_ingest: bool = True
    """Start the loop when `charloop ingest` adds new reference images."""
