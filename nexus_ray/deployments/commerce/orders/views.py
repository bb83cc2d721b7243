"""order-processor's routes under ``/commerce/v1/order-processor``.

Who may do what: a customer (write scope) places orders and cancels their own; reads (read scope)
show one's own orders and their saga log, and another's order is a 404; capturing a manual-capture
order and refunds are the merchant's (admin scope), who also sees every order. Placing an order
needs an idempotency key (``Idempotency-Key`` header or ``idempotency_key`` field): a retry
returns the same order (``Idempotent-Replayed: true``), or the same refusal if it failed.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.idempotency import REPLAYED_HEADER, KeyHeader, key_of, mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden, ValidationFailed

from . import service
from .models import CancelRequest, OrderCreate, OrderRead, RefundRequest, SagaLogRead

SCOPES = scopes_of("puabo-nuki-order-processor")
router = APIRouter()

OrderId = Annotated[UUID, Path(description="The order's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/orders", status_code=201, response_model=OrderRead, summary="Place an order (runs the checkout)",
             responses={202: {"description": "A step did not answer: the order is finished by recovery."}})
async def create_order(body: OrderCreate, response: Response, idempotency_key: KeyHeader = None,
                       principal: Principal = authorize(SCOPES.write)) -> OrderRead:
    key = key_of(idempotency_key, body.idempotency_key)
    if key is None:
        raise ValidationFailed.for_field("idempotency_key", "is required (field or Idempotency-Key header)",
                                         "missing")
    request = body.model_dump(mode="json", include={"lines", "payment_method", "shipping_address", "service_level"})
    row, replayed = await service.create_order(customer=principal.subject, request=request, currency=body.currency,
                                               capture_method=body.capture_method, idempotency_key=key)
    if row["status"] == "failed":
        err = service.refusal_of(row)
        if replayed:
            err.headers[REPLAYED_HEADER] = "true"
        raise err
    mark_replayed(response, replayed)
    if row["status"] not in ("completed", "authorized", "paid"):
        response.status_code = 202
    elif replayed:
        response.status_code = 200
    return service.order_read(row)


@router.get("/orders", response_model=Page[OrderRead], summary="Orders of a customer (default: the caller's)")
async def list_orders(
    customer: str | None = Query(None, max_length=128, description="Another customer's: admin scope."),
    page: PageRequest = page_params(),
    principal: Principal = authorize(SCOPES.read),
) -> Page[OrderRead]:
    if customer is not None and customer != principal.subject and not _admin(principal):
        raise Forbidden(f"listing another customer's orders needs {SCOPES.admin}",
                        extra={"required_scopes": [SCOPES.admin]})
    return await service.list_orders(customer=customer or principal.subject, page=page)


@router.get("/orders/{order_id}", response_model=OrderRead, summary="An order")
async def get_order(order_id: OrderId, principal: Principal = authorize(SCOPES.read)) -> OrderRead:
    return await service.get_order(order_id=order_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/orders/{order_id}/saga", response_model=list[SagaLogRead], summary="The order's saga log, in order")
async def saga_log(order_id: OrderId, principal: Principal = authorize(SCOPES.read)) -> list[SagaLogRead]:
    return await service.saga_log(order_id=order_id, caller=principal.subject, privileged=_admin(principal))


@router.post("/orders/{order_id}/cancel", response_model=OrderRead,
             summary="Cancel (void and release before capture; refund, credit note and return after)")
async def cancel(order_id: OrderId, body: CancelRequest, principal: Principal = authorize(SCOPES.write)
                 ) -> OrderRead:
    row = await service.cancel_order(order_id=order_id, caller=principal.subject, privileged=_admin(principal),
                                     reason=body.reason)
    return service.order_read(row)


@router.post("/orders/{order_id}/refund", response_model=OrderRead, summary="Refund a paid order in full")
async def refund(order_id: OrderId, body: RefundRequest, principal: Principal = authorize(SCOPES.admin)
                 ) -> OrderRead:
    row = await service.refund_order(order_id=order_id, caller=principal.subject, reason=body.reason,
                                     restock=body.restock)
    return service.order_read(row)


@router.post("/orders/{order_id}/capture", response_model=OrderRead,
             summary="Capture an authorised manual-capture order (the checkout goes on)")
async def capture(order_id: OrderId, principal: Principal = authorize(SCOPES.admin)) -> OrderRead:
    row = await service.capture_order(order_id=order_id, caller=principal.subject)
    if row["status"] == "failed":
        raise service.refusal_of(row)
    return service.order_read(row)
