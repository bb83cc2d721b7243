"""order-processor's logic: orders created once per key, run through the checkout saga, cancelled and refunded.

The saga itself (steps persisted one by one, compensation, leases, recovery) is :mod:`.saga`; the
calls to the other services are :mod:`.steps`. Here: what the routes ask for.

Idempotent creation: an order's key (scoped to its customer) is a UNIQUE column of the order. The
INSERT that claims it waits for a concurrent request with the same key and then finds its order:
the same body gets that order back (a failed order's refusal again, as Stripe replays errors);
another body is a 409 naming ``idempotency_key``. The order and its ``order.created`` event are
committed before any step runs, so a crash at any point leaves an order that recovery settles.

What the client is told: 201 with the order when the saga went through (``completed``, or
``authorized`` for manual capture); the refusal of the step that failed (409 out of stock naming the
line, 402 declined, 422 unknown SKU, 503 a collaborator that is not there) with the order's id and
``failed`` status once it is compensated; 202 with the order when a step did not answer and the
order was left to recovery.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NexusError, NotFound, ValidationFailed, for_status
from nexus_ray.stores import postgres

from . import saga
from .models import AT_REST, OrderRead, SagaLogRead, check_transition
from .settings import OrderSettings
from .steps import Refused, cancel_shipment

_ADDED_BY_STEP = {"reservation_id": "reserve", "payment_intent_id": "authorize", "invoice_id": "invoice",
                  "shipment_id": "ship"}


def order_read(row: saga.OrderRow) -> OrderRead:
    results = row["results"]
    priced = results.get("price")
    return OrderRead(
        id=row["id"], customer=row["customer"], status=row["status"], capture_method=row["capture_method"],
        currency=str(row["currency"]).strip(), total=row["total"],
        lines=priced["lines"] if priced else row["request"]["lines"],
        failure=row["failure"], created_at=row["created_at"], updated_at=row["updated_at"],
        **{f: str(results[s]["id"]) for f, s in _ADDED_BY_STEP.items() if s in results and results[s].get("id")})


def refusal_of(row: saga.OrderRow) -> NexusError:
    """The error a failed order answers with: its failed step's refusal, naming the order."""
    problem = dict(row["failure"]["problem"])
    err = for_status(int(problem.pop("status", 500)), str(problem.pop("detail", "")))
    for k in ("type", "title", "instance", "request_id"):
        problem.pop(k, None)
    err.extra = {**problem, "order_id": str(row["id"]), "order_status": row["status"],
                 "failed_step": row["failure"]["step"]}
    return err


def _hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def create_order(*, customer: str, request: dict[str, Any], currency: str, capture_method: str,
                       idempotency_key: str) -> tuple[saga.OrderRow, bool]:
    """Create the order (once per key) and run its saga: (the order's row as it stands, replayed).

    The creation runs on with its saga when the request stops waiting (:func:`saga.run_on`): a request cancelled
    while its insert was out could otherwise leave an order created and leased to a runner that never drives it,
    held until recovery takes it when the lease runs out."""
    h = _hash({"request": request, "currency": currency, "capture_method": capture_method})
    return await saga.run_on(_create(customer, request, currency, capture_method, idempotency_key, h))


async def _create(customer: str, request: dict[str, Any], currency: str, capture_method: str, idempotency_key: str,
                  h: str) -> tuple[saga.OrderRow, bool]:
    runner = saga.new_runner()
    row = await saga.start(customer=customer, request=request, currency=currency, capture_method=capture_method,
                           idempotency_key=idempotency_key, request_hash=h, runner=runner)
    if row is None:
        pg = await postgres.pool()
        earlier = await pg.fetchrow(f"SELECT {saga.COLUMNS} FROM orders WHERE customer = $1 AND idempotency_key = $2",
                                    customer, idempotency_key)
        assert earlier is not None
        if earlier["request_hash"] != h:
            raise Conflict("idempotency_key was already used with another order", extra={
                "errors": [{"field": "idempotency_key", "message": "was used with another order",
                            "type": "idempotency_key_reused"}], "code": "idempotency_key_reused",
                "order_id": str(earlier["id"])})
        return earlier, True
    return await saga.drive(row["id"], runner, row=row, announced=saga.FIRST_STEPS), False


async def _visible(conn: asyncpg.Connection | asyncpg.Pool, order_id: UUID, caller: str, privileged: bool,
                   *, lock: bool = False) -> saga.OrderRow:
    row = await conn.fetchrow(f"SELECT {saga.COLUMNS} FROM orders WHERE id = $1" + (" FOR UPDATE" if lock else ""),
                              order_id)
    # Another customer's order is reported as missing: its existence is not the caller's business.
    if row is None or (row["customer"] != caller and not privileged):
        raise NotFound(f"order {order_id} not found")
    return row


async def get_order(*, order_id: UUID, caller: str, privileged: bool) -> OrderRead:
    return order_read(await _visible(await postgres.pool(), order_id, caller, privileged))


async def list_orders(*, customer: str, page: PageRequest) -> Page[OrderRead]:
    """A customer's orders, newest first (keyset on creation time and id)."""
    after = page.after
    if after is not None and (len(after) != 2 or not all(isinstance(v, str) for v in after)):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    try:
        at, last = (datetime.fromisoformat(after[0]), UUID(after[1])) if after else (None, None)
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {saga.COLUMNS} FROM orders WHERE customer = $1 AND ($2::timestamptz IS NULL OR "
        f"(created_at, id) < ($2::timestamptz, $3::uuid)) ORDER BY created_at DESC, id DESC LIMIT $4",
        customer, at, last, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["created_at"].isoformat(), str(r["id"])), item=order_read)


async def saga_log(*, order_id: UUID, caller: str, privileged: bool) -> list[SagaLogRead]:
    pg = await postgres.pool()
    await _visible(pg, order_id, caller, privileged)
    rows = await pg.fetch("SELECT id, step, phase, outcome, detail, created_at FROM order_saga_log "
                          "WHERE order_id = $1 ORDER BY id", order_id)
    return [SagaLogRead.model_validate(dict(r)) for r in rows]


async def _take(order_id: UUID, caller: str, privileged: bool, to: str, *, settled: str,
                allowed: Sequence[str]) -> tuple[saga.OrderRow, str | None]:
    """Lease the order to move it to ``to``: (its row, the runner) -- no runner when it is ``settled`` already."""
    runner = saga.new_runner()
    async with postgres.transaction() as conn:
        row = await _visible(conn, order_id, caller, privileged, lock=True)
        if row["status"] in (settled, to):
            return row, None  # asked again: idempotent (an unwinding in progress is finished by its runner)
        if row["status"] not in allowed:
            check_transition(row["status"], to)  # the state machine's 409
            raise Conflict(f"an order that is {row['status']} cannot become {to} now",
                           extra={"code": "invalid_transition", "status": row["status"], "to": to})
        if row["lease_owner"] is not None and row["lease_until"] > datetime.now(UTC):
            raise Conflict(f"order {order_id} is being processed; retry shortly", extra={"code": "order_busy"})
        await conn.execute("UPDATE orders SET lease_owner = $2, lease_until = now() + make_interval(secs => $3) "
                           "WHERE id = $1", order_id, runner, settings_of(OrderSettings).order_lease_s)
    return row, runner


async def cancel_order(*, order_id: UUID, caller: str, privileged: bool, reason: str) -> saga.OrderRow:
    """Cancel: before capture the payment is voided and the stock released; after it, the shipment is cancelled
    (409 if it has left), the payment refunded, a credit note issued and the stock returned. Runs on when the
    request stops waiting (:func:`saga.run_on`), as every change of an order does."""
    return await saga.run_on(_cancel(order_id, caller, privileged, reason))


async def _cancel(order_id: UUID, caller: str, privileged: bool, reason: str) -> saga.OrderRow:
    row, runner = await _take(order_id, caller, privileged, "cancelling", settled="cancelled",
                              allowed=("authorized", "paid", "completed"))
    if runner is None:
        return row
    undone = None
    if "ship" in row["results"]:  # the one compensation that may be refused: before the order changes at all
        try:
            undone = ("ship", await cancel_shipment(saga.context(row)))
        except Refused as refused:
            await saga.write(row, runner, line=("ship", "compensate", "failed", refused.problem), let_go_s=0)
            raise Conflict("the shipment can no longer be cancelled: ask for a refund",
                           extra={"code": "already_shipped", "shipment": refused.problem}) from None
        except BaseException:
            await saga.write(row, runner, let_go_s=0)
            raise
    row = await saga.write(row, runner, line=("order", "status", "started", {"cancel": reason}),
                           status="cancelling", undone=undone)
    return await saga.drive(order_id, runner, row=row)


async def refund_order(*, order_id: UUID, caller: str, reason: str, restock: bool) -> saga.OrderRow:
    """Refund a paid order in full with a credit note; its stock returns only when ``restock`` (goods back)."""
    return await saga.run_on(_refund(order_id, caller, reason, restock))


async def _refund(order_id: UUID, caller: str, reason: str, restock: bool) -> saga.OrderRow:
    row, runner = await _take(order_id, caller, True, "refunding", settled="refunded", allowed=("paid", "completed"))
    if runner is None:
        return row
    pg = await postgres.pool()
    await pg.execute("UPDATE orders SET refund_restock = $2 WHERE id = $1 AND lease_owner = $3", order_id, restock,
                     runner)
    row = await saga.write(row, runner, line=("order", "status", "started", {"refund": reason, "restock": restock}),
                           status="refunding")
    return await saga.drive(order_id, runner, row=row)


async def capture_order(*, order_id: UUID, caller: str) -> saga.OrderRow:
    """Capture a manual-capture order that is authorised: the saga goes on from the capture step."""
    return await saga.run_on(_capture(order_id, caller))


async def _capture(order_id: UUID, caller: str) -> saga.OrderRow:
    row, runner = await _take(order_id, caller, True, "paid", settled="completed", allowed=("authorized",))
    if runner is None:
        return row
    return await saga.drive(order_id, runner, capture_now=True)


async def home_summary(*, user_id: str) -> dict[str, Any]:
    """The home view's orders part: how many orders the user has, how many are not over, the 3 latest."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT id, status, total, currency, created_at, count(*) OVER () AS n, "
        "count(*) FILTER (WHERE status <> ALL($2::text[])) OVER () AS open "
        "FROM orders WHERE customer = $1 ORDER BY created_at DESC, id LIMIT 3", user_id, list(AT_REST))
    return {"count": rows[0]["n"] if rows else 0, "open": rows[0]["open"] if rows else 0,
            "latest": [{"order_id": str(r["id"]), "status": r["status"], "total": r["total"],
                        "currency": str(r["currency"]).strip(), "created_at": r["created_at"].isoformat()}
                       for r in rows]}
