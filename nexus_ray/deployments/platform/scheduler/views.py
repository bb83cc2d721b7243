"""scheduler's routes under ``/platform/v1/scheduler``.

Creating a schedule needs the write scope; a schedule and its runs are visible to whoever created it
and to holders of the admin scope (a 404 to anyone else). Pause, resume and trigger need the write
scope on one's own schedules (admin on any); deleting one needs admin.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize

from . import service, tasks
from .models import RunRead, ScheduleCreate, ScheduleRead

SCOPES = scopes_of("scheduler")
router = APIRouter()

ScheduleId = Annotated[UUID, Path(description="The schedule's id.")]
RunId = Annotated[UUID, Path(description="The run's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/schedules", status_code=201, response_model=ScheduleRead, summary="Create a cron or one-off schedule")
async def create(body: ScheduleCreate, principal: Principal = authorize(SCOPES.write)) -> ScheduleRead:
    return await service.create_schedule(caller=principal.subject, body=body)


@router.get("/schedules", response_model=Page[ScheduleRead], summary="Schedules (the caller's; all for admin)")
async def list_schedules(page: PageRequest = page_params(), principal: Principal = authorize(SCOPES.read)
                         ) -> Page[ScheduleRead]:
    return await service.list_schedules(caller=principal.subject, privileged=_admin(principal), page=page)


@router.get("/schedules/{schedule_id}", response_model=ScheduleRead, summary="A schedule")
async def get(schedule_id: ScheduleId, principal: Principal = authorize(SCOPES.read)) -> ScheduleRead:
    return await service.get_schedule(schedule_id=schedule_id, caller=principal.subject,
                                      privileged=_admin(principal))


@router.delete("/schedules/{schedule_id}", status_code=204, summary="Delete a schedule and its history")
async def delete(schedule_id: ScheduleId, principal: Principal = authorize(SCOPES.admin)) -> None:
    await service.delete_schedule(schedule_id=schedule_id, caller=principal.subject, privileged=True)


@router.post("/schedules/{schedule_id}/pause", response_model=ScheduleRead, summary="Pause (idempotent)")
async def pause(schedule_id: ScheduleId, principal: Principal = authorize(SCOPES.write)) -> ScheduleRead:
    return await service.set_paused(schedule_id=schedule_id, paused=True, caller=principal.subject,
                                    privileged=_admin(principal))


@router.post("/schedules/{schedule_id}/resume", response_model=ScheduleRead,
             summary="Resume, planned from now (idempotent)")
async def resume(schedule_id: ScheduleId, principal: Principal = authorize(SCOPES.write)) -> ScheduleRead:
    return await service.set_paused(schedule_id=schedule_id, paused=False, caller=principal.subject,
                                    privileged=_admin(principal))


@router.post("/schedules/{schedule_id}/trigger", status_code=202, response_model=RunRead, summary="Run it now")
async def trigger(schedule_id: ScheduleId, principal: Principal = authorize(SCOPES.write)) -> RunRead:
    return await service.trigger(schedule_id=schedule_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/schedules/{schedule_id}/runs", response_model=Page[RunRead], summary="Run history, latest first")
async def runs(schedule_id: ScheduleId, page: PageRequest = page_params(),
               principal: Principal = authorize(SCOPES.read)) -> Page[RunRead]:
    return await service.list_runs(schedule_id=schedule_id, caller=principal.subject, privileged=_admin(principal),
                                   page=page)


@router.get("/runs/{run_id}", response_model=RunRead, summary="A run: status, duration, the job's logs link")
async def run(run_id: RunId, principal: Principal = authorize(SCOPES.read)) -> RunRead:
    return await service.get_run(run_id=run_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/tasks", response_model=list[str], dependencies=[authorize(SCOPES.read)],
            summary="Names of the internal tasks schedules may run")
async def task_names() -> list[str]:
    return tasks.names()
