"""scheduler on a real Ray cluster: a due cron schedule submits its Ray job, which runs, and the run is recorded
with the job's status, duration and logs link."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from nexus_ray.deployments.platform.scheduler import service
from nexus_ray.deployments.platform.scheduler.models import ScheduleCreate
from nexus_ray.runtime import jobs

pytestmark = pytest.mark.e2e


async def test_a_cron_schedule_submits_a_ray_job_that_runs_and_is_recorded(ray_cluster, migrated, until):
    from nexus_ray.stores import postgres

    body = ScheduleCreate(name=f"e2e-housekeeping-{uuid.uuid4().hex[:8]}", cron="*/5 * * * *",
                          timezone="Europe/Berlin", target_type="job", target="housekeeping",
                          args={"argv": ["--run-retention-days", "30"]}, missed_policy="skip")
    schedule = await service.create_schedule(caller="e2e", body=body)
    # Its due time, on the scheduler's clock.
    await service.Loop().step(now=schedule.next_due_at + timedelta(seconds=1), wait=True)
    p = await postgres.pool()

    async def finished():
        row = await p.fetchrow("SELECT * FROM scheduler_runs WHERE schedule_id = $1", schedule.id)
        return row if row is not None and row["status"] in ("succeeded", "failed") else None

    run = await until(finished, within_s=120, every=0.5)  # another loop of this session may carry it
    assert run["status"] == "succeeded", run["error"]
    assert run["submission_id"] == f"nexus-sched-{run['id']}" and run["trigger"] == "schedule"
    assert run["logs_url"] == jobs.logs_url(run["submission_id"]) and run["duration_s"] > 0
    info = jobs.info(run["submission_id"])
    assert info.status == "SUCCEEDED" and info.metadata["schedule"] == body.name
    assert "scheduler_runs" in jobs.progress(run["submission_id"])["result"]
