"""fleet-manager's routes under ``/logistics/v1/fleet``.

Who may do what: queries (nearest, area, vehicles, geofences) need the read scope;
telemetry batches the write scope (devices and the driver app's backend send them);
registering vehicles and geofences, and changing a vehicle's status by hand, the admin
scope (fleet operators). Fleets are the platform's, not a user's: there is no per-user
ownership below the scopes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import authorize

from . import service
from .models import (
    ID_PATTERN,
    AreaQuery,
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


@router.post("/fleets/{fleet_id}/telemetry", response_model=IngestResult, dependencies=[authorize(SCOPES.write)],
             summary="Apply a batch of position readings (one actor call per batch)")
async def telemetry(fleet_id: FleetId, body: TelemetryBatch) -> IngestResult:
    return await service.ingest(fleet_id=fleet_id, updates=body.updates)


@router.get("/fleets/{fleet_id}/nearest", response_model=list[VehicleNear], dependencies=[authorize(SCOPES.read)],
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


@router.post("/fleets/{fleet_id}/area", response_model=list[VehicleRead], dependencies=[authorize(SCOPES.read)],
             summary="Vehicles inside a box or a polygon")
async def area(fleet_id: FleetId, body: AreaQuery) -> list[VehicleRead]:
    return await service.in_area(fleet_id=fleet_id, bbox=body.bbox, polygon=body.polygon,
                                 available_only=body.available_only, limit=body.limit)


@router.get("/fleets/{fleet_id}/stats", response_model=FleetStats, dependencies=[authorize(SCOPES.read)],
            summary="Counts of the fleet's vehicles and telemetry")
async def stats(fleet_id: FleetId) -> FleetStats:
    return FleetStats.model_validate(await service.stats(fleet_id=fleet_id))


@router.get("/fleets/{fleet_id}/vehicles", response_model=Page[VehicleRead], dependencies=[authorize(SCOPES.read)],
            summary="The fleet's vehicles with their last position, by id")
async def list_vehicles(fleet_id: FleetId, page: PageRequest = page_params(default=100, maximum=1000)
                        ) -> Page[VehicleRead]:
    return await service.list_vehicles(fleet_id=fleet_id, page=page)


@router.get("/fleets/{fleet_id}/vehicles/{vehicle_id}", response_model=VehicleRead,
            dependencies=[authorize(SCOPES.read)], summary="A vehicle with its last position")
async def get_vehicle(fleet_id: FleetId, vehicle_id: VehicleId) -> VehicleRead:
    return await service.get_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id)


@router.put("/fleets/{fleet_id}/vehicles/{vehicle_id}", response_model=VehicleRead,
            dependencies=[authorize(SCOPES.admin)], summary="Register a vehicle or replace its registration")
async def put_vehicle(fleet_id: FleetId, vehicle_id: VehicleId, body: VehicleUpsert) -> VehicleRead:
    return await service.upsert_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id, fields=body.model_dump())


@router.put("/fleets/{fleet_id}/vehicles/{vehicle_id}/status", response_model=VehicleRead,
            dependencies=[authorize(SCOPES.admin)], summary="Set a vehicle's status (and driver)")
async def put_status(fleet_id: FleetId, vehicle_id: VehicleId, body: VehicleStatusUpdate) -> VehicleRead:
    return await service.set_status(fleet_id=fleet_id, vehicle_id=vehicle_id, status=body.status,
                                    driver_id=body.driver_id)


@router.delete("/fleets/{fleet_id}/vehicles/{vehicle_id}", status_code=204, response_class=Response,
               dependencies=[authorize(SCOPES.admin)], summary="Remove a vehicle from the fleet")
async def delete_vehicle(fleet_id: FleetId, vehicle_id: VehicleId) -> Response:
    await service.remove_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id)
    return Response(status_code=204)


@router.get("/fleets/{fleet_id}/geofences", response_model=list[GeofenceRead],
            dependencies=[authorize(SCOPES.read)], summary="The fleet's geofences")
async def list_geofences(fleet_id: FleetId) -> list[GeofenceRead]:
    return await service.list_geofences(fleet_id=fleet_id)


@router.put("/fleets/{fleet_id}/geofences/{geofence_id}", response_model=GeofenceRead,
            dependencies=[authorize(SCOPES.admin)],
            summary="Create or replace a geofence (crossings emit geofence.entered / geofence.exited)")
async def put_geofence(fleet_id: FleetId, geofence_id: GeofenceId, body: GeofenceUpsert) -> GeofenceRead:
    return await service.put_geofence(fleet_id=fleet_id, geofence_id=geofence_id, name=body.name,
                                      polygon=body.polygon)


@router.delete("/fleets/{fleet_id}/geofences/{geofence_id}", status_code=204, response_class=Response,
               dependencies=[authorize(SCOPES.admin)], summary="Remove a geofence")
async def delete_geofence(fleet_id: FleetId, geofence_id: GeofenceId) -> Response:
    await service.remove_geofence(fleet_id=fleet_id, geofence_id=geofence_id)
    return Response(status_code=204)
