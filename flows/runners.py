"""Task runners from params: Prefect's thread pool, or Dask (a LocalCluster or a cluster)."""

from __future__ import annotations

from typing import Any

from charloop.params.scale import ScaleParams


def task_runner_for(scale: ScaleParams) -> Any:
    """The Prefect task runner ``scale`` asks for.

    Dask workers are processes: each loads the base pipeline once and reuses it for every
    shard it renders. Ray works the same way through ``prefect_ray.RayTaskRunner``.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    if scale.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if scale.dask_address:
            return DaskTaskRunner(address=scale.dask_address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": scale.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            },
        )
    return ThreadPoolTaskRunner(max_workers=max(scale.shards, 4))
