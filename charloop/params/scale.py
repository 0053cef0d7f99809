"""Scale-out settings of params.yaml: the Prefect task runner and generation shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from charloop.params.base import StrictModel


class ScaleParams(StrictModel):
    """How the loop fans work out (training scale-out is ``accelerate launch``)."""

    task_runner: Literal["threads", "dask"] = "threads"
    """'threads': Prefect's thread pool in the flow's process; 'dask': a Dask cluster, one
    base pipeline per worker process (Ray: see README)."""
    dask_address: str | None = None
    """Scheduler of an existing Dask cluster (tcp://host:8786); null starts a LocalCluster."""
    workers: int = Field(default=2, ge=1)
    """Worker processes of the LocalCluster."""
    shards: int = Field(default=1, ge=1)
    """Generation tasks per iteration (1: one task renders everything)."""
