"""puabo-nexus (deliveries)' routes under ``/logistics/v1/deliveries``.

Who may do what: anyone with the write scope creates deliveries (they own them); a
delivery is visible to its owner, to the driver it is assigned to and to admin-scope
holders, and is a 404 to anyone else. The assigned driver (or an admin) picks it up,
uploads its proof and marks it delivered or failed; assigning by hand is the admin's
(operators, when dispatch is absent or overruled).
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request, Response

from nexus_ray.deployments.kit.idempotency import KeyHeader, key_of, mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize

from . import service
from .models import Assign, DeliveryCreate, DeliveryRead, Progress, ProofRead, Status, TimelineEntry

SCOPES = scopes_of("puabo-nexus")
router = APIRouter()

DeliveryId = Annotated[UUID, Path(description="The delivery's id.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/deliveries", status_code=201, response_model=DeliveryRead,
             responses={200: {"model": DeliveryRead, "description": "The delivery an earlier request with the same "
                                                                    "idempotency key created (Idempotent-Replayed)"}},
             summary="Create a delivery (submitted to dispatch when it has coordinates)")
async def create(body: DeliveryCreate, response: Response,
                 idempotency_key: KeyHeader = None,
                 principal: Principal = authorize(SCOPES.write)) -> DeliveryRead:
    delivery, replayed = await service.create_delivery(
        caller=principal.subject, pickup=body.pickup.model_dump(), dropoff=body.dropoff.model_dump(),
        weight_kg=body.weight_kg, vehicle_types=body.vehicle_types, driver_fee=body.driver_fee,
        currency=body.currency, order_id=body.order_id, idempotency_key=key_of(idempotency_key, body.idempotency_key))
    mark_replayed(response, replayed, status=200)
    return delivery


@router.get("/deliveries", response_model=Page[DeliveryRead],
            summary="The caller's deliveries (owned or assigned to them), newest first")
async def list_deliveries(
    status: Status | None = Query(None), all: bool = Query(False, description="Everyone's: admin scope."),
    page: PageRequest = page_params(), principal: Principal = authorize(SCOPES.read),
) -> Page[DeliveryRead]:
    return await service.list_deliveries(caller=principal.subject, privileged=_admin(principal), status=status,
                                         all_=all, page=page)


@router.get("/deliveries/{delivery_id}", response_model=DeliveryRead, summary="A delivery")
async def get(delivery_id: DeliveryId, principal: Principal = authorize(SCOPES.read)) -> DeliveryRead:
    return await service.get_delivery(delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal))


@router.get("/deliveries/{delivery_id}/timeline", response_model=list[TimelineEntry],
            summary="The delivery's tracking timeline, oldest first")
async def timeline(delivery_id: DeliveryId, principal: Principal = authorize(SCOPES.read)) -> list[TimelineEntry]:
    return await service.timeline(delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal))


@router.post("/deliveries/{delivery_id}/assign", response_model=DeliveryRead,
             summary="Assign a created delivery to a driver by hand (409 otherwise)")
async def assign(delivery_id: DeliveryId, body: Assign, principal: Principal = authorize(SCOPES.admin)
                 ) -> DeliveryRead:
    return await service.assign(delivery_id=delivery_id, driver_id=body.driver_id, caller=principal.subject,
                                note=body.note)


@router.post("/deliveries/{delivery_id}/pickup", response_model=DeliveryRead,
             summary="The assigned driver picked it up (409 unless assigned)")
async def pickup(delivery_id: DeliveryId, body: Progress, principal: Principal = authorize(SCOPES.write)
                 ) -> DeliveryRead:
    return await service.pick_up(delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal),
                                 note=body.note, lat=body.lat, lon=body.lon)


@router.post("/deliveries/{delivery_id}/deliver", response_model=DeliveryRead,
             summary="Delivered (409 unless picked up with a proof of delivery)")
async def deliver(delivery_id: DeliveryId, body: Progress, principal: Principal = authorize(SCOPES.write)
                  ) -> DeliveryRead:
    return await service.deliver(delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal),
                                 note=body.note, lat=body.lat, lon=body.lon)


@router.post("/deliveries/{delivery_id}/fail", response_model=DeliveryRead,
             summary="Failed (409 once delivered or failed)")
async def fail(delivery_id: DeliveryId, body: Progress, principal: Principal = authorize(SCOPES.write)
               ) -> DeliveryRead:
    return await service.fail(delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal),
                              note=body.note, lat=body.lat, lon=body.lon)


@router.put("/deliveries/{delivery_id}/proof", response_model=ProofRead,
            summary="Upload the proof of delivery: the image's bytes as the body (PNG, JPEG or WebP)")
async def put_proof(
    delivery_id: DeliveryId, request: Request,
    kind: Literal["signature", "photo"] = Query(description="A signature or a photo of the handover."),
    content_type: Annotated[str, Header(alias="Content-Type")] = "",
    checksum: Annotated[str | None, Header(alias="X-Checksum-SHA256", pattern=r"^[0-9A-Fa-f]{64}$",
                                           description="SHA-256 of the body, hex: checked when sent.")] = None,
    principal: Principal = authorize(SCOPES.write),
) -> ProofRead:
    return await service.put_proof(
        delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal), kind=kind,
        content_type=content_type.split(";")[0].strip().lower(), data=await request.body(), sha256=checksum)


@router.get("/deliveries/{delivery_id}/proof", response_model=ProofRead, summary="The proof of delivery's record")
async def get_proof(delivery_id: DeliveryId, principal: Principal = authorize(SCOPES.read)) -> ProofRead:
    proof, _ = await service.get_proof(delivery_id=delivery_id, caller=principal.subject, privileged=_admin(principal))
    return proof


@router.get("/deliveries/{delivery_id}/proof/content", response_class=Response,
            responses={200: {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                                         for t in service.PROOF_TYPES},
                             "description": "The stored bytes"}},
            summary="The proof of delivery's bytes (with its SHA-256 in X-Checksum-SHA256)")
async def get_proof_content(delivery_id: DeliveryId, principal: Principal = authorize(SCOPES.read)) -> Response:
    proof, data = await service.get_proof(delivery_id=delivery_id, caller=principal.subject,
                                          privileged=_admin(principal), with_data=True)
    return Response(content=data, media_type=proof.content_type, headers={"X-Checksum-SHA256": proof.sha256})
