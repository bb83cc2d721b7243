"""billing-service's schemas: payment intents, refunds, webhook endpoints and their deliveries.

Amounts are integers of minor units with an ISO 4217 currency, as in the ledger (its ``Amount``,
``Currency`` and ``Metadata`` types are reused, so the two refuse the same inputs).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nexus_ray.deployments.commerce.ledger.models import OWNER_PATTERN, Amount, Currency, Metadata
from nexus_ray.exceptions import NexusError

IntentStatus = Literal["requires_action", "authorized", "declined", "captured", "canceled", "refunded",
                       "partially_refunded"]
RefundReason = Literal["duplicate", "fraudulent", "requested_by_customer"]

#: Events billing emits (outbox topics); webhooks carry the same names except ``payment_intent.refunded``,
#: which endpoints receive as ``charge.refunded`` (Stripe's name).
EVENT_TYPES = ("payment_intent.created", "payment_intent.requires_action", "payment_intent.authorized",
               "payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled",
               "charge.refunded")


class CardDeclined(NexusError):
    """402: the provider declined the card; the body names ``decline_code`` and carries the declined intent."""

    status, title, slug = 402, "Payment Required", "card-declined"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class PaymentIntentCreate(_In):
    amount: Amount
    currency: Currency
    payment_method: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_ ]+$",
        description="A sandbox test card: a token such as `pm_card_visa` or a test card number such as "
                    "4242424242424242.")
    customer: str | None = Field(
        None, pattern=OWNER_PATTERN, description="Who pays (may read the intent); default: the caller. Another "
                                                 "customer needs the admin scope.")
    metadata: Metadata


class CaptureCreate(_In):
    amount: Amount | None = Field(None, description="Capture this much (at most the authorised amount; the rest is "
                                                    "released); default: all of it.")


class RefundCreate(_In):
    amount: Amount | None = Field(None, description="Refund this much (at most what is captured and not yet "
                                                    "refunded); default: all of that.")
    reason: RefundReason | None = None


class PaymentIntentRead(BaseModel):
    id: UUID
    status: IntentStatus
    amount: int
    amount_capturable: int = Field(description="What a capture may still take (authorized intents only).")
    amount_captured: int
    amount_refunded: int
    currency: str
    customer: str
    created_by: str = Field(description="The merchant: who created the intent (and may capture, cancel, refund).")
    card_brand: str
    card_last4: str
    decline_code: str | None = None
    metadata: dict[str, object]
    created_at: datetime
    updated_at: datetime


class RefundRead(BaseModel):
    id: UUID
    payment_intent_id: UUID
    amount: int
    currency: str
    reason: RefundReason | None = None
    status: Literal["succeeded"]
    created_by: str
    created_at: datetime
    payment_intent: PaymentIntentRead | None = Field(None, description="The intent after this refund.")


def _endpoint_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValueError("must be an absolute http(s) URL")
    return url


class WebhookEndpointCreate(_In):
    url: Annotated[str, AfterValidator(_endpoint_url)] = Field(
        max_length=2048, json_schema_extra={"format": "uri"},
        description="Where events are POSTed (https; http only where the settings allow it).")
    events: list[Literal[EVENT_TYPES] | Literal["*"]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["*"], min_length=1, max_length=len(EVENT_TYPES) + 1,
        description="Event types to receive; `*` for all.")
    description: str = Field("", max_length=500)


class WebhookEndpointRead(BaseModel):
    id: UUID
    url: str
    events: list[str]
    description: str
    status: Literal["enabled", "disabled"]
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    secret: str = Field(description="The signing secret (whsec_...): shown this once, never again.")


class DeliveryAttempt(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookDeliveryRead(BaseModel):
    id: UUID
    endpoint_id: UUID
    event_id: UUID
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    created_at: datetime
    delivered_at: datetime | None
    history: list[DeliveryAttempt] = Field(default_factory=list)
