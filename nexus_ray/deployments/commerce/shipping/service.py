"""puabo-nuki-shipping-service's logic: rate quotes, shipments and their state machine, tracking.

Rates: the destination country gives a zone (``shipping_zones``; any other country is ``world``);
the parcel pays the smallest weight band of its zone and service level that holds it.

Shipments: **one per order** (``order_id`` is unique). The order saga may ask for it
(:func:`request_shipment`) and the ``order.paid`` consumer may create it from the event; whichever
comes second gets the first one's shipment, so both paths are idempotent on the order. A request's
``idempotency_key`` (per caller) is remembered too: a retry with it returns the same shipment, and
the key reused for another order is a 409.

The state machine (:data:`NEXT`): ``label_created -> picked_up -> in_transit -> out_for_delivery ->
delivered``, forward steps may be skipped (a carrier scans what it scans); ``exception`` from any
live state and back into the flow from it; ``cancelled`` only before pickup. ``delivered`` and
``cancelled`` are final. Anything else is a 409. A report of the status a shipment is already in
is a scan: it joins the timeline and changes nothing. Each change locks the shipment's row, adds
to its append-only timeline (``shipment_events``) and emits ``shipment.status`` in its transaction.

An ``order.cancelled`` event cancels the order's shipment while it waits for pickup (later, the
parcel is on its way: that is a return, logged for now).

Logistics reports progress with ``delivery.status`` events (``shipment_id``, ``status``, ``at``);
:data:`DELIVERY_STATUS` maps their statuses to ours. An event is applied once (its id is unique
in the timeline); one that the state machine refuses (it arrives after the parcel was delivered
or cancelled) is logged and dropped, since retrying it could never succeed.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.exceptions import Conflict, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import NOTIFY, Event, EventConsumer, emit, outbox_insert
from nexus_ray.stores.together import GroupCommit

from .models import Address, PublicEvent, PublicTracking, RateQuote, RateRead, ShipmentRead, TrackingEventRead

log = logging.getLogger(__name__)

CREATED = "shipment.created"
STATUS = "shipment.status"
API = "/commerce/v1/shipping"
CONSUMER_GROUP = "puabo-nuki-shipping-service"

NEXT: dict[str, frozenset[str]] = {
    "label_created": frozenset({"picked_up", "in_transit", "out_for_delivery", "delivered", "exception",
                                "cancelled"}),
    "picked_up": frozenset({"in_transit", "out_for_delivery", "delivered", "exception"}),
    "in_transit": frozenset({"out_for_delivery", "delivered", "exception"}),
    "out_for_delivery": frozenset({"delivered", "exception"}),
    "exception": frozenset({"in_transit", "out_for_delivery", "delivered"}),
    "delivered": frozenset(),
    "cancelled": frozenset(),
}
FINAL = frozenset({"delivered", "cancelled"})

DESCRIPTIONS = {
    "label_created": "Label created; waiting for pickup",
    "picked_up": "Picked up",
    "in_transit": "In transit",
    "out_for_delivery": "Out for delivery",
    "delivered": "Delivered",
    "exception": "Delivery exception",
    "cancelled": "Shipment cancelled",
}

#: logistics' delivery statuses -> ours (None: progress we do not track as a status change).
DELIVERY_STATUS: dict[str, str | None] = {
    "created": None, "pending": None, "assigned": None,
    "picked_up": "picked_up", "in_transit": "in_transit", "en_route": "in_transit",
    "out_for_delivery": "out_for_delivery", "arriving": "out_for_delivery",
    "delivered": "delivered",
    "failed": "exception", "exception": "exception", "returned": "exception", "cancelled": "exception",
}

_TRACKING_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


def tracking_number() -> str:
    """A new tracking number: ``NX`` and 14 random characters (about 71 bits: not guessable)."""
    return "NX" + "".join(secrets.choice(_TRACKING_ALPHABET) for _ in range(14))


# -- rates ---------------------------------------------------------------------------------------------------------


def _rate(country: str, service_level: str, weight_g: str) -> str:
    """The query of a parcel's rate (SQL expressions for its country, service level and weight): the smallest band
    of the country's zone and the level that holds the weight; no row past the largest band."""
    return ("SELECT r.zone, r.max_weight_g, r.amount, r.currency, r.estimated_days FROM shipping_rates r "
            f"WHERE r.zone = coalesce((SELECT zone FROM shipping_zones WHERE country = {country}), 'world') "
            f"AND r.service_level = {service_level} AND r.max_weight_g >= {weight_g} ORDER BY r.max_weight_g LIMIT 1")


async def quote(*, weight_g: int, country: str, service_level: str = "standard",
                conn: asyncpg.Connection | asyncpg.Pool | None = None) -> RateQuote:
    """The price of a parcel of ``weight_g`` to ``country``; 422 naming ``weight_g`` past the largest band."""
    db = conn or await postgres.pool()
    row = await db.fetchrow(_rate("$1", "$2", "$3"), country, service_level, weight_g)
    if row is None:
        heaviest = await db.fetchval("SELECT max(max_weight_g) FROM shipping_rates WHERE service_level = $1",
                                     service_level)
        raise ValidationFailed.for_field("weight_g", f"must be at most {heaviest} g for {service_level}",
                                         "less_than_equal")
    return RateQuote(amount=row["amount"], currency=row["currency"].strip(), zone=row["zone"],
                     service_level=service_level,  # type: ignore[arg-type]
                     estimated_days=row["estimated_days"], weight_g=weight_g, max_weight_g=row["max_weight_g"])


async def rates() -> list[RateRead]:
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT zone, service_level, max_weight_g, amount, currency, estimated_days "
                          "FROM shipping_rates ORDER BY zone, service_level, max_weight_g")
    return [RateRead.model_validate({**dict(r), "currency": r["currency"].strip()}) for r in rows]


# -- shipments -----------------------------------------------------------------------------------------------------

_COLUMNS = ("id, order_id, status, tracking_number, owner, address, weight_g, service_level, zone, rate_amount, "
            "rate_currency, created_at, updated_at")


def _read(row: asyncpg.Record) -> ShipmentRead:
    return ShipmentRead(
        id=row["id"], order_id=row["order_id"], status=row["status"], tracking_number=row["tracking_number"],
        label_url=f"{API}/shipments/{row['id']}/label", customer=row["owner"],
        address=Address.model_validate(row["address"]), weight_g=row["weight_g"], service_level=row["service_level"],
        zone=row["zone"], rate_amount=row["rate_amount"], rate_currency=row["rate_currency"].strip(),
        created_at=row["created_at"], updated_at=row["updated_at"])


async def _remember_key(conn: asyncpg.Connection, caller: str, key: str | None, shipment: ShipmentRead) -> None:
    """Record ``key`` for ``shipment``; 409 when the caller used it for another order's shipment."""
    if key is None:
        return
    found = await conn.fetchval(
        "WITH ins AS (INSERT INTO shipment_requests (caller, idempotency_key, shipment_id) VALUES ($1, $2, $3) "
        "ON CONFLICT DO NOTHING RETURNING shipment_id) "
        "SELECT coalesce((SELECT shipment_id FROM ins), "
        "(SELECT shipment_id FROM shipment_requests WHERE caller = $1 AND idempotency_key = $2))",
        caller, key, shipment.id)
    if found != shipment.id:
        raise _key_reused()


def _key_reused() -> Conflict:
    return Conflict("idempotency_key was already used for another order's shipment", extra={
        "errors": [{"field": "idempotency_key", "message": "was used with another request",
                    "type": "idempotency_key_reused"}], "code": "idempotency_key_reused"})


async def _keyed_shipment(conn: asyncpg.Connection, caller: str, key: str | None, order_id: str
                          ) -> ShipmentRead | None:
    """The shipment the caller's ``key`` was used for, if any; 409 when that was another order's."""
    if key is None:
        return None
    known = await conn.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE id = (SELECT shipment_id FROM "
                                f"shipment_requests WHERE caller = $1 AND idempotency_key = $2)", caller, key)
    if known is None:
        return None
    if known["order_id"] != order_id:
        raise _key_reused()
    return _read(known)


def _created(shipment_id: UUID, order_id: str, customer: str | None, address: dict[str, Any], weight_g: int,
             service_level: str, tracking: str) -> dict[str, Any]:
    """``shipment.created``'s payload, but for the zone: the statement that creates the shipment adds its rate's."""
    return {"shipment_id": str(shipment_id), "order_id": order_id, "customer": customer, "address": address,
            "weight_g": weight_g, "service_level": service_level, "tracking_number": tracking,
            "status": "label_created"}


async def create_shipment(
    conn: asyncpg.Connection, *, caller: str, order_id: str, address: Address, weight_g: int, service_level: str,
    customer: str | None, idempotency_key: str | None,
) -> tuple[ShipmentRead, bool]:
    """The order's shipment, created now (label, first tracking event, ``shipment.created``) unless it exists:
    (shipment, whether it existed).

    The shipment is created by one statement (:data:`_CREATE`): its rate, the caller's key, the row, its first
    tracking event and its event, all or nothing. Without a key (the ``order.paid`` consumer) it runs in the
    caller's transaction; with one, ``conn`` must not be in a transaction: each statement commits by itself, and the
    statement that creates stands alone. A retry is not looked up first: its key is found taken by the statement,
    which then creates nothing, and it is answered with the key's shipment (a 409 if that is another order's).
    A new key for an order that has its shipment fails the statement on the key's reference to a shipment it did
    not create; the order's shipment is then read and the key recorded for it.
    """
    if idempotency_key is not None and conn.is_in_transaction():
        raise RuntimeError("create_shipment() with a key runs outside a transaction")
    shipment_id, number, now = uuid.uuid4(), tracking_number(), datetime.now(UTC)
    where = address.model_dump(exclude_none=True)
    created = _created(shipment_id, order_id, customer, where, weight_g, service_level, number)
    try:
        row = await conn.fetchrow(
            _CREATE, shipment_id, order_id, customer, where, address.country, weight_g, service_level, number,
            caller, now, idempotency_key, DESCRIPTIONS["label_created"], postgres.new_ids(1)[0], CREATED, created, {})
    except asyncpg.ForeignKeyViolationError:  # a new key, and the order has its shipment already
        row = None
    else:
        assert row is not None
        if row["id"] is not None:
            return _read(row), False
        if not row["rated"]:  # past the largest band: a retry is still answered, else the quote's 422
            if (known := await _keyed_shipment(conn, caller, idempotency_key, order_id)) is not None:
                return known, True
            await quote(weight_g=weight_g, country=address.country, service_level=service_level, conn=conn)
            return await create_shipment(  # the rates changed in between: a rate is found now
                conn, caller=caller, order_id=order_id, address=address, weight_g=weight_g,
                service_level=service_level, customer=customer, idempotency_key=idempotency_key)
        if idempotency_key is not None and not row["keyed"]:  # the key was used: a retry, or another order's
            known = await _keyed_shipment(conn, caller, idempotency_key, order_id)
            assert known is not None
            return known, True
    # The order has its shipment already (ON CONFLICT waited for a concurrent insert of it): it, with the key.
    found = await conn.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE order_id = $1", order_id)
    assert found is not None
    shipment = _read(found)
    await _remember_key(conn, caller, idempotency_key, shipment)
    return shipment, True


#: ``shipment.created``'s payload ($15) with the zone of the rate the statement found.
_WITH_ZONE = "($15::jsonb || jsonb_build_object('zone', s.zone))"

#: A new shipment in one statement: the parcel's rate, the caller's key ($11, when given), the row (once per order),
#: its first tracking event and its ``shipment.created`` event, with the rate's zone added. Nothing is written
#: without a rate, nor when the key is taken; when the order has its shipment already, the row is not written and a
#: key written for it fails the statement on its reference. One row comes back: the shipment's columns (null when
#: none was written), ``rated`` and ``keyed``.
_CREATE = (
    f"WITH r AS ({_rate('$5::char(2)', '$7::text', '$6::int')}), "
    f"k AS (INSERT INTO shipment_requests (caller, idempotency_key, shipment_id) SELECT $9, $11::text, $1 FROM r "
    f"WHERE $11::text IS NOT NULL ON CONFLICT DO NOTHING RETURNING shipment_id), "
    f"s AS (INSERT INTO shipments (id, order_id, owner, address, country, zone, weight_g, service_level, "
    f"rate_amount, rate_currency, tracking_number, status, created_by, created_at, updated_at) "
    f"SELECT $1, $2, $3, $4, $5, r.zone, $6, $7, r.amount, r.currency, $8, 'label_created', $9, $10, $10 FROM r "
    f"WHERE $11::text IS NULL OR EXISTS (SELECT FROM k) ON CONFLICT (order_id) DO NOTHING RETURNING {_COLUMNS}), "
    f"t AS (INSERT INTO shipment_events (shipment_id, status, description, source, occurred_at) "
    f"SELECT s.id, 'label_created', $12, 'shipping', $10 FROM s), "
    f"e AS ({outbox_insert('$13', '$14', '$2', _WITH_ZONE, '$16', source='FROM s')}) "
    f"SELECT s.*, EXISTS (SELECT FROM r) AS rated, EXISTS (SELECT FROM k) AS keyed, "
    f"CASE WHEN s.id IS NOT NULL THEN {NOTIFY} END FROM (SELECT) AS one LEFT JOIN s ON true")


_CREATED_MANY = outbox_insert("u.event_id", "$15", "u.order_id", _WITH_ZONE.replace("$15", "u.payload"), "$16",
                              source="FROM s JOIN u ON u.id = s.id")

#: Many new shipments in one statement, as :data:`_CREATE` makes one: each parcel's rate, the caller's key, the row
#: (once per order), its first tracking event and its ``shipment.created`` event. Keys go in caller and key order and
#: rows in order id order, so two batches cannot deadlock on them. A request whose key is taken, or with no rate,
#: writes nothing and gets no row. A key written for an order that has its shipment already fails the whole
#: statement on its reference: the batch is then made one request at a time.
_CREATE_MANY = (
    "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[], $6::int4[], "
    "$7::text[], $8::text[], $9::text[], $10::text[], $11::uuid[], $12::jsonb[]) AS u(id, order_id, owner, address, "
    "country, weight_g, service_level, tracking, caller, key, event_id, payload)), "
    f"q AS (SELECT u.id, rate.* FROM u CROSS JOIN LATERAL "
    f"({_rate('u.country::char(2)', 'u.service_level', 'u.weight_g')}) AS rate), "
    "k AS (INSERT INTO shipment_requests (caller, idempotency_key, shipment_id) SELECT u.caller, u.key, u.id FROM u "
    "JOIN q ON q.id = u.id ORDER BY u.caller, u.key ON CONFLICT DO NOTHING RETURNING shipment_id), "
    "s AS (INSERT INTO shipments (id, order_id, owner, address, country, zone, weight_g, service_level, rate_amount, "
    "rate_currency, tracking_number, status, created_by, created_at, updated_at) SELECT u.id, u.order_id, u.owner, "
    "u.address, u.country, q.zone, u.weight_g, u.service_level, q.amount, q.currency, u.tracking, 'label_created', "
    "u.caller, $13, $13 FROM u JOIN q ON q.id = u.id JOIN k ON k.shipment_id = u.id ORDER BY u.order_id "
    f"ON CONFLICT (order_id) DO NOTHING RETURNING {_COLUMNS}), "
    "t AS (INSERT INTO shipment_events (shipment_id, status, description, source, occurred_at) "
    "SELECT s.id, 'label_created', $14, 'shipping', $13 FROM s), "
    f"e AS ({_CREATED_MANY}) "
    f"SELECT s.*, {NOTIFY} FROM s")


@dataclass(frozen=True)
class _Request:
    caller: str
    order_id: str
    address: Address
    weight_g: int
    service_level: str
    customer: str | None
    key: str


async def request_shipment(
    *, caller: str, order_id: str, address: Address, weight_g: int, service_level: str, customer: str | None,
    idempotency_key: str | None,
) -> tuple[ShipmentRead, bool]:
    """Create the order's shipment (or return the one it has): (shipment, whether it existed).

    The requests of a moment are made together (:data:`_CREATE_MANY`); one that the batch does not make (a retry,
    a key used for another order, a parcel no rate holds, an order that has its shipment) is answered as it
    would be alone (:func:`create_shipment`)."""
    if idempotency_key is None:
        raise ValidationFailed.for_field("idempotency_key", "is required (field or Idempotency-Key header)",
                                         "missing")
    return await _REQUESTS.submit(None, _Request(caller, order_id, address, weight_g, service_level, customer,
                                                 idempotency_key))


async def _request_many(_: None, asks: list[_Request]) -> list[tuple[ShipmentRead, bool] | BaseException]:
    pg = await postgres.pool()
    ids = [uuid.uuid4() for _ in asks]
    wheres = [a.address.model_dump(exclude_none=True) for a in asks]
    numbers = [tracking_number() for _ in asks]
    try:
        rows = {r["id"]: r for r in await pg.fetch(
            _CREATE_MANY, ids, [a.order_id for a in asks], [a.customer for a in asks], wheres,
            [a.address.country for a in asks], [a.weight_g for a in asks], [a.service_level for a in asks], numbers,
            [a.caller for a in asks], [a.key for a in asks], postgres.new_ids(len(asks)),
            [_created(i, a.order_id, a.customer, w, a.weight_g, a.service_level, n)
             for i, a, w, n in zip(ids, asks, wheres, numbers, strict=True)],
            datetime.now(UTC), DESCRIPTIONS["label_created"], CREATED, {})}
    except asyncpg.ForeignKeyViolationError:  # a new key for an order that has its shipment: one at a time
        rows = {}
    out: list[tuple[ShipmentRead, bool] | BaseException] = []
    for i, a in zip(ids, asks, strict=True):
        if i in rows:
            out.append((_read(rows[i]), False))
            continue
        try:
            async with pg.acquire() as conn:  # no transaction: see create_shipment
                out.append(await create_shipment(
                    conn, caller=a.caller, order_id=a.order_id, address=a.address, weight_g=a.weight_g,
                    service_level=a.service_level, customer=a.customer, idempotency_key=a.key))
        except NexusError as err:
            out.append(err)
    return out


#: Shipment requests of a moment, made together.
_REQUESTS: GroupCommit[None, _Request, tuple[ShipmentRead, bool]] = GroupCommit(_request_many)


def _visible(row: asyncpg.Record | None, caller: str, privileged: bool, shipment_id: UUID) -> asyncpg.Record:
    if row is None or not (privileged or (row["owner"] is not None and row["owner"] == caller)):
        raise NotFound(f"shipment {shipment_id} not found")
    return row


async def get_shipment(*, shipment_id: UUID, caller: str, privileged: bool) -> ShipmentRead:
    """A shipment, for its customer or an administrator; 404 for anyone else."""
    pg = await postgres.pool()
    row = await pg.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE id = $1", shipment_id)
    return _read(_visible(row, caller, privileged, shipment_id))


async def list_shipments(*, owner: str, page: PageRequest) -> Page[ShipmentRead]:
    pg = await postgres.pool()
    value = page.after_value(0)
    try:
        after = UUID(str(value)) if value is not None else None
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    rows = await pg.fetch(f"SELECT {_COLUMNS} FROM shipments WHERE owner = $1 AND ($2::uuid IS NULL OR id > $2) "
                          f"ORDER BY id LIMIT $3", owner, after, page.fetch_limit)
    return page.of(rows, key=lambda r: (str(r["id"]),), item=_read)


def _event_read(r: asyncpg.Record) -> TrackingEventRead:
    return TrackingEventRead(status=r["status"], description=r["description"], location=r["location"],
                             source=r["source"], occurred_at=r["occurred_at"])


_EVENTS = ("SELECT status, description, location, source, occurred_at FROM shipment_events WHERE shipment_id = $1 "
           "ORDER BY occurred_at, id")


async def tracking_events(*, shipment_id: UUID, caller: str, privileged: bool) -> list[TrackingEventRead]:
    """A shipment's timeline, oldest first."""
    pg = await postgres.pool()
    _visible(await pg.fetchrow("SELECT owner FROM shipments WHERE id = $1", shipment_id), caller, privileged,
             shipment_id)
    return [_event_read(r) for r in await pg.fetch(_EVENTS, shipment_id)]


async def public_tracking(*, number: str) -> PublicTracking:
    """The progress of the parcel with tracking number ``number``: statuses and times, no names or addresses."""
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT id, status, service_level, country FROM shipments WHERE tracking_number = $1",
                            number)
    if row is None:
        raise NotFound("no parcel with this tracking number")
    events = await pg.fetch(_EVENTS, row["id"])
    return PublicTracking(tracking_number=number, status=row["status"], service_level=row["service_level"],
                          destination_country=row["country"].strip(),
                          events=[PublicEvent(status=e["status"], description=e["description"],
                                              occurred_at=e["occurred_at"]) for e in events])


async def change_status(
    conn: asyncpg.Connection, *, shipment_id: UUID, status: str, source: str, description: str | None = None,
    location: str | None = None, occurred_at: datetime | None = None, source_event_id: UUID | None = None,
) -> ShipmentRead:
    """Move a shipment to ``status`` (409 if the state machine forbids it) or record a scan of its status.

    In the caller's transaction: the row lock orders concurrent changes of one shipment.
    """
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE id = $1 FOR UPDATE", shipment_id)
    if row is None:
        raise NotFound(f"shipment {shipment_id} not found")
    current = row["status"]
    if current in FINAL or (status != current and status not in NEXT[current]):
        raise Conflict(f"shipment {shipment_id} is {current}: it cannot become {status}",
                       extra={"code": "invalid_transition", "status": current, "requested": status})
    at = occurred_at or datetime.now(UTC)
    await conn.execute(
        "INSERT INTO shipment_events (shipment_id, status, description, location, source, source_event_id, "
        "occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        shipment_id, status, description or DESCRIPTIONS[status], location, source, source_event_id, at)
    if status == current:
        return _read(row)
    row = await conn.fetchrow(f"UPDATE shipments SET status = $2, updated_at = now() WHERE id = $1 "
                              f"RETURNING {_COLUMNS}", shipment_id, status)
    assert row is not None
    await emit(conn, STATUS, {"shipment_id": str(shipment_id), "order_id": row["order_id"], "status": status,
                              "previous": current, "tracking_number": row["tracking_number"],
                              "at": at.isoformat()}, key=row["order_id"])
    return _read(row)


async def report_status(*, shipment_id: UUID, status: str, description: str | None, location: str | None,
                        occurred_at: datetime | None, source: str) -> ShipmentRead:
    async with postgres.transaction() as conn:
        return await change_status(conn, shipment_id=shipment_id, status=status, source=source,
                                   description=description, location=location, occurred_at=occurred_at)


async def cancel_shipment(*, shipment_id: UUID) -> ShipmentRead:
    """Cancel a shipment before pickup (cancelling a cancelled one returns it); 409 once it was picked up."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM shipments WHERE id = $1 FOR UPDATE", shipment_id)
        if row is not None and row["status"] == "cancelled":
            return _read(row)
        return await change_status(conn, shipment_id=shipment_id, status="cancelled", source="shipping")


# -- events of other services ---------------------------------------------------------------------------------------


async def _on_order_paid(conn: asyncpg.Connection, event: Event) -> None:
    """An order that asked for shipping (``shipping``: address, weight_g, service_level) gets its shipment."""
    shipping = event.data.get("shipping")
    if not shipping:
        return
    order_id = str(event.data["order_id"])
    customer = event.data.get("customer")
    shipment, existed = await create_shipment(
        conn, caller="order.paid", order_id=order_id, address=Address.model_validate(shipping["address"]),
        weight_g=int(shipping["weight_g"]), service_level=str(shipping.get("service_level", "standard")),
        customer=customer if isinstance(customer, str) else None, idempotency_key=None)
    log.debug("order %s paid: shipment %s %s", order_id, shipment.id, "existed" if existed else "created")


async def _on_order_cancelled(conn: asyncpg.Connection, event: Event) -> None:
    """A cancelled order's shipment is cancelled too while it waits for pickup; after that it is logged only."""
    order_id = str(event.data.get("order_id"))
    shipment_id = await conn.fetchval("SELECT id FROM shipments WHERE order_id = $1", order_id)
    if shipment_id is None:
        return
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the consumer's transaction usable
            await change_status(conn, shipment_id=shipment_id, status="cancelled", source="order.cancelled")
    except Conflict as exc:
        log.warning("order %s cancelled but its shipment %s cannot be: %s", order_id, shipment_id, exc.detail)


async def _on_delivery_status(conn: asyncpg.Connection, event: Event) -> None:
    """Logistics' progress of the delivery of one of our shipments, onto its timeline and status."""
    raw = str(event.data.get("status", ""))
    status = DELIVERY_STATUS.get(raw)
    try:
        shipment_id = UUID(str(event.data.get("shipment_id")))
    except ValueError:
        log.warning("delivery.status event %s names no shipment: dropped", event.id)
        return
    if status is None:
        if raw not in DELIVERY_STATUS:
            log.warning("delivery.status event %s has an unknown status %r: dropped", event.id, raw)
        return
    at = event.data.get("at")
    occurred_at = datetime.fromisoformat(at) if isinstance(at, str) else event.occurred_at
    if occurred_at.tzinfo is None:
        occurred_at = occurred_at.replace(tzinfo=UTC)
    try:
        async with conn.transaction():  # a savepoint: a refused change leaves the consumer's transaction usable
            await change_status(conn, shipment_id=shipment_id, status=status, source="logistics",
                                occurred_at=occurred_at, source_event_id=event.id)
    except (Conflict, NotFound) as exc:
        log.warning("delivery.status event %s for shipment %s not applied: %s", event.id, shipment_id, exc.detail)


HANDLERS = {"order.paid": _on_order_paid, "order.cancelled": _on_order_cancelled,
            "delivery.status": _on_delivery_status}


async def _handle(conn: asyncpg.Connection, event: Event) -> None:
    await HANDLERS[event.topic](conn, event)


def _wanted(event: Event) -> bool:
    """Passed over, with no transaction or record: an ``order.paid`` that asks for no shipping (the checkout saga's:
    it requests the shipment itself), and a ``delivery.status`` whose status means nothing for a shipment (a
    delivery created or assigned: one of each for every order shipped)."""
    if event.topic == "order.paid":
        return bool(event.data.get("shipping"))
    if event.topic == "delivery.status":
        raw = str(event.data.get("status", ""))
        return raw not in DELIVERY_STATUS or DELIVERY_STATUS[raw] is not None
    return True


async def consume_events() -> None:
    """Background: consume ``order.paid``, ``order.cancelled`` and ``delivery.status`` (at least once, applied
    once)."""
    await EventConsumer(CONSUMER_GROUP, list(HANDLERS), _handle, wants=_wanted, session_timeout_ms=6000,
                        heartbeat_interval_ms=500).run_until_stopped()

