"""inventory-mgr's schemas: warehouses, stock, reservations, movements."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,255}$"
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$"
WAREHOUSE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"

Sku = Annotated[str, Field(pattern=SKU_PATTERN, description="Stock-keeping unit, e.g. TSHIRT-RED-M.")]
WarehouseId = Annotated[str, Field(pattern=WAREHOUSE_PATTERN, description="Warehouse id, e.g. `ams-1`.")]
Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000_000_000, description="Units, > 0.")]
IdempotencyKey = Annotated[str, Field(pattern=KEY_PATTERN, description="Unique per caller; a retry sends the same.")]
ReservationStatus = Literal["held", "committed", "released", "expired"]
MovementKind = Literal["reserve", "commit", "release", "expire", "restock", "adjust", "return"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class WarehouseCreate(_In):
    id: WarehouseId
    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(100, ge=0, le=10_000, description="Reservations draw from the lowest number first.")


class WarehouseRead(BaseModel):
    id: str
    name: str
    priority: int
    created_at: datetime


class Restock(_In):
    sku: Sku
    warehouse_id: WarehouseId
    quantity: Quantity
    note: str = Field("", max_length=500)
    idempotency_key: IdempotencyKey | None = None


class Adjustment(_In):
    sku: Sku
    warehouse_id: WarehouseId
    delta: int = Field(strict=True, ge=-1_000_000_000, le=1_000_000_000,
                       description="Units added (> 0) or removed (< 0): a count correction, damage, loss.")
    reason: str = Field(min_length=1, max_length=500)
    idempotency_key: IdempotencyKey | None = None


class ThresholdUpdate(_In):
    low_threshold: int = Field(strict=True, ge=0, le=1_000_000_000,
                               description="`stock.low` is emitted when available falls below this.")


class WarehouseStock(BaseModel):
    warehouse_id: str
    on_hand: int
    reserved: int
    available: int


class StockRead(BaseModel):
    """A SKU's stock over all warehouses. Holds past their expiry count as released."""

    sku: str
    on_hand: int
    reserved: int
    available: int
    low_threshold: int
    low: bool
    warehouses: list[WarehouseStock]


class LineIn(_In):
    sku: Sku
    quantity: Quantity


class ReservationCreate(_In):
    reference: str = Field(min_length=1, max_length=200, description="What the stock is held for (an order id).")
    lines: list[LineIn] = Field(min_length=1, max_length=200)
    ttl_s: int = Field(900, ge=1, le=7 * 86400, description="Seconds until the hold releases itself.")
    idempotency_key: IdempotencyKey | None = None


class ReservationLine(BaseModel):
    sku: str
    warehouse_id: str
    quantity: int


class ReservationRead(BaseModel):
    id: UUID
    reference: str
    status: ReservationStatus
    returned: bool = Field(False, description="Released after it was committed: the stock came back (a return).")
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None
    lines: list[ReservationLine]


class MovementRead(BaseModel):
    id: int
    sku: str
    warehouse_id: str
    kind: MovementKind
    on_hand_delta: int
    reserved_delta: int
    reservation_id: UUID | None
    note: str
    created_by: str
    created_at: datetime
