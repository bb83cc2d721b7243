"""puabo-nexus-ai-dispatch: the loop that matches delivery jobs to drivers at minimum total cost.

Routes in :mod:`.views`; the loop, offers and exports' logic in :mod:`.service` (its docstring
says how one job never gets two live offers). ``background`` runs the loop (live on one replica
at a time, by lease). Other services call ``exports`` with :func:`nexus_ray.deployments.kit.calls.call`:
deliveries submit and cancel jobs, driver-app-backend reports the drivers' answers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import service
from .models import DispatchJobCreate, DispatchJobRead
from .views import router

background = [service.dispatch_forever]


async def submit_job(
    *, job_id: str, pickup: dict[str, float], dropoff: dict[str, float], weight_kg: float,
    vehicle_types: list[str] | None = None, ready_at: datetime | None = None, reference: dict[str, Any] | None = None,
    submitted_by: str = "puabo-nexus",
) -> DispatchJobRead:
    """Record a job to dispatch (idempotent on ``job_id``)."""
    job = DispatchJobCreate.model_validate({
        "job_id": job_id, "pickup": pickup, "dropoff": dropoff, "weight_kg": weight_kg,
        "vehicle_types": vehicle_types, "ready_at": ready_at, "reference": reference or {},
    })
    return await service.submit_job(job=job, submitted_by=submitted_by)


async def offer_answered(*, offer_id: str, driver_id: str, accepted: bool) -> DispatchJobRead:
    """A driver's answer to an offer (accepted: the job is assigned and ``dispatch.assigned`` emitted)."""
    return await service.offer_answered(offer_id=offer_id, driver_id=str(driver_id), accepted=accepted)


async def cancel_job(*, job_id: str) -> DispatchJobRead:
    """Cancel a job; its live offer is withdrawn."""
    return await service.cancel_job(job_id=job_id)


#: What other services may call (nexus_ray.deployments.kit.calls.call).
exports = {"submit_job": submit_job, "offer_answered": offer_answered, "cancel_job": cancel_job}

__all__ = ["background", "exports", "router"]
