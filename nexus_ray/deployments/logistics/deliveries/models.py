"""puabo-nexus (deliveries)' schemas: deliveries, their timeline and proof of delivery."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from nexus_ray.deployments.logistics.fleet.models import Lat, Lon

Status = Literal["created", "assigned", "picked_up", "delivered", "failed"]
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,255}$"


class Place(BaseModel):
    lat: Lat | None = None
    lon: Lon | None = None
    address: dict[str, Any] | str | None = Field(None, description="Postal address as the shipper gave it.")


class DeliveryCreate(BaseModel):
    pickup: Place
    dropoff: Place
    weight_kg: float = Field(0, ge=0, le=100_000)
    vehicle_types: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]] | None = Field(
        None, max_length=10, description="Vehicle types that may carry it (default: any).")
    driver_fee: int = Field(0, strict=True, ge=0, le=10**12, description="What the driver earns, minor units.")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    order_id: str | None = Field(None, max_length=128)
    idempotency_key: str | None = Field(None, pattern=KEY_PATTERN, description="A retry sends the same.")


class DeliveryRead(BaseModel):
    id: UUID
    shipment_id: str | None
    order_id: str | None
    owner: str
    status: Status
    pickup: Place
    dropoff: Place
    weight_kg: float
    vehicle_types: list[str] | None
    driver_id: UUID | None
    offer_id: str | None
    driver_fee: int
    currency: str
    dispatch_state: Literal["pending", "submitted", "manual"]
    created_at: datetime
    updated_at: datetime


class Assign(BaseModel):
    driver_id: UUID
    note: str | None = Field(None, max_length=500)


class Progress(BaseModel):
    """A driver's report with a transition: where and why."""

    lat: Lat | None = None
    lon: Lon | None = None
    note: str | None = Field(None, max_length=500)


class TimelineEntry(BaseModel):
    status: Status
    at: datetime
    actor: str
    note: str | None
    lat: float | None
    lon: float | None


class ProofRead(BaseModel):
    delivery_id: UUID
    kind: Literal["signature", "photo"]
    content_type: str
    size_bytes: int
    sha256: str = Field(description="SHA-256 of the stored bytes, hex.")
    uploaded_by: str
    uploaded_at: datetime
