"""The checkout saga's steps: the one place where the order-processor calls the other commerce services.

Each step is a forward action and, where it changes something, its compensation; both call a
collaborator's export through :func:`nexus_ray.deployments.kit.calls.call` with the contract's
names (``COMMERCE_CONTRACTS.md``) and an idempotency key derived from the order and the step, so a
step run twice (a retry, a recovery after a crash) does its work once. The saga engine
(:mod:`.saga`) runs them in the groups of :data:`PLAN` (a group's steps at the same time), persists each result,
and compensates the done ones in reverse when a later one fails.

How a step can end, and what the engine does:

* it returns a dict (stored as the step's result: ids the later steps and compensations need);
* :class:`Refused` -- a definitive answer (out of stock, card declined, unknown SKU, or the
  collaborator is not deployed: no such export): the order is compensated and fails;
* any other exception -- the outcome is unknown (a timeout, a store away): the step is run
  again later with the same key, by the runner or by recovery, and only after
  ``order_max_attempts`` runs does the order give up and compensate.

Wiring a collaborator is this module only: the service name and export of each call below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from nexus_ray.deployments.kit.calls import call
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import NexusError, NotFound

from .settings import OrderSettings

ME = "puabo-nuki-order-processor"
CATALOG = "puabo-nuki-product-catalog"
INVENTORY = "puabo-nuki-inventory-mgr"
BILLING = "billing-service"
INVOICES = "invoice-gen"
SHIPPING = "puabo-nuki-shipping-service"


class Refused(Exception):
    """A step's definitive refusal: its problem+json body (status, detail, code...), and the step compensates."""

    def __init__(self, problem: dict[str, Any]):
        super().__init__(problem)
        self.problem = problem


class AwaitingConfirmation(Exception):
    """The step's outcome is not known yet (a payment awaiting confirmation): run it again later."""


@dataclass
class OrderContext:
    """What a step sees of the order: its request, and what the steps before it returned."""

    id: str
    customer: str
    currency: str
    total: int | None
    request: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    refund_restock: bool = False
    capture_method: str = "automatic"

    def key(self, step: str) -> str:
        """The idempotency key of this order's ``step``: the same on every run of the step."""
        return f"order:{self.id}:{step}"


async def _call(service: str, export: str, **kwargs: Any) -> dict[str, Any]:
    """``call`` with the result as a plain dict; domain refusals and absent collaborators as :class:`Refused`."""
    try:
        out = await call(service, export, **kwargs)
    except NotFound as exc:
        if exc.detail.startswith(f"{service} exports no function"):  # not deployed: nothing happened there
            raise Refused({"status": 503, "detail": f"{service} cannot {export} now", "code": "step_unavailable",
                           "service": service, "export": export}) from None
        raise Refused(exc.problem()) from None
    except NexusError as exc:
        if exc.status >= 500:
            raise  # unavailable or failed there: the outcome is unknown, run the step again later
        raise Refused(exc.problem()) from None
    return out.model_dump(mode="json") if isinstance(out, BaseModel) else dict(out)


# -- forward steps and their compensations ---------------------------------------------------------------


def _invoice_lines(priced: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"description": ln.get("name") or ln["sku"], "quantity": ln["quantity"], "unit_price": ln["unit_price"],
             "tax_category": ln["tax_category"]} for ln in priced["lines"]]


async def price(ctx: OrderContext) -> dict[str, Any]:
    """Price the cart: net lines from the catalog, tax from invoice-gen; ``total`` is what is charged.

    Catalog prices are net. The customer is charged the gross total that the invoice issued after the
    capture will state (the same rates and per-line rounding), so the money taken and the invoice agree.
    """
    priced = await _call(CATALOG, "price_lines", lines=ctx.request["lines"], currency=ctx.currency)
    quote = await _call(INVOICES, "tax_quote", country=ctx.request["shipping_address"]["country"],
                        currency=ctx.currency, lines=_invoice_lines(priced))
    return {**priced, "net_total": priced["total"], "tax_total": quote["tax_total"], "total": quote["total"]}


async def reserve(ctx: OrderContext) -> dict[str, Any]:
    s = settings_of(OrderSettings)
    # A manual-capture order waits at authorised for the merchant: its stock is held as long as its payment.
    ttl = s.order_reservation_ttl_s if ctx.capture_method == "automatic" else s.order_authorization_hold_s
    return await _call(INVENTORY, "reserve", caller=ME, reference=ctx.id, lines=ctx.request["lines"], ttl_s=ttl,
                       idempotency_key=ctx.key("reserve"))


async def release(ctx: OrderContext) -> dict[str, Any]:
    """Stock back: a held reservation is released, a committed one returned."""
    return await _call(INVENTORY, "release_reservation", caller=ME, reservation_id=ctx.results["reserve"]["id"])


async def authorize(ctx: OrderContext) -> dict[str, Any]:
    assert ctx.total is not None
    intent = await _call(BILLING, "authorize", caller=ME, amount=ctx.total, currency=ctx.currency,
                         payment_method=ctx.request["payment_method"], customer=ctx.customer,
                         idempotency_key=ctx.key("authorize"), metadata={"order_id": ctx.id})
    if intent.get("status") == "requires_action":
        # Confirmed later by the provider (3-D Secure, a bank's delay): the key replays this first answer, so
        # look at the intent as it is now; still waiting, the step is run again later (recovery), not failed.
        intent = await _call(BILLING, "get_payment_intent", payment_intent_id=intent["id"])
        if intent.get("status") == "requires_action":
            raise AwaitingConfirmation(f"payment intent {intent['id']} awaits confirmation")
    if intent.get("status") != "authorized":  # declined, or canceled while it waited
        raise Refused({"status": 402, "detail": f"payment {intent.get('status')}", "code": "payment_declined",
                       "decline_code": intent.get("decline_code"), "payment_intent_id": intent.get("id")})
    return intent


async def void(ctx: OrderContext) -> dict[str, Any]:
    if "capture" in ctx.results:
        return {"skipped": "captured: the capture's compensation refunds it"}
    return await _call(BILLING, "cancel", caller=ME, payment_intent_id=ctx.results["authorize"]["id"])


async def capture(ctx: OrderContext) -> dict[str, Any]:
    return await _call(BILLING, "capture", caller=ME, payment_intent_id=ctx.results["authorize"]["id"],
                       idempotency_key=ctx.key("capture"))


async def refund(ctx: OrderContext) -> dict[str, Any]:
    return await _call(BILLING, "refund", caller=ME, payment_intent_id=ctx.results["authorize"]["id"],
                       idempotency_key=ctx.key("refund"))


async def commit_stock(ctx: OrderContext) -> dict[str, Any]:
    """Paid: the held units leave stock for good (undone by the reservation's release, as a return)."""
    return await _call(INVENTORY, "commit_reservation", caller=ME, reservation_id=ctx.results["reserve"]["id"])


async def invoice(ctx: OrderContext) -> dict[str, Any]:
    address = ctx.request["shipping_address"]
    return await _call(INVOICES, "issue_invoice", caller=ME, series=settings_of(OrderSettings).order_invoice_series,
                       order_id=ctx.id, customer={"id": ctx.customer, "name": address["name"], "address": address},
                       country=address["country"], currency=ctx.currency, lines=_invoice_lines(ctx.results["price"]),
                       idempotency_key=ctx.key("invoice"))


async def credit_note(ctx: OrderContext) -> dict[str, Any]:
    return await _call(INVOICES, "credit_note", caller=ME, invoice_id=ctx.results["invoice"]["id"],
                       idempotency_key=ctx.key("credit_note"), reason=f"order {ctx.id} undone")


async def ship(ctx: OrderContext) -> dict[str, Any]:
    weight = sum(int(ln.get("weight_g") or 0) * int(ln["quantity"]) for ln in ctx.results["price"]["lines"])
    return await _call(SHIPPING, "request_shipment", caller=ME, order_id=ctx.id,
                       address=ctx.request["shipping_address"], weight_g=weight,
                       service_level=ctx.request["service_level"], customer=ctx.customer,
                       idempotency_key=ctx.key("ship"))


async def cancel_shipment(ctx: OrderContext) -> dict[str, Any]:
    return await _call(SHIPPING, "cancel_shipment", caller=ME, shipment_id=ctx.results["ship"]["id"])


@dataclass(frozen=True)
class Step:
    """One saga step: its forward action and, when it changes anything, its compensation."""

    name: str
    forward: Callable[[OrderContext], Awaitable[dict[str, Any]]]
    compensate: Callable[[OrderContext], Awaitable[dict[str, Any]]] | None = None


#: The checkout, in order, as groups: the steps of a group run at the same time, each needing only what the groups
#: before it returned. Pricing and the stock reservation both need only the cart; the invoice and the shipment both
#: need only the priced cart and the payment taken. A manual-capture order waits (status authorized) after
#: ``authorize``.
PLAN: tuple[tuple[Step, ...], ...] = (
    (Step("price", price), Step("reserve", reserve, release)),
    (Step("authorize", authorize, void),),
    # Stock is committed before the money is taken: a reservation that lapsed is refused here, while the
    # payment can still be voided rather than refunded.
    (Step("commit_stock", commit_stock),),  # undone by the reservation's release (a return)
    (Step("capture", capture, refund),),
    (Step("invoice", invoice, credit_note), Step("ship", ship, cancel_shipment)),
)
#: Every step in the plan's order (compensations run in the reverse of it).
STEPS: tuple[Step, ...] = tuple(step for group in PLAN for step in group)
BY_NAME = {s.name: s for s in STEPS}
