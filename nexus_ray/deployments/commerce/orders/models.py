"""order-processor's schemas: orders, their lines, the saga log, and the state machine of an order."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from nexus_ray.deployments.commerce.inventory.models import KEY_PATTERN, Sku
from nexus_ray.deployments.commerce.ledger.models import Currency
from nexus_ray.exceptions import Conflict

OrderStatus = Literal["pending", "authorized", "paid", "completed", "compensating", "failed", "cancelling",
                      "cancelled", "refunding", "refunded"]

#: The order state machine: the statuses each status may move to (anything else is a 409).
#: pending -> authorized (manual capture) -> paid -> completed is the saga going forward; compensating,
#: cancelling and refunding run compensations and end in failed, cancelled and refunded.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"authorized", "paid", "compensating"}),
    "authorized": frozenset({"paid", "compensating", "cancelling"}),
    "paid": frozenset({"completed", "compensating", "cancelling", "refunding"}),
    "completed": frozenset({"cancelling", "refunding"}),
    "compensating": frozenset({"failed"}),
    "cancelling": frozenset({"cancelled"}),
    "refunding": frozenset({"refunded"}),
    "failed": frozenset(),
    "cancelled": frozenset(),
    "refunded": frozenset(),
}

#: Statuses an order rests in until someone acts (completed may still be cancelled or refunded); in any
#: other it is moving, or waits for a manual capture.
AT_REST = ("completed", "failed", "cancelled", "refunded")


def check_transition(current: str, to: str) -> None:
    """409 unless the state machine lets an order go from ``current`` to ``to``."""
    if to not in TRANSITIONS[current]:
        raise Conflict(f"an order that is {current} cannot become {to}",
                       extra={"code": "invalid_transition", "status": current, "to": to})


#: Statuses the saga has not settled: a runner (or recovery, past the lease) moves them on.
UNSETTLED = ("pending", "paid", "compensating", "cancelling", "refunding")
IdempotencyKey = Annotated[str, Field(pattern=KEY_PATTERN, description="Unique per customer; a retry sends the same.")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class LineCreate(_In):
    sku: Sku
    quantity: int = Field(strict=True, ge=1, le=10_000)


class Address(_In):
    name: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    line2: str = Field("", max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2.")


class OrderCreate(_In):
    lines: list[LineCreate] = Field(min_length=1, max_length=100)
    currency: Currency
    payment_method: str = Field(min_length=1, max_length=100, description="A payment method token (pm_card_visa).")
    shipping_address: Address
    service_level: Literal["standard", "express"] = "standard"
    capture_method: Literal["automatic", "manual"] = Field(
        "automatic", description="manual: the saga stops once payment is authorised; capture later.")
    idempotency_key: IdempotencyKey | None = None


class CancelRequest(_In):
    reason: str = Field("requested by customer", max_length=500)


class RefundRequest(_In):
    reason: str = Field(min_length=1, max_length=500)
    restock: bool = Field(False, description="The goods came back: return their units to stock.")


class OrderRead(BaseModel):
    id: UUID
    customer: str
    status: OrderStatus
    capture_method: str
    currency: str
    total: int | None = Field(description="Minor units; null until the cart is priced.")
    lines: list[dict[str, Any]] = Field(description="Priced lines once priced, else the lines as ordered.")
    reservation_id: str | None = None
    payment_intent_id: str | None = None
    invoice_id: str | None = None
    shipment_id: str | None = None
    failure: dict[str, Any] | None = None
    created_at: datetime
    updated_at: datetime


class SagaLogRead(BaseModel):
    id: int
    step: str
    phase: str
    outcome: str
    detail: dict[str, Any]
    created_at: datetime
