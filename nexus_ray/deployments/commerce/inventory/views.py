"""inventory-mgr's routes under ``/commerce/v1/inventory``.

Who may do what: stock levels are read with the read scope (a shop front shows availability);
warehouses, restocks, adjustments, thresholds and the movement history are the operators'
(admin scope). Reservations are made with the write scope by services and staff acting for an
order; a reservation is visible to, and committed or released by, the caller that made it or an
administrator (404 to anyone else). Restocks and adjustments take an optional idempotency key
(``Idempotency-Key`` header or ``idempotency_key`` field); reservations require one.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.idempotency import KeyHeader, key_of, mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import ValidationFailed

from . import service
from .models import (
    SKU_PATTERN,
    Adjustment,
    MovementRead,
    ReservationCreate,
    ReservationRead,
    Restock,
    StockRead,
    ThresholdUpdate,
    WarehouseCreate,
    WarehouseRead,
)

SCOPES = scopes_of("puabo-nuki-inventory-mgr")
router = APIRouter()

ReservationId = Annotated[UUID, Path(description="The reservation's id.")]
SkuPath = Annotated[str, Path(pattern=SKU_PATTERN, description="The SKU.")]


@router.post("/warehouses", status_code=201, response_model=WarehouseRead, summary="Open a warehouse",
             dependencies=[authorize(SCOPES.admin)])
async def create_warehouse(body: WarehouseCreate) -> WarehouseRead:
    return await service.create_warehouse(id=body.id, name=body.name, priority=body.priority)


@router.get("/warehouses", response_model=list[WarehouseRead], summary="Warehouses, in the order stock is drawn",
            dependencies=[authorize(SCOPES.read)])
async def list_warehouses() -> list[WarehouseRead]:
    return await service.list_warehouses()


@router.get("/stock", response_model=list[StockRead], summary="Stock of some SKUs over all warehouses",
            dependencies=[authorize(SCOPES.read)])
async def stock(sku: Annotated[list[str], Query(min_length=1, max_length=200, description="SKUs (repeat).")]
                ) -> list[StockRead]:
    return await service.stock(skus=sku)


@router.post("/stock/restock", response_model=StockRead, summary="Receive units into a warehouse")
async def restock(body: Restock, response: Response, idempotency_key: KeyHeader = None,
                  principal: Principal = authorize(SCOPES.admin)) -> StockRead:
    out, replayed = await service.restock(caller=principal.subject, sku=body.sku, warehouse_id=body.warehouse_id,
                                          quantity=body.quantity, note=body.note,
                                          idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return out


@router.post("/stock/adjustments", response_model=StockRead, summary="Correct on-hand stock (count, damage, loss)")
async def adjust(body: Adjustment, response: Response, idempotency_key: KeyHeader = None,
                 principal: Principal = authorize(SCOPES.admin)) -> StockRead:
    out, replayed = await service.adjust(caller=principal.subject, sku=body.sku, warehouse_id=body.warehouse_id,
                                         delta=body.delta, reason=body.reason,
                                         idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed)
    return out


@router.put("/skus/{sku}/threshold", response_model=StockRead, summary="Set a SKU's low-stock threshold",
            dependencies=[authorize(SCOPES.admin)])
async def set_threshold(sku: SkuPath, body: ThresholdUpdate) -> StockRead:
    return await service.set_threshold(sku=sku, low_threshold=body.low_threshold)


@router.get("/skus/{sku}/movements", response_model=Page[MovementRead],
            summary="A SKU's stock movements, oldest first", dependencies=[authorize(SCOPES.admin)])
async def movements(sku: SkuPath, page: PageRequest = page_params(default=100, maximum=1000)) -> Page[MovementRead]:
    return await service.movements(sku=sku, page=page)


@router.post("/reservations", status_code=201, response_model=ReservationRead,
             summary="Hold stock for a reference (all lines or none; 409 naming a short SKU)")
async def reserve(body: ReservationCreate, response: Response, idempotency_key: KeyHeader = None,
                  principal: Principal = authorize(SCOPES.write)) -> ReservationRead:
    key = key_of(idempotency_key, body.idempotency_key)
    if key is None:
        raise ValidationFailed.for_field("idempotency_key", "is required (field or Idempotency-Key header)",
                                         "missing")
    out, replayed = await service.reserve(caller=principal.subject, reference=body.reference,
                                          lines=[ln.model_dump() for ln in body.lines], ttl_s=body.ttl_s,
                                          idempotency_key=key)
    if replayed:
        response.status_code = 200
    mark_replayed(response, replayed)
    return out


@router.get("/reservations/{reservation_id}", response_model=ReservationRead, summary="A reservation")
async def get_reservation(reservation_id: ReservationId, principal: Principal = authorize(SCOPES.read)
                          ) -> ReservationRead:
    return await service.get_reservation(reservation_id=reservation_id, caller=principal.subject,
                                         privileged=principal.can(SCOPES.admin))


@router.post("/reservations/{reservation_id}/commit", response_model=ReservationRead,
             summary="The held units leave for good (idempotent; 409 once expired or released)")
async def commit(reservation_id: ReservationId, principal: Principal = authorize(SCOPES.write)) -> ReservationRead:
    return await service.commit_reservation(reservation_id=reservation_id, caller=principal.subject,
                                            privileged=principal.can(SCOPES.admin))


@router.post("/reservations/{reservation_id}/release", response_model=ReservationRead,
             summary="Return the units (idempotent; a committed reservation comes back as a return)")
async def release(reservation_id: ReservationId, principal: Principal = authorize(SCOPES.write)) -> ReservationRead:
    return await service.release_reservation(reservation_id=reservation_id, caller=principal.subject,
                                             privileged=principal.can(SCOPES.admin))
