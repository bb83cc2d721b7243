"""route-optimizer's own settings (variables ``NEXUS_ROUTES_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class RoutesSettings(ServiceSettings):
    """How many solves a replica runs at once, limits of a job, and how runners watch their jobs."""

    routes_parallel: int = Field(
        4, ge=1, le=256, description="Solve tasks one replica's runner keeps in flight (each a Ray task of 1 CPU).",
    )
    routes_time_limit_max_s: float = Field(300.0, gt=0, description="Largest time limit a job may ask for, seconds.")
    routes_poll_s: float = Field(
        1.0, gt=0, description="How often a runner looks for queued jobs, heartbeats and cancellations, seconds.",
    )
    routes_stale_s: float = Field(
        30.0, gt=0, description="A running job not heartbeaten for this long (its replica died) is run again.",
    )
    routes_max_attempts: int = Field(3, ge=1, description="Runs of one job before it is failed.")
