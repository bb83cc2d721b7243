"""scheduler's schemas: schedules and runs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

MissedPolicy = Literal["skip", "run_once", "run_all"]
TargetType = Literal["job", "task"]
RunStatus = Literal["pending", "running", "succeeded", "failed", "skipped"]


class ScheduleBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="Unique name of the schedule.")
    cron: str | None = Field(None, max_length=100, description="Five-field cron expression (or @daily...); "
                             "omit for a one-off schedule with run_at.")
    timezone: str = Field("UTC", max_length=64, description="IANA time zone the cron expression is read in.")
    run_at: datetime | None = Field(None, description="When a one-off schedule runs (aware datetime).")
    target_type: TargetType = Field(..., description="`job`: a Ray job (module of nexus_ray.jobs); `task`: a "
                                    "registered internal task.")
    target: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.]+$",
                        description="Job module (e.g. `housekeeping`) or task name (e.g. `scheduler.noop`).")
    args: dict[str, Any] = Field(default_factory=dict, description="Job: `{\"argv\": [...]}`; task: keyword "
                                 "arguments.")
    missed_policy: MissedPolicy = Field("run_once", description="After downtime: `skip` the missed due times, "
                                        "`run_once` for all of them, or `run_all` of them.")


class ScheduleCreate(ScheduleBase):
    pass


class ScheduleRead(ScheduleBase):
    model_config = ConfigDict(extra="ignore")

    id: UUID
    kind: Literal["cron", "once"]
    paused: bool
    next_due_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime


class RunRead(BaseModel):
    id: UUID
    schedule_id: UUID
    due_at: datetime
    trigger: Literal["schedule", "missed", "manual"]
    status: RunStatus
    attempt: int
    submission_id: str | None = Field(None, description="The Ray job's submission id (job targets).")
    logs_url: str | None = Field(None, description="Where the Ray job's logs are (runtime.jobs.logs_url).")
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
