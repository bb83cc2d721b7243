"""driver-app-backend's routes under ``/logistics/v1/drivers``.

Who may do what: a driver (the account a driver record names) reads and acts on their own
record, shifts, offers, earnings and locations with the service's read/write scopes; anyone
else gets 404 for them unless they hold the admin scope (operators). Listing all drivers
and the dispatch view of available drivers are the admin's. The socket ``/drivers/me/live``
is in :mod:`.live`.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, WebSocket

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.deployments.logistics.fleet.models import ID_PATTERN
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.edge.websocket import ws_authorize

from . import live, service
from .models import (
    DriverCreate,
    DriverRead,
    DriverState,
    EarningRead,
    LocationAck,
    LocationBatch,
    OfferAnswer,
    OfferRead,
    ShiftRead,
    ShiftStart,
    VehicleAssignment,
)

SCOPES = scopes_of("puabo-nexus-driver-app-backend")
router = APIRouter()

DriverId = Annotated[UUID, Path(description="The driver's id.")]
OfferId = Annotated[str, Path(min_length=1, max_length=128, description="The offer's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/drivers", status_code=201, response_model=DriverRead,
             summary="Register a driver of a fleet (by the fleet's operator, or an admin)")
async def create_driver(body: DriverCreate, principal: Principal = authorize(SCOPES.write)) -> DriverRead:
    return await service.create_driver(
        caller=principal.subject, privileged=_admin(principal), user_id=body.user_id, name=body.name,
        fleet_id=body.fleet_id, vehicle_id=body.vehicle_id, vehicle_type=body.vehicle_type,
        capacity_kg=body.capacity_kg)


@router.get("/drivers", response_model=Page[DriverRead], dependencies=[authorize(SCOPES.admin)],
            summary="All drivers, of one fleet or all")
async def list_drivers(fleet_id: str | None = Query(None, pattern=ID_PATTERN),
                       page: PageRequest = page_params(default=100, maximum=1000)) -> Page[DriverRead]:
    return await service.list_drivers(fleet_id=fleet_id, page=page)


@router.get("/drivers/me", response_model=DriverRead, summary="The caller's driver record")
async def me(principal: Principal = authorize(SCOPES.read)) -> DriverRead:
    return await service.driver_of_user(user_id=principal.subject)


@router.get("/available", response_model=list[DriverState], dependencies=[authorize(SCOPES.admin)],
            summary="Drivers dispatch may offer a job to (on shift, not busy, position known)")
async def available(fleet_id: str | None = Query(None, pattern=ID_PATTERN)) -> list[DriverState]:
    return await service.available_drivers(fleet_id=fleet_id)


@router.get("/drivers/{driver_id}", response_model=DriverRead, summary="A driver")
async def get_driver(driver_id: DriverId, principal: Principal = authorize(SCOPES.read)) -> DriverRead:
    return await service.get_driver(driver_id=driver_id, caller=principal.subject, privileged=_admin(principal))


@router.put("/drivers/{driver_id}/vehicle", response_model=DriverRead, summary="Change vehicle (off shift only)")
async def put_vehicle(driver_id: DriverId, body: VehicleAssignment, principal: Principal = authorize(SCOPES.write)
                      ) -> DriverRead:
    return await service.set_vehicle(
        driver_id=driver_id, caller=principal.subject, privileged=_admin(principal), fleet_id=body.fleet_id,
        vehicle_id=body.vehicle_id, vehicle_type=body.vehicle_type, capacity_kg=body.capacity_kg)


@router.post("/drivers/{driver_id}/shifts", status_code=201, response_model=ShiftRead,
             summary="Start a shift (409 while one is open)")
async def start_shift(driver_id: DriverId, body: ShiftStart, principal: Principal = authorize(SCOPES.write)
                      ) -> ShiftRead:
    return await service.start_shift(driver_id=driver_id, caller=principal.subject, privileged=_admin(principal),
                                     hours=body.hours)


@router.post("/drivers/{driver_id}/shifts/end", response_model=ShiftRead,
             summary="End the open shift (409 if none, or while a job is under way)")
async def end_shift(driver_id: DriverId, principal: Principal = authorize(SCOPES.write)) -> ShiftRead:
    return await service.end_shift(driver_id=driver_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/drivers/{driver_id}/shifts", response_model=Page[ShiftRead], summary="A driver's shifts, newest first")
async def list_shifts(driver_id: DriverId, page: PageRequest = page_params(),
                      principal: Principal = authorize(SCOPES.read)) -> Page[ShiftRead]:
    return await service.list_shifts(driver_id=driver_id, caller=principal.subject, privileged=_admin(principal),
                                     page=page)


@router.post("/drivers/{driver_id}/locations", response_model=LocationAck,
             summary="Location readings of the driver's vehicle (into the fleet)")
async def locations(driver_id: DriverId, body: LocationBatch, principal: Principal = authorize(SCOPES.write)
                    ) -> LocationAck:
    applied = await service.report_locations_of(driver_id=driver_id, caller=principal.subject,
                                                privileged=_admin(principal), points=body.points)
    return LocationAck(applied=applied)


@router.get("/drivers/{driver_id}/offers", response_model=Page[OfferRead],
            summary="The driver's job offers, newest first (the socket's HTTP fallback)")
async def list_offers(driver_id: DriverId, pending: bool = Query(False, description="Only offers still open."),
                      page: PageRequest = page_params(), principal: Principal = authorize(SCOPES.read)
                      ) -> Page[OfferRead]:
    return await service.list_offers(driver_id=driver_id, caller=principal.subject, privileged=_admin(principal),
                                     pending_only=pending, page=page)


@router.post("/drivers/{driver_id}/offers/{offer_id}/accept", response_model=OfferRead, summary="Accept an offer")
async def accept(driver_id: DriverId, offer_id: OfferId, principal: Principal = authorize(SCOPES.write)
                 ) -> OfferRead:
    return await service.answer_offer(driver_id=driver_id, offer_id=offer_id, accepted=True, reason=None,
                                      caller=principal.subject, privileged=_admin(principal))


@router.post("/drivers/{driver_id}/offers/{offer_id}/reject", response_model=OfferRead, summary="Reject an offer")
async def reject(driver_id: DriverId, offer_id: OfferId, body: OfferAnswer,
                 principal: Principal = authorize(SCOPES.write)) -> OfferRead:
    return await service.answer_offer(driver_id=driver_id, offer_id=offer_id, accepted=False, reason=body.reason,
                                      caller=principal.subject, privileged=_admin(principal))


@router.get("/drivers/{driver_id}/earnings", response_model=Page[EarningRead],
            summary="The driver's earnings per job, newest first")
async def list_earnings(driver_id: DriverId, page: PageRequest = page_params(),
                        principal: Principal = authorize(SCOPES.read)) -> Page[EarningRead]:
    return await service.list_earnings(driver_id=driver_id, caller=principal.subject, privileged=_admin(principal),
                                       page=page)


@router.websocket("/drivers/me/live", name="driver_live")
async def driver_live(websocket: WebSocket, principal: Principal = ws_authorize(SCOPES.write)) -> None:
    """The caller's driver socket: offers pushed, locations and answers sent (see :mod:`.live`)."""
    await live.serve_driver(websocket, principal.subject)
