"""fleet-manager's routes under ``/logistics/v1/fleet``.

A fleet belongs to the account that created it (its operator): every route on a fleet
reaches it for that account and for admin-scope holders, and is a 404 to anyone else.
Queries (nearest, area, vehicles, geofences) need the read scope; telemetry batches,
vehicles and geofences the write scope. The ownership check is a dependency, so a
stranger is refused before their body is read.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize

from . import service
from .models import (
    ID_PATTERN,
    AreaQuery,
    FleetCreate,
    FleetRead,
    FleetStats,
    GeofenceRead,
    GeofenceUpsert,
    IngestResult,
    TelemetryBatch,
    VehicleNear,
    VehicleRead,
    VehicleStatusUpdate,
    VehicleUpsert,
)

SCOPES = scopes_of("puabo-nexus-fleet-manager")
router = APIRouter()

FleetId = Annotated[str, Path(pattern=ID_PATTERN, description="The fleet's id.")]
VehicleId = Annotated[str, Path(pattern=ID_PATTERN, description="The vehicle's id.")]
GeofenceId = Annotated[str, Path(pattern=ID_PATTERN, description="The geofence's id.")]


def fleet_access(scope: str) -> Any:
    """Dependency: a principal holding ``scope`` that owns the path's fleet or holds the admin scope."""
    guard = authorize(scope)

    async def check(fleet_id: FleetId, principal: Principal = guard) -> Principal:
        await service.ensure_access(fleet_id=fleet_id, caller=principal.subject,
                                    privileged=principal.can(SCOPES.admin))
        return principal

    return Depends(check)


READ, WRITE = fleet_access(SCOPES.read), fleet_access(SCOPES.write)


@router.post("/fleets", status_code=201, response_model=FleetRead, summary="Create a fleet (the caller operates it)")
async def create_fleet(body: FleetCreate, principal: Principal = authorize(SCOPES.write)) -> FleetRead:
    return await service.create_fleet(caller=principal.subject, privileged=principal.can(SCOPES.admin),
                                      fleet_id=body.fleet_id, name=body.name, owner=body.owner)


@router.get("/fleets", response_model=Page[FleetRead], summary="The caller's fleets (all: admin scope)")
async def list_fleets(all: bool = Query(False, description="Every account's: admin scope."),
                      page: PageRequest = page_params(), principal: Principal = authorize(SCOPES.read)
                      ) -> Page[FleetRead]:
    everyone = all and principal.can(SCOPES.admin)
    return await service.list_fleets(owner=None if everyone else principal.subject, page=page)


@router.get("/fleets/{fleet_id}", response_model=FleetRead, dependencies=[READ], summary="A fleet")
async def get_fleet(fleet_id: FleetId) -> FleetRead:
    return await service.get_fleet(fleet_id=fleet_id)


@router.post("/fleets/{fleet_id}/telemetry", response_model=IngestResult, dependencies=[WRITE],
             summary="Apply a batch of position readings (one actor call per batch)")
async def telemetry(fleet_id: FleetId, body: TelemetryBatch) -> IngestResult:
    return await service.ingest(fleet_id=fleet_id, updates=body.updates)


@router.get("/fleets/{fleet_id}/nearest", response_model=list[VehicleNear], dependencies=[READ],
            summary="The k vehicles nearest a point, nearest first")
async def nearest(
    fleet_id: FleetId,
    lat: float = Query(ge=-90, le=90), lon: float = Query(ge=-180, le=180),
    k: int = Query(5, ge=1, le=100),
    available_only: bool = Query(True, description="Only vehicles whose status is available."),
    max_km: float | None = Query(None, gt=0, le=20000, description="Only vehicles within this distance."),
) -> list[VehicleNear]:
    return await service.nearest(fleet_id=fleet_id, lat=lat, lon=lon, k=k, available_only=available_only,
                                 max_km=max_km)


@router.post("/fleets/{fleet_id}/area", response_model=list[VehicleRead], dependencies=[READ],
             summary="Vehicles inside a box or a polygon")
async def area(fleet_id: FleetId, body: AreaQuery) -> list[VehicleRead]:
    polygon = None if body.polygon is None else [(v[0], v[1]) for v in body.polygon]
    return await service.in_area(fleet_id=fleet_id, bbox=body.bbox, polygon=polygon,
                                 available_only=body.available_only, limit=body.limit)


@router.get("/fleets/{fleet_id}/stats", response_model=FleetStats, dependencies=[READ],
            summary="Counts of the fleet's vehicles and telemetry")
async def stats(fleet_id: FleetId) -> FleetStats:
    return FleetStats.model_validate(await service.stats(fleet_id=fleet_id))


@router.get("/fleets/{fleet_id}/vehicles", response_model=Page[VehicleRead], dependencies=[READ],
            summary="The fleet's vehicles with their last position, by id")
async def list_vehicles(fleet_id: FleetId, page: PageRequest = page_params(default=100, maximum=1000)
                        ) -> Page[VehicleRead]:
    return await service.list_vehicles(fleet_id=fleet_id, page=page)


@router.get("/fleets/{fleet_id}/vehicles/{vehicle_id}", response_model=VehicleRead,
            dependencies=[READ], summary="A vehicle with its last position")
async def get_vehicle(fleet_id: FleetId, vehicle_id: VehicleId) -> VehicleRead:
    return await service.get_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id)


@router.put("/fleets/{fleet_id}/vehicles/{vehicle_id}", response_model=VehicleRead,
            dependencies=[WRITE], summary="Register a vehicle or replace its registration")
async def put_vehicle(fleet_id: FleetId, vehicle_id: VehicleId, body: VehicleUpsert) -> VehicleRead:
    return await service.upsert_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id, fields=body.model_dump())


@router.put("/fleets/{fleet_id}/vehicles/{vehicle_id}/status", response_model=VehicleRead,
            dependencies=[WRITE], summary="Set a vehicle's status (and driver)")
async def put_status(fleet_id: FleetId, vehicle_id: VehicleId, body: VehicleStatusUpdate) -> VehicleRead:
    return await service.set_status(fleet_id=fleet_id, vehicle_id=vehicle_id, status=body.status,
                                    driver_id=body.driver_id)


@router.delete("/fleets/{fleet_id}/vehicles/{vehicle_id}", status_code=204, response_class=Response,
               dependencies=[WRITE], summary="Remove a vehicle from the fleet")
async def delete_vehicle(fleet_id: FleetId, vehicle_id: VehicleId) -> Response:
    await service.remove_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id)
    return Response(status_code=204)


@router.get("/fleets/{fleet_id}/geofences", response_model=list[GeofenceRead],
            dependencies=[READ], summary="The fleet's geofences")
async def list_geofences(fleet_id: FleetId) -> list[GeofenceRead]:
    return await service.list_geofences(fleet_id=fleet_id)


@router.put("/fleets/{fleet_id}/geofences/{geofence_id}", response_model=GeofenceRead,
            dependencies=[WRITE],
            summary="Create or replace a geofence (crossings emit geofence.entered / geofence.exited)")
async def put_geofence(fleet_id: FleetId, geofence_id: GeofenceId, body: GeofenceUpsert) -> GeofenceRead:
    return await service.put_geofence(fleet_id=fleet_id, geofence_id=geofence_id, name=body.name,
                                      polygon=[(v[0], v[1]) for v in body.polygon])


@router.delete("/fleets/{fleet_id}/geofences/{geofence_id}", status_code=204, response_class=Response,
               dependencies=[WRITE], summary="Remove a geofence")
async def delete_geofence(fleet_id: FleetId, geofence_id: GeofenceId) -> Response:
    await service.remove_geofence(fleet_id=fleet_id, geofence_id=geofence_id)
    return Response(status_code=204)
