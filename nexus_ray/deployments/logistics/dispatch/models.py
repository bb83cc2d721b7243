"""ai-dispatch's schemas: jobs (deliveries to match), offers to drivers, rounds of the loop."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["open", "offered", "assigned", "cancelled"]
OfferStatus = Literal["pending", "accepted", "rejected", "expired", "withdrawn"]


class Place(BaseModel):
    """A point on Earth."""

    model_config = ConfigDict(extra="ignore")

    lat: float = Field(ge=-90, le=90, description="Latitude, degrees.")
    lon: float = Field(ge=-180, le=180, description="Longitude, degrees.")


class DispatchJobCreate(BaseModel):
    """A job to dispatch (deliveries submit each delivery with its id as ``job_id``)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$", description="Caller's id.")
    pickup: Place
    dropoff: Place
    weight_kg: float = Field(ge=0, le=100_000, description="Load to carry, kg.")
    vehicle_types: list[str] | None = Field(None, max_length=20, description="Allowed vehicle types; null: any.")
    ready_at: datetime | None = Field(None, description="Not offered before this time.")
    reference: dict[str, Any] = Field(default_factory=dict, description="Caller's data, returned as given.")


class OfferRead(BaseModel):
    """An offer of a job to a driver."""

    id: UUID
    job_id: str
    driver_id: str
    round_id: UUID | None
    status: OfferStatus
    cost_s: float = Field(description="Travel time from the driver to the pickup, seconds.")
    created_at: datetime
    expires_at: datetime
    answered_at: datetime | None


class DispatchJobRead(BaseModel):
    """A job and where it stands."""

    job_id: str
    status: JobStatus
    pickup: Place
    dropoff: Place
    weight_kg: float
    vehicle_types: list[str] | None
    ready_at: datetime | None
    reference: dict[str, Any]
    driver_id: str | None = Field(description="The driver who accepted it, once assigned.")
    offers_made: int
    created_at: datetime
    updated_at: datetime
    assigned_at: datetime | None
    offers: list[OfferRead] | None = Field(None, description="Its offers, oldest first (on the single-job route).")


class RoundRead(BaseModel):
    """One round of the dispatch loop: what it saw, what it offered, its cost and timing."""

    id: UUID
    runner: str
    started_at: datetime
    drivers: int
    jobs: int
    offers: int
    expired: int = Field(description="Offers that timed out and were taken back in this round.")
    cost_s: float = Field(description="Total travel time to pickup of the offers made, seconds.")
    solve_ms: float = Field(description="Time of the assignment (the Ray task), milliseconds.")
    total_ms: float
    note: str


class DriverState(BaseModel):
    """What dispatch needs of an available driver (driver-app-backend's ``available_drivers``)."""

    model_config = ConfigDict(extra="ignore")

    driver_id: str
    lat: float
    lon: float
    vehicle_type: str
    capacity_kg: float
    shift_ends_at: datetime
