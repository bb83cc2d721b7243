"""puabo-nuki-shipping-service's routes under ``/commerce/v1/shipping``.

Who may do what: quotes and the rate table need the read scope. Creating shipments, reporting
their progress (carriers, operators) and cancelling them is the back office's (admin scope; the
order saga uses the ``exports``). A shipment, its label and its timeline are visible to its
customer and to administrators, a 404 to anyone else.

``GET /tracking/{tracking_number}`` is **public** by decision: a parcel's progress is what a
tracking number is for, and recipients who are not users hold one. It shows statuses, times and
the destination country only (no names, addresses or order), and tracking numbers carry about
71 random bits, so they cannot be enumerated.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.commerce.ledger.models import OWNER_PATTERN
from nexus_ray.deployments.kit.idempotency import KeyHeader, key_of, mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize, public
from nexus_ray.exceptions import Forbidden

from . import labels, service
from .models import (
    COUNTRY_PATTERN,
    TRACKING_PATTERN,
    PublicTracking,
    RateQuote,
    RateRead,
    ServiceLevel,
    ShipmentCreate,
    ShipmentRead,
    StatusChange,
    TrackingEventRead,
)

SCOPES = scopes_of("puabo-nuki-shipping-service")
router = APIRouter()

ShipmentId = Annotated[UUID, Path(description="The shipment's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.get("/quotes", response_model=RateQuote, summary="The price of a parcel to a country")
async def quote(weight_g: int = Query(ge=0, le=1_000_000), country: str = Query(pattern=COUNTRY_PATTERN),
                service_level: ServiceLevel = "standard", _: Principal = authorize(SCOPES.read)) -> RateQuote:
    return await service.quote(weight_g=weight_g, country=country, service_level=service_level)


@router.get("/rates", response_model=list[RateRead], summary="The rate table (zones x weight bands x levels)")
async def rates(_: Principal = authorize(SCOPES.read)) -> list[RateRead]:
    return await service.rates()


@router.post("/shipments", status_code=201, response_model=ShipmentRead,
             summary="Create an order's shipment (or return the one it has)")
async def create(body: ShipmentCreate, response: Response, idempotency_key: KeyHeader = None,
                 principal: Principal = authorize(SCOPES.admin)) -> ShipmentRead:
    shipment, existed = await service.request_shipment(
        caller=principal.subject, order_id=body.order_id, address=body.address, weight_g=body.weight_g,
        service_level=body.service_level, customer=body.customer,
        idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, existed)
    return shipment


@router.get("/shipments", response_model=Page[ShipmentRead], summary="Shipments of a customer (default: the caller)")
async def list_shipments(
    customer: str | None = Query(None, pattern=OWNER_PATTERN, description="Another customer's: admin scope."),
    page: PageRequest = page_params(default=20, maximum=100),
    principal: Principal = authorize(SCOPES.read),
) -> Page[ShipmentRead]:
    if customer is not None and customer != principal.subject and not _admin(principal):
        raise Forbidden(f"listing another customer's shipments needs {SCOPES.admin}",
                        extra={"required_scopes": [SCOPES.admin]})
    return await service.list_shipments(owner=customer or principal.subject, page=page)


@router.get("/shipments/{shipment_id}", response_model=ShipmentRead, summary="A shipment")
async def get_shipment(shipment_id: ShipmentId, principal: Principal = authorize(SCOPES.read)) -> ShipmentRead:
    return await service.get_shipment(shipment_id=shipment_id, caller=principal.subject,
                                      privileged=_admin(principal))


@router.get("/shipments/{shipment_id}/label", response_class=Response,
            responses={200: {"content": {"application/pdf": {}}, "description": "The label as a PDF."}},
            summary="A shipment's label (PDF with a Code 128 barcode of the tracking number)")
async def label(shipment_id: ShipmentId, principal: Principal = authorize(SCOPES.read)) -> Response:
    shipment = await service.get_shipment(shipment_id=shipment_id, caller=principal.subject,
                                          privileged=_admin(principal))
    return Response(labels.label_pdf(shipment), media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{shipment.tracking_number}.pdf"'})


@router.get("/shipments/{shipment_id}/events", response_model=list[TrackingEventRead],
            summary="A shipment's tracking timeline, oldest first")
async def events(shipment_id: ShipmentId, principal: Principal = authorize(SCOPES.read)) -> list[TrackingEventRead]:
    return await service.tracking_events(shipment_id=shipment_id, caller=principal.subject,
                                         privileged=_admin(principal))


@router.post("/shipments/{shipment_id}/events", response_model=ShipmentRead,
             summary="Report progress (409 when the state machine forbids it)")
async def report(shipment_id: ShipmentId, body: StatusChange, principal: Principal = authorize(SCOPES.admin)
                 ) -> ShipmentRead:
    return await service.report_status(shipment_id=shipment_id, status=body.status, description=body.description,
                                       location=body.location, occurred_at=body.occurred_at,
                                       source=f"operator:{principal.subject}")


@router.post("/shipments/{shipment_id}/cancel", response_model=ShipmentRead,
             summary="Cancel before pickup (idempotent; 409 once picked up)")
async def cancel(shipment_id: ShipmentId, _: Principal = authorize(SCOPES.admin)) -> ShipmentRead:
    return await service.cancel_shipment(shipment_id=shipment_id)


@router.get("/tracking/{tracking_number}", response_model=PublicTracking, dependencies=[public()],
            summary="A parcel's progress by tracking number (public: no personal data)")
async def track(tracking_number: str = Path(pattern=TRACKING_PATTERN)) -> PublicTracking:
    return await service.public_tracking(number=tracking_number)
