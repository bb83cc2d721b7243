"""route-optimizer's routes under ``/logistics/v1/routes``.

Submit a job (202 with its id and a ``Location``), poll it, wait for it (long poll), cancel it,
and read its solution as routes with arrival times (in the job) or as GeoJSON. A job is its
owner's: anyone else gets 404 unless they hold the admin scope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.compute import vrp
from nexus_ray.deployments.kit.idempotency import mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Conflict

from . import service
from .models import JobCreate, JobRead, JobStatus

SCOPES = scopes_of("puabo-nexus-route-optimizer")
router = APIRouter()

JobId = Annotated[str, Path(max_length=64, description="The job's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/jobs", status_code=202, response_model=JobRead, summary="Submit a routing problem to solve")
async def submit(body: JobCreate, response: Response, principal: Principal = authorize(SCOPES.write)) -> JobRead:
    job, created = await service.submit(owner=principal.subject, body=body)
    response.headers["Location"] = f"jobs/{job.id}"
    mark_replayed(response, not created)
    return job


@router.get("/jobs", response_model=Page[JobRead], summary="The caller's jobs, newest first")
async def list_jobs(
    status: JobStatus | None = Query(None, description="Only jobs in this state."),
    page: PageRequest = page_params(default=20, maximum=100),
    principal: Principal = authorize(SCOPES.read),
) -> Page[JobRead]:
    return await service.list_jobs(owner=principal.subject, status=status, page=page)


@router.get("/jobs/{job_id}", response_model=JobRead, summary="A job: its state and, once solved, its routes")
async def get_job(job_id: JobId, principal: Principal = authorize(SCOPES.read)) -> JobRead:
    return await service.get(job_id=job_id, caller=principal.subject, admin=_admin(principal))


@router.get("/jobs/{job_id}/wait", response_model=JobRead, summary="The job once it has ended (long poll)")
async def wait_job(
    job_id: JobId,
    timeout_s: float = Query(30.0, ge=0, le=60, description="Answer after this long even if it is still open."),
    principal: Principal = authorize(SCOPES.read),
) -> JobRead:
    return await service.wait(job_id=job_id, caller=principal.subject, admin=_admin(principal), timeout_s=timeout_s)


@router.post("/jobs/{job_id}/cancel", response_model=JobRead, summary="Cancel a queued or running job")
async def cancel_job(job_id: JobId, principal: Principal = authorize(SCOPES.write)) -> JobRead:
    return await service.cancel(job_id=job_id, caller=principal.subject, admin=_admin(principal))


@router.get("/jobs/{job_id}/geojson", summary="The solution as a GeoJSON FeatureCollection")
async def job_geojson(
    job_id: JobId,
    anchor_lat: float = Query(0.0, ge=-80, le=80, description="Planar problems: latitude of the planar origin."),
    anchor_lon: float = Query(0.0, ge=-180, le=180, description="Planar problems: longitude of the planar origin."),
    unit_km: float = Query(1.0, gt=0, le=1000, description="Planar problems: kilometres per planar unit."),
    principal: Principal = authorize(SCOPES.read),
) -> dict[str, Any]:
    problem, job = await service.problem_of(job_id=job_id, caller=principal.subject, admin=_admin(principal))
    if job.solution is None:
        raise Conflict(f"job {job_id} has no solution ({job.status})")
    return vrp.to_geojson(problem, job.solution, anchor=(anchor_lat, anchor_lon), unit_km=unit_km)


@router.get("/schema/problem", summary="The JSON schema of the problem format")
async def problem_schema(principal: Principal = authorize(SCOPES.read)) -> dict[str, Any]:
    return vrp.VrpProblem.model_json_schema()
