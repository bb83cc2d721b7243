"""puabo-nuki-shipping-service: rate quotes, shipments, labels, tracking (fed by logistics).

Routes in :mod:`.views`; logic (rates, the state machine, the event consumers) in
:mod:`.service`; labels in :mod:`.labels`. ``background`` consumes ``order.paid`` (an order
that asked for shipping gets its shipment), ``order.cancelled`` (its shipment is cancelled before
pickup) and ``delivery.status`` (logistics' progress).
Emits ``shipment.created`` and ``shipment.status`` (outbox). The order saga calls ``exports``
with :func:`nexus_ray.deployments.kit.calls.call`, keyword arguments only.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from nexus_ray.edge.errors import parse_input
from nexus_ray.exceptions import ValidationFailed

from . import service
from .models import COUNTRY_PATTERN, RateQuote, ServiceLevel, ShipmentCreate, ShipmentRead, WeightG
from .views import router

background = [service.consume_events]


class _QuoteArgs(BaseModel):
    weight_g: WeightG
    country: str = Field(pattern=COUNTRY_PATTERN)
    service_level: ServiceLevel = "standard"


async def quote(*, weight_g: int, country: str, service_level: str = "standard") -> RateQuote:
    """The price, zone and estimated days of a parcel of ``weight_g`` grams to ``country``."""
    args = parse_input(_QuoteArgs, {"weight_g": weight_g, "country": country, "service_level": service_level})
    return await service.quote(weight_g=args.weight_g, country=args.country, service_level=args.service_level)


async def request_shipment(
    *, caller: str, order_id: str, address: dict[str, Any], weight_g: int, service_level: str, idempotency_key: str,
    customer: str | None = None,
) -> ShipmentRead:
    """The order's shipment: created with its label now, or the one the order already has (from this call
    or from the ``order.paid`` event), whatever the key. ``address``: ``name``, ``line1``, ``line2``, ``city``,
    ``postal_code``, ``region``, ``country`` (ISO alpha-2), ``phone``; ``customer``: who may see it."""
    body = parse_input(ShipmentCreate, {
        "order_id": order_id, "address": address, "weight_g": weight_g, "service_level": service_level,
        "customer": customer, "idempotency_key": idempotency_key})
    shipment, _ = await service.request_shipment(
        caller=caller, order_id=body.order_id, address=body.address, weight_g=body.weight_g,
        service_level=body.service_level, customer=body.customer, idempotency_key=body.idempotency_key)
    return shipment


async def cancel_shipment(*, caller: str, shipment_id: UUID | str) -> ShipmentRead:
    """Cancel before pickup (idempotent); 409 once the parcel was picked up."""
    del caller  # every caller of an export is a platform service; cancelling needs no key (it is idempotent)
    try:
        sid = UUID(str(shipment_id))
    except ValueError:
        raise ValidationFailed.for_field("shipment_id", "is not a shipment id") from None
    return await service.cancel_shipment(shipment_id=sid)


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"quote": quote, "request_shipment": request_shipment, "cancel_shipment": cancel_shipment}

__all__ = ["background", "exports", "router"]
