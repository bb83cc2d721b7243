"""fleet-manager's schemas: vehicles, telemetry batches, nearest and area queries, geofences.

Coordinates are ``lat``/``lon`` in decimal degrees (WGS 84); a polygon is a list of
``[lat, lon]`` vertices (the reverse of GeoJSON's order), not closed (the last vertex
joins the first).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
Ident = Annotated[str, Field(pattern=ID_PATTERN, description="Letters, digits and . _ : -, at most 64.")]
Lat = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False, description="Latitude, degrees.")]
Lon = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False, description="Longitude, degrees.")]
Status = Literal["available", "busy", "offline", "maintenance"]


def _vertex(v: list[float]) -> tuple[float, float]:
    lat, lon = v
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError("a vertex is [lat, lon] with lat in [-90, 90] and lon in [-180, 180]")
    return (lat, lon)


# A vertex is a two-number array, checked here rather than typed as a tuple: a tuple's schema (prefixItems)
# is rendered as an `items` array in the OpenAPI document, which OpenAPI 3.1 tools refuse.
Vertex = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]],
                   Field(min_length=2, max_length=2, description="[lat, lon], degrees."), AfterValidator(_vertex)]
Polygon = Annotated[list[Vertex], Field(min_length=3, max_length=1000,
                                        description="Vertices as [lat, lon]; the last joins the first.")]


class VehicleBase(BaseModel):
    vehicle_type: str = Field("van", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="bike, car, van, truck...")
    capacity_kg: float = Field(0, ge=0, le=100_000, description="Load it can carry, kilograms.")
    status: Status = "available"
    driver_id: str | None = Field(None, max_length=64, description="The driver on it now, if any.")


class VehicleUpsert(VehicleBase):
    """A vehicle's registration (PUT replaces these fields)."""


class VehicleStatusUpdate(BaseModel):
    status: Status
    driver_id: str | None = Field(None, max_length=64)


class VehicleRead(VehicleBase):
    vehicle_id: str
    lat: float | None = Field(None, description="Last known position; null before its first telemetry.")
    lon: float | None = None
    ts: datetime | None = Field(None, description="Time of the last known position.")


class VehicleNear(VehicleRead):
    distance_km: float = Field(description="Great-circle distance from the query point, kilometres.")


class PositionUpdate(BaseModel):
    """One telemetry reading."""

    vehicle_id: Ident
    lat: Lat
    lon: Lon
    ts: datetime | None = Field(None, description="When it was read (ISO 8601 or Unix seconds); default: received.")


class TelemetryBatch(BaseModel):
    updates: list[PositionUpdate] = Field(min_length=1, description="Readings, any vehicles, any order.")


class IngestResult(BaseModel):
    applied: int = Field(description="Updates that moved a vehicle.")
    stale: int = Field(description="Updates older than the vehicle's last one (ignored).")
    unknown: int = Field(description="Updates of vehicles not registered in the fleet (ignored).")


class AreaQuery(BaseModel):
    """Vehicles inside a box or a polygon (exactly one)."""

    bbox: tuple[Lat, Lon, Lat, Lon] | None = Field(None, description="[min_lat, min_lon, max_lat, max_lon].")
    polygon: Polygon | None = None
    available_only: bool = False
    limit: int = Field(1000, ge=1, le=5000)

    @model_validator(mode="after")
    def _one_shape(self) -> AreaQuery:
        if (self.bbox is None) == (self.polygon is None):
            raise ValueError("give exactly one of bbox and polygon")
        if self.bbox is not None and (self.bbox[0] > self.bbox[2] or self.bbox[1] > self.bbox[3]):
            raise ValueError("bbox must be [min_lat, min_lon, max_lat, max_lon]")
        return self


class GeofenceUpsert(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    polygon: Polygon


class GeofenceRead(GeofenceUpsert):
    geofence_id: str


class FleetCreate(BaseModel):
    fleet_id: Ident
    name: str = Field(min_length=1, max_length=200)
    owner: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$",
                              description="The operating account (default: the caller; another: admin scope).")


class FleetRead(BaseModel):
    fleet_id: str
    name: str
    owner: str
    created_at: datetime


class FleetStats(BaseModel):
    vehicles: int
    positioned: int
    available: int
    geofences: int
    updates: int = Field(description="Position updates applied since the actor started.")
    indexed: int
