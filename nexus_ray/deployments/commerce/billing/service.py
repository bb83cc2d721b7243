"""billing-service's logic: payment intents through their state machine, keyed, provider-backed, ledger-posted.

State machine
-------------
A payment intent is created and authorised in one step (``authorize``) and then moves only
along these edges; anything else is a 409 (``code: payment_intent_unexpected_state``)::

    requires_action ──(provider: action done)──> authorized ──capture──> captured ──refund──> partially_refunded
          │   └─────(provider: action failed)──> declined        │                   │                 │ refund
          └──cancel──> canceled <──────cancel─────────────────────┘                   └──refund (all)──> refunded

``declined``, ``canceled`` and ``refunded`` are final. A capture takes all of the authorised
amount or part of it (the rest is released: one capture per intent, as with cards). Refunds
add up to at most what was captured; the last one that reaches it makes the intent
``refunded``. Cancelling a canceled intent answers it again (idempotent).

Every change runs in one transaction that holds the intent's row lock (``FOR UPDATE``), so
two requests on one intent are serialised and see each other's result: two captures with
different keys give one capture and one 409. Within it, the change calls the provider, writes
the intent, queues the ledger posting it owes (:mod:`.postings`), emits its event to the
outbox and queues its webhooks (:mod:`.webhooks`): all of it commits, or none.

Idempotency
-----------
Every POST that changes state goes through :mod:`nexus_ray.deployments.kit.idempotency` with
this service's table ``billing_idempotency``: the same key (per caller) with the same request
replays the first response, errors included (a 402 decline, a 409); with another request it is
a 422 naming the key (``Idempotency-Key`` over HTTP, ``idempotency_key`` for exports); keys
expire after ``billing_idempotency_ttl_s`` (24 h) and :func:`purge_keys_forever` deletes them.
A concurrent retry waits for the first request's transaction and is then answered with its
response. The provider is called with keys derived from billing's own ids
(``billing:capture:<intent>``, ``billing:refund:<refund>``), and the ledger with
``billing:<kind>:<id>`` -- so a capture retried at any layer charges once and posts once.

What is not covered: a crash between a provider call and billing's commit leaves a provider
operation billing does not know about (a real provider's authorisation then lapses by itself; a
refund would surface in a reconciliation with the provider's records, which is not built).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit.idempotency import Answer, AnswerStore, Keyed, Outcome, fingerprint
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.exceptions import Conflict, Forbidden, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.together import GroupCommit

from . import postings, webhooks
from .keyed import KEYS
from .models import CardDeclined, PaymentIntentRead, RefundRead
from .provider import Charge, provider

log = logging.getLogger(__name__)


#: Allowed moves of the state machine (see the module docstring).
TRANSITIONS: dict[str, frozenset[str]] = {
    "requires_action": frozenset({"authorized", "declined", "canceled"}),
    "authorized": frozenset({"captured", "canceled"}),
    "captured": frozenset({"partially_refunded", "refunded"}),
    "partially_refunded": frozenset({"partially_refunded", "refunded"}),
    "declined": frozenset(),
    "canceled": frozenset(),
    "refunded": frozenset(),
}
#: Outbox topics whose webhook event type is named otherwise (Stripe's name).
WEBHOOK_TYPE = {"payment_intent.refunded": "charge.refunded"}

_INTENT = ("id, created_by, customer, amount, currency, status, amount_captured, amount_refunded, card_brand, "
           "card_last4, decline_code, provider_charge_id, metadata, created_at, updated_at")
_REFUND = "id, payment_intent_id, amount, currency, reason, status, created_by, created_at"


def _intent_read(row: asyncpg.Record) -> PaymentIntentRead:
    return PaymentIntentRead(
        id=row["id"], status=row["status"], amount=row["amount"],
        amount_capturable=row["amount"] if row["status"] == "authorized" else 0,
        amount_captured=row["amount_captured"], amount_refunded=row["amount_refunded"],
        currency=row["currency"].strip(), customer=row["customer"], created_by=row["created_by"],
        card_brand=row["card_brand"], card_last4=row["card_last4"], decline_code=row["decline_code"],
        metadata=row["metadata"], created_at=row["created_at"], updated_at=row["updated_at"])


def _refund_read(row: asyncpg.Record, intent: PaymentIntentRead | None = None) -> RefundRead:
    return RefundRead(**{**dict(row), "currency": row["currency"].strip()}, payment_intent=intent)


def _unexpected(row: Mapping[str, Any], action: str) -> Conflict:
    return Conflict(f"payment intent {row['id']} is {row['status']}: it cannot be {action}",
                    extra={"code": "payment_intent_unexpected_state", "payment_intent_status": row["status"],
                           "action": action})


def _move(row: asyncpg.Record, to: str, action: str) -> None:
    if to not in TRANSITIONS[row["status"]]:
        raise _unexpected(row, action)


def _report(topics: Sequence[str], owner: str, key: UUID, data: dict[str, Any]) -> webhooks.Report:
    """The events ``topics`` about one object (``data``), for the outbox and the merchant's webhooks."""
    return webhooks.Report([(topic, WEBHOOK_TYPE.get(topic, topic)) for topic in topics], str(key), owner, data)


async def _publish(conn: asyncpg.Connection, queued: list[int], topics: Sequence[str], owner: str, key: UUID,
                   data: dict[str, Any]) -> None:
    """The events ``topics`` (about one object, ``data``) in the outbox and queued for the merchant's webhooks, in
    the change's transaction and one statement; how many deliveries they queued goes on ``queued`` (the deliverer
    is woken after the commit only for those)."""
    queued.append(await webhooks.publish(conn, [_report(topics, owner, key, data)]))


def _checked(row: asyncpg.Record | None, intent_id: UUID, caller: str, privileged: bool) -> asyncpg.Record:
    """The intent ``row`` (None: not found) if ``caller`` may change it: its merchant (or a privileged caller);
    404 to strangers, 403 to its customer."""
    if row is None or not (privileged or caller in (row["created_by"], row["customer"])):
        raise NotFound(f"payment intent {intent_id} not found")
    if not privileged and row["created_by"] != caller:
        raise Forbidden("only the merchant that created a payment intent changes it")
    return row


async def _locked(conn: asyncpg.Connection, intent_id: UUID, caller: str, privileged: bool) -> asyncpg.Record:
    """The intent, locked, if ``caller`` may change it (:func:`_checked`)."""
    row = await conn.fetchrow(f"SELECT {_INTENT} FROM billing_payment_intents WHERE id = $1 FOR UPDATE", intent_id)
    return _checked(row, intent_id, caller, privileged)


# -- authorise ---------------------------------------------------------------------------------------------------


def _provider_key(operation: str, caller: str, key: str | None, fingerprint_: str) -> str:
    """The idempotency key billing gives the provider for a keyed request: derived from the request's own key, so
    that a retry after an attempt whose local write was lost (its connection cut after the provider acted)
    reaches the provider as the same request and is replayed there -- the same charge, the same refund -- instead
    of acting twice. An unkeyed request gets a key of its own."""
    if key is None:
        return f"billing:{operation}:{uuid.uuid4()}"
    digest = hashlib.sha256("\0".join((operation, caller, key, fingerprint_)).encode()).hexdigest()
    return f"billing:{operation}:{digest[:40]}"


def _authorized(intent: dict[str, Any], decline_code: str | None) -> tuple[int, dict[str, Any]]:
    if intent["status"] == "declined":
        return 402, CardDeclined(f"the card was declined: {decline_code}", extra={
            "code": "card_declined", "decline_code": decline_code, "payment_intent": intent}).problem()
    return 201, intent


@dataclass(frozen=True)
class _Authorization:
    caller: str
    customer: str
    amount: int
    currency: str
    payment_method: str
    metadata: dict[str, Any]
    provider_key: str


async def authorize(
    *, caller: str, customer: str, amount: int, currency: str, payment_method: str, metadata: dict[str, Any],
    idempotency_key: str, field_name: str = "Idempotency-Key",
) -> Outcome:
    """Create a payment intent and authorise it with the provider: 201 (authorized or requires_action) or
    402 (declined; the problem carries ``decline_code`` and the declined intent, which is kept).

    The authorisations that a process's requests ask for at the same moment are written together (one
    transaction of a few statements for all of them; :func:`_authorize_many`)."""
    fp = fingerprint("authorize", {"amount": amount, "currency": currency, "payment_method": payment_method,
                                   "customer": customer, "metadata": metadata})
    ask = _Authorization(caller, customer, amount, currency, payment_method, metadata,
                         _provider_key("authorize", caller, idempotency_key, fp))
    return await _AUTHORIZE.submit("authorize", Keyed(caller, idempotency_key, fp, ask, field_name))


async def _authorize_many(_: str, requests: list[Keyed[_Authorization]]) -> list[Outcome | NexusError]:
    hooks: list[int] = []
    outcomes = await KEYS.run_many(requests, lambda conn, asks, store: _authorize_all(conn, asks, hooks, store))
    webhooks.wake(sum(hooks))
    return outcomes


async def _authorize_all(conn: asyncpg.Connection, asks: list[_Authorization], hooks: list[int],
                         store: AnswerStore) -> list[Answer]:
    """Authorise ``asks`` with the provider and record their intents, their events and the answers to their keys,
    in two statements for all."""
    p = provider()
    charges = await asyncio.gather(*(
        p.authorize(amount=a.amount, currency=a.currency, payment_method=a.payment_method,
                    idempotency_key=a.provider_key) for a in asks), return_exceptions=True)
    answers: list[tuple[int, dict[str, Any]] | NexusError | None] = [None] * len(asks)
    made: list[tuple[int, Charge]] = []
    for i, charge in enumerate(charges):
        if isinstance(charge, NexusError):  # refused by the provider (a card test mode does not know)
            answers[i] = charge
        elif isinstance(charge, BaseException):  # the outcome is unknown: the whole batch is tried again
            raise charge
        else:
            made.append((i, charge))
    if made:
        now = datetime.now(UTC)
        rows = {r["provider_charge_id"]: r for r in await conn.fetch(
            f"INSERT INTO billing_payment_intents (id, created_by, customer, amount, currency, status, card_brand, "
            f"card_last4, decline_code, provider, provider_charge_id, metadata, created_at, updated_at) "
            f"SELECT i, cb, cu, a, c, s, b, l4, d, $12, pc, m::jsonb, $13, $13 FROM unnest($1::uuid[], $2::text[], "
            f"$3::text[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], "
            f"$11::text[]) AS u(i, cb, cu, a, c, s, b, l4, d, pc, m) "
            f"ON CONFLICT (provider_charge_id) DO NOTHING RETURNING {_INTENT}",
            postgres.new_ids(len(made)), [asks[i].caller for i, _ in made], [asks[i].customer for i, _ in made],
            [asks[i].amount for i, _ in made], [asks[i].currency for i, _ in made], [c.status for _, c in made],
            [c.card_brand for _, c in made], [c.card_last4 for _, c in made], [c.decline_code for _, c in made],
            [c.id for _, c in made], [orjson.dumps(asks[i].metadata).decode() for i, _ in made], p.name, now)}
        replayed: dict[str, asyncpg.Record] = {}
        if known := [c.id for _, c in made if c.id not in rows]:
            # The provider replayed charges recorded under these keys before the keys expired here.
            replayed = {r["provider_charge_id"]: r for r in await conn.fetch(
                f"SELECT {_INTENT} FROM billing_payment_intents WHERE provider_charge_id = ANY($1::text[])", known)}
        reports: list[webhooks.Report] = []
        for i, charge in made:
            row = rows.get(charge.id)
            if row is None:
                old = replayed[charge.id]
                answers[i] = _authorized(_intent_read(old).model_dump(mode="json"), old["decline_code"])
                continue
            intent = _intent_read(row).model_dump(mode="json")
            topic = {"authorized": "payment_intent.authorized", "requires_action": "payment_intent.requires_action",
                     "declined": "payment_intent.payment_failed"}[charge.status]
            reports.append(_report(["payment_intent.created", topic], asks[i].caller, row["id"], intent))
            answers[i] = _authorized(intent, charge.decline_code)
        if reports:
            return await _published(conn, reports, answers, hooks, store)
    return [a for a in answers if a is not None]


async def _published(conn: asyncpg.Connection, reports: Sequence[webhooks.Report], answers: Sequence[Answer | None],
                     hooks: list[int], store: AnswerStore,
                     changes: Callable[[int], tuple[Sequence[str], list[Any]]] | None = None) -> list[Answer]:
    """A batch's last statement: its events and webhooks, the answers to its keys, and ``changes`` (given the number
    of their first parameter: their statements and parameters). Returns the answers."""
    final = [a for a in answers if a is not None]
    stored, args = store.statement(final, 9)
    statements, more = changes(9 + len(args)) if changes is not None else ((), [])
    hooks.append(await webhooks.publish(conn, reports, beside=(stored, *statements), args=[*args, *more]))
    return final


#: Authorisations asked for at the same moment, written together.
_AUTHORIZE: GroupCommit[str, Keyed[_Authorization], Outcome] = GroupCommit(_authorize_many)


async def on_provider_update(charge: Charge) -> None:
    """A provider's later outcome of a charge (a customer action completed or failed): moves its intent on.

    At-least-once from the provider: a notice for an intent that already moved is ignored. A notice for an
    intent not (yet) committed raises, so the provider sends it again.
    """
    hooks: list[int] = []
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            f"SELECT {_INTENT} FROM billing_payment_intents WHERE provider_charge_id = $1 FOR UPDATE", charge.id)
        if row is None:
            raise LookupError(f"no payment intent for provider charge {charge.id} yet")
        if row["status"] != "requires_action" or charge.status not in ("authorized", "declined"):
            return
        row = await conn.fetchrow(
            f"UPDATE billing_payment_intents SET status = $2, decline_code = $3, updated_at = now() WHERE id = $1 "
            f"RETURNING {_INTENT}", row["id"], charge.status, charge.decline_code)
        assert row is not None
        topic = "payment_intent.authorized" if charge.status == "authorized" else "payment_intent.payment_failed"
        await _publish(conn, hooks, [topic], row["created_by"], row["id"], _intent_read(row).model_dump(mode="json"))
    webhooks.wake(sum(hooks))


async def run_provider() -> None:
    """Background: the provider's asynchronous outcomes, applied as they come."""
    await provider().run(on_provider_update)


# -- capture, cancel, refund -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Capture:
    caller: str
    privileged: bool
    intent_id: UUID
    amount: int | None


async def capture(
    *, caller: str, privileged: bool, intent_id: UUID, amount: int | None, idempotency_key: str,
    field_name: str = "Idempotency-Key",
) -> Outcome:
    """Capture an authorized intent (all, or ``amount`` of it): 200 with the captured intent.

    The captures that a process's requests ask for at the same moment are written together
    (:func:`_capture_many`); two captures of one intent in one batch are still one capture and one 409."""
    fp = fingerprint("capture", {"payment_intent_id": str(intent_id), "amount": amount})
    ask = _Capture(caller, privileged, intent_id, amount)
    outcome = await _CAPTURE.submit("capture", Keyed(caller, idempotency_key, fp, ask, field_name))
    await postings.posted(intent_id)  # answered once the capture's ledger posting is (or is left to the retry loop)
    return outcome


async def _capture_many(_: str, requests: list[Keyed[_Capture]]) -> list[Outcome | NexusError]:
    """A batch of captures in one transaction; their ledger postings start after its commit, and the next batch
    need not wait for them (each request does, in :func:`capture`)."""
    hooks: list[int] = []
    queued: list[postings.Posting] = []
    outcomes = await KEYS.run_many(requests, lambda conn, asks, store: _capture_all(conn, asks, hooks, queued, store),
                                   lead=_locked_intents)
    postings.post_soon(queued)
    webhooks.wake(sum(hooks))
    return outcomes


def _locked_intents(asks: list[_Capture], first: int) -> tuple[str, list[Any]]:
    """The lead read of a batch of captures: their intents locked in id order, as every batch locks them."""
    return (f"SELECT {_INTENT}{{claimed}} FROM billing_payment_intents WHERE id = ANY(${first}::uuid[]) "
            f"ORDER BY id FOR UPDATE", [sorted({a.intent_id for a in asks})])


async def _capture_all(conn: asyncpg.Connection, asks: list[_Capture], hooks: list[int],
                       queued: list[postings.Posting], store: AnswerStore) -> list[Answer]:
    """Capture ``asks``: their intents locked (in the statement that claimed their keys: :func:`_locked_intents`),
    each checked on its own (as the batch's earlier captures left it), the provider asked, and the captures, their
    ledger postings, their events and the answers written in one statement for all."""
    assert store.led is not None
    locked = {r["id"]: r for r in store.led}
    answers: list[tuple[int, dict[str, Any]] | NexusError | None] = [None] * len(asks)
    takes: list[tuple[int, asyncpg.Record, int]] = []
    taken: set[UUID] = set()
    for i, a in enumerate(asks):
        try:
            row = _checked(locked.get(a.intent_id), a.intent_id, a.caller, a.privileged)
            if a.intent_id in taken:  # captured by an earlier request of this batch
                raise _unexpected({**dict(row), "status": "captured"}, "captured")
            _move(row, "captured", "captured")
            take = row["amount"] if a.amount is None else a.amount
            if take > row["amount"]:
                raise ValidationFailed.for_field("amount", f"must be at most the authorised {row['amount']}",
                                                 "less_than_equal")
        except NexusError as err:
            answers[i] = err
            continue
        taken.add(a.intent_id)
        takes.append((i, row, take))
    done = await asyncio.gather(*(
        provider().capture(charge_id=row["provider_charge_id"], amount=take,
                           idempotency_key=f"billing:capture:{row['id']}") for _, row, take in takes),
        return_exceptions=True)
    moved: list[tuple[int, UUID, int, UUID]] = []
    for (i, row, take), outcome in zip(takes, done, strict=True):
        if isinstance(outcome, NexusError):
            answers[i] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            moved.append((i, row["id"], take, uuid.uuid4()))
    if not moved:
        return [a for a in answers if a is not None]
    # Each captured intent as its row will read (it is locked: nothing else changes it), so that the capture, its
    # ledger posting, its events and the answers go in one statement.
    now = datetime.now(UTC)
    reports: list[webhooks.Report] = []
    for i, intent_id, take, posting_id in moved:
        row = {**dict(locked[intent_id]), "status": "captured", "amount_captured": take, "updated_at": now}
        queued.append(postings.Posting(id=posting_id, payment_intent_id=intent_id, kind="capture",
                                       source_id=intent_id, amount=take, currency=row["currency"]))
        intent = _intent_read(row).model_dump(mode="json")
        reports.append(_report(["payment_intent.succeeded"], row["created_by"], intent_id, intent))
        answers[i] = (200, intent)

    def captures(n: int) -> tuple[Sequence[str], list[Any]]:
        return ((
            f"UPDATE billing_payment_intents b SET status = 'captured', amount_captured = u.a, updated_at = ${n + 2} "
            f"FROM unnest(${n}::uuid[], ${n + 1}::int8[]) AS u(id, a) WHERE b.id = u.id",
            f"INSERT INTO billing_ledger_postings (id, payment_intent_id, kind, source_id, amount, currency, status) "
            f"SELECT u.p, u.id, 'capture', u.id, u.a, u.c, 'pending' "
            f"FROM unnest(${n + 3}::uuid[], ${n}::uuid[], ${n + 1}::int8[], ${n + 4}::text[]) AS u(p, id, a, c)"),
            [[m[1] for m in moved], [m[2] for m in moved], now, [m[3] for m in moved],
             [locked[m[1]]["currency"] for m in moved]])

    return await _published(conn, reports, answers, hooks, store, captures)


#: Captures asked for at the same moment, written together.
_CAPTURE: GroupCommit[str, Keyed[_Capture], Outcome] = GroupCommit(_capture_many)


async def _moved(conn: asyncpg.Connection, queued: list[postings.Posting], update: str, intent_id: UUID, amount: int,
                 kind: str, source_id: UUID) -> asyncpg.Record:
    """The intent after ``update`` (of intent $1, moving the amount $2), with the ledger posting of that amount queued
    in the same statement; the posting goes on ``queued``, to be posted after the commit."""
    posting_id = uuid.uuid4()
    row = await conn.fetchrow(
        f"WITH i AS ({update} RETURNING {_INTENT}), p AS (INSERT INTO billing_ledger_postings "
        f"(id, payment_intent_id, kind, source_id, amount, currency, status) "
        f"SELECT $3, i.id, $4, $5, $2, i.currency, 'pending' FROM i) SELECT * FROM i",
        intent_id, amount, posting_id, kind, source_id)
    assert row is not None
    queued.append(postings.Posting(id=posting_id, payment_intent_id=intent_id, kind=kind, source_id=source_id,
                                   amount=amount, currency=row["currency"]))
    return row


async def cancel(*, caller: str, privileged: bool, intent_id: UUID, idempotency_key: str | None = None,
                 field_name: str = "Idempotency-Key") -> Outcome:
    """Void an authorization (or a pending customer action): 200 with the canceled intent; again for a canceled one."""
    fp = fingerprint("cancel", {"payment_intent_id": str(intent_id)})
    hooks: list[int] = []

    async def work(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        row = await _locked(conn, intent_id, caller, privileged)
        if row["status"] == "canceled":
            return 200, _intent_read(row).model_dump(mode="json")
        _move(row, "canceled", "canceled")
        await provider().cancel(charge_id=row["provider_charge_id"])
        row = await conn.fetchrow(
            f"UPDATE billing_payment_intents SET status = 'canceled', updated_at = now() WHERE id = $1 "
            f"RETURNING {_INTENT}", intent_id)
        assert row is not None
        intent = _intent_read(row).model_dump(mode="json")
        await _publish(conn, hooks, ["payment_intent.canceled"], row["created_by"], intent_id, intent)
        return 200, intent

    outcome = await KEYS.run(scope=caller, key=idempotency_key, fingerprint=fp, work=work, field_name=field_name)
    webhooks.wake(sum(hooks))
    return outcome


async def refund(
    *, caller: str, privileged: bool, intent_id: UUID, amount: int | None, reason: str | None, idempotency_key: str,
    field_name: str = "Idempotency-Key",
) -> Outcome:
    """Refund ``amount`` (default: all not yet refunded) of a captured intent: 201 with the refund."""
    fp = fingerprint("refund", {"payment_intent_id": str(intent_id), "amount": amount, "reason": reason})
    hooks: list[int] = []
    queued: list[postings.Posting] = []

    async def work(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        row = await _locked(conn, intent_id, caller, privileged)
        if row["status"] not in ("captured", "partially_refunded"):
            raise _unexpected(row, "refunded")
        left = row["amount_captured"] - row["amount_refunded"]
        take = left if amount is None else amount
        if take > left:
            raise ValidationFailed.for_field("amount", f"must be at most the {left} captured and not yet refunded",
                                             "less_than_equal")
        refund_id = uuid.uuid4()
        done = await provider().refund(charge_id=row["provider_charge_id"], amount=take,
                                       idempotency_key=_provider_key("refund", caller, idempotency_key, fp))
        refund_row = await conn.fetchrow(
            f"INSERT INTO billing_refunds (id, payment_intent_id, amount, currency, reason, status, "
            f"provider_refund_id, created_by, created_at) VALUES ($1, $2, $3, $4, $5, 'succeeded', $6, $7, now()) "
            f"ON CONFLICT (provider_refund_id) DO NOTHING RETURNING {_REFUND}",
            refund_id, intent_id, take, row["currency"], reason, done.id, caller)
        if refund_row is None:  # the provider replayed a refund recorded under this key before it expired here
            known = await conn.fetchrow(f"SELECT {_REFUND} FROM billing_refunds WHERE provider_refund_id = $1", done.id)
            assert known is not None
            return 201, _refund_read(known, _intent_read(row)).model_dump(mode="json")
        row = await _moved(
            conn, queued, "UPDATE billing_payment_intents SET amount_refunded = amount_refunded + $2, "
            "updated_at = now(), status = CASE WHEN amount_refunded + $2 = amount_captured THEN 'refunded' "
            "ELSE 'partially_refunded' END WHERE id = $1", intent_id, take, "refund", refund_id)
        result = _refund_read(refund_row, _intent_read(row)).model_dump(mode="json")
        await _publish(conn, hooks, ["payment_intent.refunded"], row["created_by"], intent_id, result)
        return 201, result

    outcome = await KEYS.run(scope=caller, key=idempotency_key, fingerprint=fp, work=work, field_name=field_name)
    await postings.post_after_commit(queued)
    webhooks.wake(sum(hooks))
    return outcome


# -- reads -------------------------------------------------------------------------------------------------------


async def get_intent(*, intent_id: UUID, caller: str, privileged: bool) -> PaymentIntentRead:
    """An intent, for its merchant, its customer, or an administrator (404 for anyone else)."""
    pg = await postgres.pool()
    row = await pg.fetchrow(f"SELECT {_INTENT} FROM billing_payment_intents WHERE id = $1", intent_id)
    if row is None or not (privileged or caller in (row["created_by"], row["customer"])):
        raise NotFound(f"payment intent {intent_id} not found")
    return _intent_read(row)


def _after_id(page: PageRequest) -> UUID | None:
    value = page.after_value(0)
    try:
        return UUID(str(value)) if value is not None else None
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None


async def list_intents(*, caller: str, privileged: bool, customer: str | None, page: PageRequest
                       ) -> Page[PaymentIntentRead]:
    """The caller's intents (as merchant or customer); an administrator sees everyone's, or one ``customer``'s."""
    pg = await postgres.pool()
    after = _after_id(page)
    if privileged:
        rows = await pg.fetch(
            f"SELECT {_INTENT} FROM billing_payment_intents WHERE ($1::text IS NULL OR customer = $1) "
            f"AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3", customer, after, page.fetch_limit)
    else:
        rows = await pg.fetch(
            f"SELECT {_INTENT} FROM billing_payment_intents WHERE (created_by = $1 OR customer = $1) "
            f"AND ($2::text IS NULL OR customer = $2) AND ($3::uuid IS NULL OR id > $3) ORDER BY id LIMIT $4",
            caller, customer, after, page.fetch_limit)
    return page.of(rows, key=lambda r: (str(r["id"]),), item=_intent_read)


async def list_refunds(*, intent_id: UUID, caller: str, privileged: bool, page: PageRequest) -> Page[RefundRead]:
    await get_intent(intent_id=intent_id, caller=caller, privileged=privileged)
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {_REFUND} FROM billing_refunds WHERE payment_intent_id = $1 AND ($2::uuid IS NULL OR id > $2) "
        f"ORDER BY id LIMIT $3", intent_id, _after_id(page), page.fetch_limit)
    return page.of(rows, key=lambda r: (str(r["id"]),), item=_refund_read)


async def ledger_postings(*, intent_id: UUID) -> Sequence[asyncpg.Record]:
    """The ledger postings billing owes for an intent, posted or not (for operators and tests)."""
    pg = await postgres.pool()
    return await pg.fetch("SELECT id, kind, source_id, amount, currency, status, entry_id FROM billing_ledger_postings "
                          "WHERE payment_intent_id = $1 ORDER BY created_at", intent_id)
