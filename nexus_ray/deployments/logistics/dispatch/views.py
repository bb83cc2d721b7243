"""ai-dispatch's routes under ``/logistics/v1/dispatch``.

Jobs may be submitted over HTTP as well as through the ``submit_job`` export; a caller sees and
cancels the jobs it submitted, an administrator (an operator) every job, the offers and the
rounds of the loop with their cost and timing, and may run a round at once.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import ServiceUnavailable

from . import service
from .models import DispatchJobCreate, DispatchJobRead, JobStatus, OfferRead, OfferStatus, RoundRead

SCOPES = scopes_of("puabo-nexus-ai-dispatch")
router = APIRouter()

JobId = Annotated[str, Path(max_length=128, description="The job's id.")]


def _own(principal: Principal) -> str | None:
    """None for an administrator (every job), else the caller's subject (its own jobs)."""
    return None if principal.can(SCOPES.admin) else principal.subject


@router.post("/jobs", response_model=DispatchJobRead, summary="Submit a job to dispatch (idempotent on job_id)")
async def submit_job(body: DispatchJobCreate, principal: Principal = authorize(SCOPES.write)) -> DispatchJobRead:
    job = await service.submit_job(job=body, submitted_by=principal.subject)
    return await service.get_job(job_id=job.job_id, caller=_own(principal))


@router.get("/jobs", response_model=Page[DispatchJobRead], summary="Jobs, newest first (the caller's own)")
async def list_jobs(
    status: JobStatus | None = Query(None, description="Only jobs in this state."),
    page: PageRequest = page_params(default=50, maximum=500),
    principal: Principal = authorize(SCOPES.read),
) -> Page[DispatchJobRead]:
    return await service.list_jobs(status=status, submitted_by=_own(principal), page=page)


@router.get("/jobs/{job_id}", response_model=DispatchJobRead, summary="A job with its offers")
async def get_job(job_id: JobId, principal: Principal = authorize(SCOPES.read)) -> DispatchJobRead:
    return await service.get_job(job_id=job_id, caller=_own(principal))


@router.post("/jobs/{job_id}/cancel", response_model=DispatchJobRead, summary="Cancel a job (withdraws its offer)")
async def cancel_job(job_id: JobId, principal: Principal = authorize(SCOPES.write)) -> DispatchJobRead:
    return await service.cancel_job(job_id=job_id, caller=_own(principal))


@router.get("/offers", response_model=Page[OfferRead], summary="Offers, newest first (operators)")
async def list_offers(
    job_id: str | None = Query(None, max_length=128, description="Only this job's."),
    driver_id: str | None = Query(None, max_length=128, description="Only this driver's."),
    status: OfferStatus | None = Query(None, description="Only offers in this state."),
    page: PageRequest = page_params(default=50, maximum=500),
    principal: Principal = authorize(SCOPES.admin),
) -> Page[OfferRead]:
    return await service.list_offers(job_id=job_id, driver_id=driver_id, status=status, page=page)


@router.get("/rounds", response_model=Page[RoundRead], summary="Rounds of the loop: cost and timing (operators)")
async def list_rounds(
    min_offers: int = Query(0, ge=0, le=1_000_000, description="Only rounds that made at least this many offers."),
    page: PageRequest = page_params(default=50, maximum=500),
    principal: Principal = authorize(SCOPES.admin),
) -> Page[RoundRead]:
    return await service.list_rounds(min_offers=min_offers, page=page)


@router.post("/rounds", response_model=RoundRead, summary="Run a round now (operators)")
async def run_round(principal: Principal = authorize(SCOPES.admin)) -> RoundRead:
    record = await service.run_round()
    if record is None:
        raise ServiceUnavailable("no driver source: driver-app-backend is not in this code base")
    return record
