"""fleet-manager's logic: each fleet is a :class:`~nexus_ray.actors.fleet.FleetActor` of its own.

Every function here is one call to the fleet's actor through an
:class:`~nexus_ray.actors.client.EntityClient` (``shards=None``: one actor per fleet,
created on first use, restarted with its state after a crash; 503 when it cannot answer
in time). Telemetry batches are validated here and sent as columns, so a batch of
thousands of readings is one actor call.

A fleet belongs to the account that operates it (table ``fleets``); the routes reach a
fleet for its owner and administrators only (:func:`ensure_access`). Other services of the
platform (the driver app, dispatch) call the functions directly, as the platform.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from nexus_ray.actors.client import EntityClient
from nexus_ray.actors.fleet import FleetActor
from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, Forbidden, NotFound, ValidationFailed
from nexus_ray.stores import postgres

from .models import FleetRead, GeofenceRead, IngestResult, PositionUpdate, VehicleNear, VehicleRead
from .settings import FleetSettings

_client: EntityClient | None = None


def fleets_client() -> EntityClient:
    """The client of the fleet actors (one actor per fleet)."""
    global _client
    if _client is None:
        _client = EntityClient(FleetActor, shards=None, timeout_s=get_settings().actor_call_timeout_s)
    return _client


# -- fleets and who reaches them ------------------------------------------------------------------

# fleet id -> owner: a fleet never changes hands, so each process asks PostgreSQL once per fleet
# (telemetry arrives many times a second per fleet). Bounded: cleared when it grows past the bound.
_owners: dict[str, str] = {}
_OWNERS_MAX = 100_000


async def create_fleet(*, caller: str, privileged: bool, fleet_id: str, name: str, owner: str | None) -> FleetRead:
    owner = owner or caller
    if owner != caller and not privileged:
        raise Forbidden("only an administrator creates a fleet for another account", extra={"field": "owner"})
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            "INSERT INTO fleets (id, name, owner) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING "
            "RETURNING id AS fleet_id, name, owner, created_at", fleet_id, name, owner)
    if row is None:
        raise Conflict(f"fleet {fleet_id} exists", extra={"field": "fleet_id"})
    return FleetRead.model_validate(dict(row))


async def ensure_access(*, fleet_id: str, caller: str, privileged: bool) -> None:
    """Refuse (404) a fleet that does not exist or is not the caller's (an administrator reaches every fleet).

    Unknown fleets are refused to administrators too: a fleet's actor is a process, and a request
    naming a made-up fleet must not start one.
    """
    owner = _owners.get(fleet_id)
    if owner is None:
        owner = await (await postgres.pool()).fetchval("SELECT owner FROM fleets WHERE id = $1", fleet_id)
        if owner is not None:
            if len(_owners) >= _OWNERS_MAX:
                _owners.clear()
            _owners[fleet_id] = owner
    if owner is None or (owner != caller and not privileged):
        raise NotFound(f"fleet {fleet_id} not found")


async def get_fleet(*, fleet_id: str) -> FleetRead:
    row = await (await postgres.pool()).fetchrow(
        "SELECT id AS fleet_id, name, owner, created_at FROM fleets WHERE id = $1", fleet_id)
    if row is None:
        raise NotFound(f"fleet {fleet_id} not found")
    return FleetRead.model_validate(dict(row))


async def list_fleets(*, owner: str | None, page: PageRequest) -> Page[FleetRead]:
    after = page.after_value(0)
    rows = await (await postgres.pool()).fetch(
        "SELECT id AS fleet_id, name, owner, created_at FROM fleets WHERE ($1::text IS NULL OR owner = $1) "
        "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
        owner, after if isinstance(after, str) else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["fleet_id"],), item=lambda r: FleetRead.model_validate(dict(r)))


def _vehicle(raw: dict[str, Any], cls: type[VehicleRead] = VehicleRead) -> Any:
    ts = raw.get("ts")
    return cls.model_validate({**raw, "ts": datetime.fromtimestamp(ts, UTC) if ts is not None else None})


# -- telemetry -----------------------------------------------------------------------------------


async def ingest(*, fleet_id: str, updates: list[PositionUpdate]) -> IngestResult:
    """Apply a batch of readings to the fleet in one actor call."""
    limit = settings_of(FleetSettings).fleet_telemetry_batch_max
    if len(updates) > limit:
        raise ValidationFailed.for_field("updates", f"at most {limit} readings per batch", "too_long")
    now = time.time()
    result = await fleets_client().call(
        fleet_id, "ingest",
        [u.vehicle_id for u in updates], [u.lat for u in updates], [u.lon for u in updates],
        [u.ts.timestamp() if u.ts is not None else now for u in updates],
    )
    return IngestResult.model_validate(result)


# -- queries ---------------------------------------------------------------------------------------


async def nearest(
    *, fleet_id: str, lat: float, lon: float, k: int, available_only: bool = True, max_km: float | None = None,
) -> list[VehicleNear]:
    """The ``k`` vehicles nearest a point (available ones only, by default), nearest first."""
    cap = settings_of(FleetSettings).fleet_nearest_max_k
    if not 1 <= k <= cap:
        raise ValidationFailed.for_field("k", f"must be between 1 and {cap}")
    hits = await fleets_client().call(fleet_id, "nearest", lat, lon, k, available_only, max_km)
    return [_vehicle(h, VehicleNear) for h in hits]


async def in_area(
    *, fleet_id: str, bbox: tuple[float, float, float, float] | None = None,
    polygon: list[tuple[float, float]] | None = None, available_only: bool = False, limit: int = 1000,
) -> list[VehicleRead]:
    """Vehicles inside a box or a polygon."""
    limit = min(limit, settings_of(FleetSettings).fleet_area_max)
    found = await fleets_client().call(
        fleet_id, "in_area", bbox=list(bbox) if bbox else None,
        polygon=[list(p) for p in polygon] if polygon else None, available_only=available_only, limit=limit)
    return [_vehicle(v) for v in found]


async def vehicles(*, fleet_id: str, vehicle_ids: list[str] | None = None) -> list[VehicleRead]:
    """Vehicles with their last position: the named ones that exist, or all."""
    return [_vehicle(v) for v in await fleets_client().call(fleet_id, "vehicles", vehicle_ids)]


async def list_vehicles(*, fleet_id: str, page: PageRequest) -> Page[VehicleRead]:
    after = page.after_value(0)
    if after is not None and not isinstance(after, str):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    found = sorted(await fleets_client().call(fleet_id, "vehicles", None), key=lambda v: v["vehicle_id"])
    rows = [v for v in found if after is None or v["vehicle_id"] > after][: page.fetch_limit]
    return page.of(rows, key=lambda v: (v["vehicle_id"],), item=_vehicle)


async def get_vehicle(*, fleet_id: str, vehicle_id: str) -> VehicleRead:
    found = await vehicles(fleet_id=fleet_id, vehicle_ids=[vehicle_id])
    if not found:
        raise NotFound(f"vehicle {vehicle_id} not found in fleet {fleet_id}")
    return found[0]


async def stats(*, fleet_id: str) -> dict[str, Any]:
    return dict(await fleets_client().call(fleet_id, "stats"))


# -- vehicles and geofences --------------------------------------------------------------------------


async def upsert_vehicles(*, fleet_id: str, vehicles: list[dict[str, Any]]) -> int:
    """Register vehicles or change their fields (each dict has ``vehicle_id`` and any of the VehicleBase fields)."""
    return int(await fleets_client().call(fleet_id, "upsert_vehicles", vehicles))


async def upsert_vehicle(*, fleet_id: str, vehicle_id: str, fields: dict[str, Any]) -> VehicleRead:
    await upsert_vehicles(fleet_id=fleet_id, vehicles=[{**fields, "vehicle_id": vehicle_id}])
    return await get_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id)


async def set_status(*, fleet_id: str, vehicle_id: str, status: str, driver_id: str | None = None) -> VehicleRead:
    """Change a registered vehicle's status (404 for an unknown one)."""
    await get_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id)
    return await upsert_vehicle(fleet_id=fleet_id, vehicle_id=vehicle_id,
                                fields={"status": status, "driver_id": driver_id})


async def remove_vehicle(*, fleet_id: str, vehicle_id: str) -> None:
    if not await fleets_client().call(fleet_id, "remove_vehicle", vehicle_id):
        raise NotFound(f"vehicle {vehicle_id} not found in fleet {fleet_id}")


async def put_geofence(*, fleet_id: str, geofence_id: str, name: str, polygon: list[tuple[float, float]]
                       ) -> GeofenceRead:
    raw = await fleets_client().call(fleet_id, "put_geofence", geofence_id, name, [list(p) for p in polygon])
    return GeofenceRead.model_validate(raw)


async def list_geofences(*, fleet_id: str) -> list[GeofenceRead]:
    return [GeofenceRead.model_validate(g) for g in await fleets_client().call(fleet_id, "geofences")]


async def remove_geofence(*, fleet_id: str, geofence_id: str) -> None:
    if not await fleets_client().call(fleet_id, "remove_geofence", geofence_id):
        raise NotFound(f"geofence {geofence_id} not found in fleet {fleet_id}")
