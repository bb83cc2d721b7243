"""puabo-nuki-shipping-service's schemas: quotes, shipments, tracking events, the public tracking view."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from nexus_ray.deployments.commerce.ledger.models import OWNER_PATTERN, IdempotencyKey, Text

COUNTRY_PATTERN = r"^[A-Z]{2}$"
ORDER_PATTERN = r"^[A-Za-z0-9._:@/-]{1,128}$"
TRACKING_PATTERN = r"^NX[0-9A-Z]{14}$"

Country = Annotated[str, Field(pattern=COUNTRY_PATTERN, description="ISO 3166-1 alpha-2 destination country.")]
ServiceLevel = Literal["standard", "express"]
Status = Literal["label_created", "picked_up", "in_transit", "out_for_delivery", "delivered", "exception",
                 "cancelled"]
WeightG = Annotated[int, Field(strict=True, ge=0, le=1_000_000,
                               description="Parcel weight in grams (0 when unknown: priced as the lightest band).")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Address(_In):
    """Where a parcel goes (printed on the label; handed to logistics in ``shipment.created``)."""

    name: Text = Field(min_length=1, max_length=200)
    line1: Text = Field(min_length=1, max_length=200)
    line2: Text | None = Field(None, max_length=200)
    city: Text = Field(min_length=1, max_length=100)
    postal_code: Text | None = Field(None, max_length=20)
    region: Text | None = Field(None, max_length=100)
    country: Country
    phone: Text | None = Field(None, max_length=40)


class RateQuote(BaseModel):
    amount: int = Field(description="Minor units of `currency`.")
    currency: str
    zone: str
    service_level: ServiceLevel
    estimated_days: int
    weight_g: int
    max_weight_g: int = Field(description="Upper bound of the weight band the parcel falls in.")


class RateRead(BaseModel):
    zone: str
    service_level: ServiceLevel
    max_weight_g: int
    amount: int
    currency: str
    estimated_days: int


class ShipmentCreate(_In):
    order_id: str = Field(pattern=ORDER_PATTERN, description="One shipment per order: asking again returns it.")
    address: Address
    weight_g: WeightG
    service_level: ServiceLevel = "standard"
    customer: str | None = Field(None, pattern=OWNER_PATTERN,
                                 description="The customer's principal: they may see the shipment.")
    idempotency_key: IdempotencyKey | None = Field(None, description="Or the Idempotency-Key header.")


class StatusChange(_In):
    status: Status
    description: Text | None = Field(None, max_length=300)
    location: Text | None = Field(None, max_length=200)
    occurred_at: datetime | None = Field(None, description="When it happened (default: now).")


class TrackingEventRead(BaseModel):
    status: Status
    description: str
    location: str | None
    source: str
    occurred_at: datetime


class ShipmentRead(BaseModel):
    id: UUID
    order_id: str
    status: Status
    tracking_number: str
    label_url: str
    customer: str | None
    address: Address
    weight_g: int
    service_level: ServiceLevel
    zone: str
    rate_amount: int
    rate_currency: str
    created_at: datetime
    updated_at: datetime


class PublicEvent(BaseModel):
    status: Status
    description: str
    occurred_at: datetime


class PublicTracking(BaseModel):
    """What anyone holding a tracking number may see: the parcel's progress, nothing about its people."""

    tracking_number: str
    status: Status
    service_level: ServiceLevel
    destination_country: str
    events: list[PublicEvent]
