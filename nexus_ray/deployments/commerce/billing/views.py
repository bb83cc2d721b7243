"""billing-service's routes under ``/commerce/v1/billing``.

Who may do what: every route needs billing's read or write scope. A payment intent belongs to
its merchant (the principal that created it), who captures, cancels and refunds it, and is
visible to its customer too; to anyone else it is a 404 (the admin scope sees and changes all).
Webhook endpoints belong to the merchant that registered them and receive the events of that
merchant's intents.

Idempotency (Stripe's semantics, :mod:`nexus_ray.deployments.kit.idempotency`): creating an
intent, capturing and refunding require an ``Idempotency-Key`` header; cancelling and
registering an endpoint accept one. The same key and body answer the first response again --
status, body and errors alike -- with ``Idempotent-Replayed: true``; the same key with another
body is a 422 naming ``Idempotency-Key``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import JSONResponse

from nexus_ray.deployments.kit.idempotency import KEY_PATTERN, Outcome
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden

from . import service, webhooks
from .models import (
    OWNER_PATTERN,
    CaptureCreate,
    CardDeclined,
    PaymentIntentCreate,
    PaymentIntentRead,
    RefundCreate,
    RefundRead,
    WebhookDeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointRead,
)

SCOPES = scopes_of("billing-service")
router = APIRouter()

IntentId = Annotated[UUID, Path(description="The payment intent's id.")]
EndpointId = Annotated[UUID, Path(description="The webhook endpoint's id.")]
RequiredKey = Annotated[str, Header(alias="Idempotency-Key", pattern=KEY_PATTERN,
                                    description="Idempotency key: a retry sends the same one (kept 24 h).")]
OptionalKey = Annotated[str | None, Header(alias="Idempotency-Key", pattern=KEY_PATTERN,
                                           description="Idempotency key (optional here).")]
_DECLINE: dict[int | str, dict[str, Any]] = {
    402: {"description": "Card declined: problem+json with `decline_code` and the declined `payment_intent`."}}


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


def _answer(outcome: Outcome) -> JSONResponse:
    """The stored (or fresh) response as is; an error is raised for the edge to render as problem+json."""
    if not outcome.ok:
        raise outcome.error(classes={402: CardDeclined})
    return JSONResponse(outcome.body, status_code=outcome.status, headers=outcome.headers)


@router.post("/payment_intents", status_code=201, response_model=PaymentIntentRead, responses=_DECLINE,
             summary="Create a payment intent and authorise it")
async def create_intent(body: PaymentIntentCreate, idempotency_key: RequiredKey,
                        principal: Principal = authorize(SCOPES.write)) -> JSONResponse:
    customer = body.customer or principal.subject
    if customer != principal.subject and not _admin(principal):
        raise Forbidden(f"creating an intent for another customer needs {SCOPES.admin}",
                        extra={"field": "customer", "required_scopes": [SCOPES.admin]})
    return _answer(await service.authorize(
        caller=principal.subject, customer=customer, amount=body.amount, currency=body.currency,
        payment_method=body.payment_method, metadata=body.metadata, idempotency_key=idempotency_key))


@router.get("/payment_intents", response_model=Page[PaymentIntentRead],
            summary="Payment intents of the caller (as merchant or customer)")
async def list_intents(
    customer: str | None = Query(None, pattern=OWNER_PATTERN, description="Only this customer's."),
    page: PageRequest = page_params(default=50, maximum=500),
    principal: Principal = authorize(SCOPES.read),
) -> Page[PaymentIntentRead]:
    return await service.list_intents(caller=principal.subject, privileged=_admin(principal), customer=customer,
                                      page=page)


@router.get("/payment_intents/{intent_id}", response_model=PaymentIntentRead, summary="A payment intent")
async def get_intent(intent_id: IntentId, principal: Principal = authorize(SCOPES.read)) -> PaymentIntentRead:
    return await service.get_intent(intent_id=intent_id, caller=principal.subject, privileged=_admin(principal))


@router.post("/payment_intents/{intent_id}/capture", response_model=PaymentIntentRead,
             summary="Capture an authorised intent (all, or part and release the rest)")
async def capture(intent_id: IntentId, idempotency_key: RequiredKey, body: CaptureCreate | None = None,
                  principal: Principal = authorize(SCOPES.write)) -> JSONResponse:
    return _answer(await service.capture(
        caller=principal.subject, privileged=_admin(principal), intent_id=intent_id,
        amount=body.amount if body else None, idempotency_key=idempotency_key))


@router.post("/payment_intents/{intent_id}/cancel", response_model=PaymentIntentRead,
             summary="Void an authorisation (idempotent)")
async def cancel(intent_id: IntentId, idempotency_key: OptionalKey = None,
                 principal: Principal = authorize(SCOPES.write)) -> JSONResponse:
    return _answer(await service.cancel(caller=principal.subject, privileged=_admin(principal), intent_id=intent_id,
                                        idempotency_key=idempotency_key))


@router.post("/payment_intents/{intent_id}/refunds", status_code=201, response_model=RefundRead,
             summary="Refund a captured intent (partly or fully; never more than captured)")
async def refund(intent_id: IntentId, idempotency_key: RequiredKey, body: RefundCreate | None = None,
                 principal: Principal = authorize(SCOPES.write)) -> JSONResponse:
    body = body or RefundCreate()
    return _answer(await service.refund(
        caller=principal.subject, privileged=_admin(principal), intent_id=intent_id, amount=body.amount,
        reason=body.reason, idempotency_key=idempotency_key))


@router.get("/payment_intents/{intent_id}/refunds", response_model=Page[RefundRead],
            summary="Refunds of a payment intent")
async def list_refunds(intent_id: IntentId, page: PageRequest = page_params(default=50, maximum=500),
                       principal: Principal = authorize(SCOPES.read)) -> Page[RefundRead]:
    return await service.list_refunds(intent_id=intent_id, caller=principal.subject, privileged=_admin(principal),
                                      page=page)


@router.post("/webhook_endpoints", status_code=201, response_model=WebhookEndpointCreated,
             summary="Register a webhook endpoint (its signing secret is shown once)")
async def create_endpoint(body: WebhookEndpointCreate, idempotency_key: OptionalKey = None,
                          principal: Principal = authorize(SCOPES.write)) -> JSONResponse:
    outcome, secret = await webhooks.create_endpoint(
        owner=principal.subject, url=body.url, events=[str(e) for e in body.events], description=body.description,
        idempotency_key=idempotency_key)
    response = _answer(outcome)
    if secret is not None:
        return JSONResponse({**outcome.body, "secret": secret}, status_code=outcome.status, headers=outcome.headers)
    return response


@router.get("/webhook_endpoints", response_model=Page[WebhookEndpointRead], summary="The caller's webhook endpoints")
async def list_endpoints(page: PageRequest = page_params(default=50, maximum=500),
                         principal: Principal = authorize(SCOPES.read)) -> Page[WebhookEndpointRead]:
    return await webhooks.list_endpoints(owner=principal.subject, page=page)


@router.get("/webhook_endpoints/{endpoint_id}", response_model=WebhookEndpointRead, summary="A webhook endpoint")
async def get_endpoint(endpoint_id: EndpointId, principal: Principal = authorize(SCOPES.read)) -> WebhookEndpointRead:
    return await webhooks.get_endpoint(endpoint_id=endpoint_id, owner=principal.subject, privileged=_admin(principal))


@router.delete("/webhook_endpoints/{endpoint_id}", status_code=204, summary="Remove a webhook endpoint")
async def delete_endpoint(endpoint_id: EndpointId, principal: Principal = authorize(SCOPES.write)) -> Response:
    await webhooks.delete_endpoint(endpoint_id=endpoint_id, owner=principal.subject, privileged=_admin(principal))
    return Response(status_code=204)


@router.get("/webhook_endpoints/{endpoint_id}/deliveries", response_model=Page[WebhookDeliveryRead],
            summary="Deliveries to an endpoint, each with its attempts")
async def list_deliveries(endpoint_id: EndpointId, page: PageRequest = page_params(default=50, maximum=500),
                          principal: Principal = authorize(SCOPES.read)) -> Page[WebhookDeliveryRead]:
    return await webhooks.list_deliveries(endpoint_id=endpoint_id, owner=principal.subject,
                                          privileged=_admin(principal), page=page)
