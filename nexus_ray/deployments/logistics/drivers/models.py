"""driver-app-backend's schemas: drivers, shifts, locations, job offers and earnings; socket messages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from nexus_ray.deployments.logistics.fleet.models import ID_PATTERN, Lat, Lon

VehicleType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="bike, car, van, truck...")]
USER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"


class VehicleAssignment(BaseModel):
    fleet_id: str = Field(pattern=ID_PATTERN)
    vehicle_id: str = Field(pattern=ID_PATTERN)
    vehicle_type: VehicleType = "van"
    capacity_kg: float = Field(0, ge=0, le=100_000)


class DriverCreate(VehicleAssignment):
    name: str = Field(min_length=1, max_length=200)
    user_id: str | None = Field(None, pattern=USER_PATTERN,
                                description="The driver's account (default: the caller's; another's: admin scope).")


class DriverRead(VehicleAssignment):
    id: UUID
    user_id: str
    name: str
    busy_job: str | None
    on_shift: bool
    shift_ends_at: datetime | None
    created_at: datetime


class ShiftStart(BaseModel):
    hours: float = Field(8.0, gt=0, le=24, description="Planned length of the shift, hours.")


class ShiftRead(BaseModel):
    id: UUID
    driver_id: UUID
    started_at: datetime
    planned_end_at: datetime
    ended_at: datetime | None


class Location(BaseModel):
    lat: Lat
    lon: Lon
    ts: datetime | None = Field(None, description="When it was read; default: received.")


class LocationBatch(BaseModel):
    points: list[Location] = Field(min_length=1, max_length=100, description="Readings, oldest first.")


class LocationAck(BaseModel):
    applied: int


class DriverState(BaseModel):
    """A driver dispatch may offer a job to: on shift, not busy, position known."""

    driver_id: UUID
    fleet_id: str
    vehicle_id: str
    lat: float
    lon: float
    vehicle_type: str
    capacity_kg: float
    shift_ends_at: datetime
    connected: bool = Field(description="The driver's app holds a live socket now.")


OfferStatus = Literal["pending", "accepted", "rejected", "withdrawn", "expired"]


class OfferRead(BaseModel):
    id: str
    driver_id: UUID
    job_id: str
    job: dict[str, Any]
    status: OfferStatus = Field(description="`expired`: still pending past expires_at.")
    reason: str | None
    expires_at: datetime
    created_at: datetime
    answered_at: datetime | None


class OfferAnswer(BaseModel):
    reason: str | None = Field(None, max_length=500)


class EarningRead(BaseModel):
    id: UUID
    driver_id: UUID
    job_id: str
    amount: int = Field(description="Minor units.")
    currency: str
    entry_id: UUID | None = Field(description="The ledger entry once posted to the driver's payable account.")
    posted_at: datetime | None
    created_at: datetime


# -- socket messages (client to server) -----------------------------------------------------------


class LocationMessage(Location):
    type: Literal["location"]


class AnswerMessage(BaseModel):
    type: Literal["accept", "reject"]
    offer_id: str = Field(min_length=1, max_length=128)
    reason: str | None = Field(None, max_length=500)


class PingMessage(BaseModel):
    type: Literal["ping"]


ClientMessage = Annotated[LocationMessage | AnswerMessage | PingMessage, Field(discriminator="type")]
