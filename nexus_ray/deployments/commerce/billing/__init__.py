"""billing-service: payment intents (authorise, capture, cancel, refund), Stripe-style idempotency keys, a
provider interface with a sandbox of test cards, ledger postings, signed webhooks retried with backoff.

Routes in :mod:`.views`; logic and state machine in :mod:`.service`; the provider in :mod:`.provider`;
what is posted to the ledger in :mod:`.postings`; webhooks (and :func:`verify_signature` for receivers)
in :mod:`.webhooks`. ``background``: the provider's late outcomes, webhook delivery, ledger posting
retries, the purge of expired idempotency keys. Other namespaces call ``exports`` with
:func:`nexus_ray.deployments.kit.calls.call` (the contract in the commerce issue).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from nexus_ray.edge.errors import parse_input

from . import postings, service, webhooks
from .keyed import purge_keys_forever
from .models import CaptureCreate, CardDeclined, PaymentIntentCreate, PaymentIntentRead, RefundCreate, RefundRead
from .views import router
from .webhooks import InvalidSignature, verify_signature

background = [service.run_provider, webhooks.deliver_forever, postings.retry_forever, purge_keys_forever]

# Callers of the exports are platform services that authorised their own callers at their edge: they act as
# ``caller`` (which scopes their idempotency keys) and may act on any intent, as the ledger's exports do.
_KEY = "idempotency_key"


async def authorize(*, caller: str, amount: int, currency: str, payment_method: str, customer: str,
                    idempotency_key: str, metadata: dict[str, Any] | None = None) -> PaymentIntentRead:
    """Create and authorise an intent. A decline is returned (status ``declined``, ``decline_code``), not raised."""
    body = parse_input(PaymentIntentCreate, {"amount": amount, "currency": currency, "payment_method": payment_method,
                                          "customer": customer, "metadata": metadata or {}})
    outcome = await service.authorize(
        caller=caller, customer=customer, amount=body.amount, currency=body.currency,
        payment_method=body.payment_method, metadata=body.metadata, idempotency_key=idempotency_key,
        field_name=_KEY)
    if outcome.status == 402:
        return PaymentIntentRead.model_validate(outcome.body["payment_intent"])
    return outcome.model(PaymentIntentRead, classes={402: CardDeclined})


async def capture(*, caller: str, payment_intent_id: UUID | str, idempotency_key: str, amount: int | None = None
                  ) -> PaymentIntentRead:
    body = parse_input(CaptureCreate, {"amount": amount})
    outcome = await service.capture(caller=caller, privileged=True, intent_id=UUID(str(payment_intent_id)),
                                    amount=body.amount, idempotency_key=idempotency_key, field_name=_KEY)
    return outcome.model(PaymentIntentRead)


async def cancel(*, caller: str, payment_intent_id: UUID | str) -> PaymentIntentRead:
    outcome = await service.cancel(caller=caller, privileged=True, intent_id=UUID(str(payment_intent_id)))
    return outcome.model(PaymentIntentRead)


async def refund(*, caller: str, payment_intent_id: UUID | str, idempotency_key: str, amount: int | None = None
                 ) -> RefundRead:
    body = parse_input(RefundCreate, {"amount": amount})
    outcome = await service.refund(caller=caller, privileged=True, intent_id=UUID(str(payment_intent_id)),
                                   amount=body.amount, reason=None, idempotency_key=idempotency_key, field_name=_KEY)
    return outcome.model(RefundRead)


async def get_payment_intent(*, payment_intent_id: UUID | str) -> PaymentIntentRead:
    return await service.get_intent(intent_id=UUID(str(payment_intent_id)), caller="", privileged=True)


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"authorize": authorize, "capture": capture, "cancel": cancel, "refund": refund,
           "get_payment_intent": get_payment_intent}

__all__ = ["InvalidSignature", "background", "exports", "router", "verify_signature"]
