"""scheduler's own settings (variables ``NEXUS_SCHEDULER_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class SchedulerSettings(ServiceSettings):
    """How often the loop looks for due work, how long a lease lasts, what counts as missed."""

    scheduler_enabled: bool = Field(True, description="Run the scheduler loop in this process's background.")
    scheduler_tick_s: float = Field(1.0, gt=0, description="Seconds between two looks for due schedules and runs.")
    scheduler_lease_s: float = Field(
        30.0, gt=0, description="Lifetime of a run's lease, seconds; the holder renews it every third of it. A "
        "holder that crashed is replaced this long after its last renewal.")
    scheduler_misfire_grace_s: float = Field(
        60.0, ge=0, description="A due time older than this when the loop plans it was missed (downtime): the "
        "schedule's missed-run policy decides whether it runs.")
    scheduler_catchup_max: int = Field(
        100, ge=1, description="At most this many missed runs are started (run_all) or recorded (skip) at once.")
    scheduler_job_poll_s: float = Field(1.0, gt=0, description="Seconds between two looks at a live Ray job.")
    scheduler_run_retention_days: int = Field(
        90, ge=1, description="Finished runs older than this are purged by the housekeeping job.")
    scheduler_concurrency: int = Field(8, ge=1, description="Runs one loop carries at once.")
