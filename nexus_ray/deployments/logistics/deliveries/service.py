"""puabo-nexus (deliveries)' logic: the delivery lifecycle, timeline, proof of delivery, dispatch and shipping.

State machine
-------------
::

    created ──> assigned ──> picked_up ──> delivered
       │            │             │
       └────────────┴─────────────┴──────> failed

Any other move is a 409 naming the status and the moves allowed from it. Each move is one
transaction: the row (locked), a timeline entry and a ``delivery.status`` event (outbox),
so shipping never misses a status and never sees one that did not commit. ``delivered``
needs a proof of delivery first.

Where deliveries come from
--------------------------
Shipping's ``shipment.created`` events (one delivery per shipment: ``shipment_id`` is
UNIQUE, so a redelivered event makes none) and the POST route (idempotent on the
caller's key). Shipments are picked up at the depot (settings); a delivery whose pickup or
drop-off has no coordinates cannot be costed by dispatch and waits for an operator
(``dispatch_state = manual``).

Dispatch
--------
Every delivery with coordinates is submitted to ai-dispatch's ``submit_job`` (job id =
delivery id, idempotent there) by :func:`submit_forever`, which also retries failed
submissions; without ai-dispatch in this code base deliveries stay ``created`` (``pending``)
and an operator assigns them (``POST .../assign``). ai-dispatch's ``dispatch.assigned``
event (a driver accepted the offer) moves the delivery to ``assigned``.

A delivery that ends (delivered or failed) tells driver-app-backend (``job_finished``) so
the driver is free again and their earning (the delivery's ``driver_fee``; nothing for a
failed one) is recorded.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.calls import call, exported
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.deployments.logistics.drivers import service as drivers
from nexus_ray.exceptions import Conflict, Forbidden, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import NOTIFY, Event, EventConsumer, emit, json_text, outbox_insert

from .models import DeliveryRead, ProofRead, TimelineEntry
from .settings import DeliverySettings

log = logging.getLogger(__name__)

SERVICE = "puabo-nexus"
DISPATCH = "puabo-nexus-ai-dispatch"
STATUS_TOPIC = "delivery.status"
SHIPMENT_CREATED = "shipment.created"
DISPATCH_ASSIGNED = "dispatch.assigned"

MOVES: dict[str, tuple[str, ...]] = {
    "created": ("assigned", "failed"),
    "assigned": ("picked_up", "failed"),
    "picked_up": ("delivered", "failed"),
    "delivered": (),
    "failed": (),
}

# Proof formats: content type -> the bytes every such file starts with.
PROOF_TYPES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/webp": (b"RIFF",),
}


def _read(row: asyncpg.Record) -> DeliveryRead:
    return DeliveryRead.model_validate({**dict(row), "currency": row["currency"].strip()})


# -- who sees what -------------------------------------------------------------------------------------


async def _driver_id_of(caller: str) -> UUID | None:
    try:
        return (await drivers.driver_of_user(user_id=caller)).id
    except NotFound:
        return None


def _visible_to(row: asyncpg.Record, caller: str, driver_id: UUID | None, privileged: bool) -> bool:
    return privileged or row["owner"] == caller or (driver_id is not None and row["driver_id"] == driver_id)


async def _load(conn: asyncpg.Connection | asyncpg.Pool, delivery_id: UUID, caller: str, privileged: bool,
                *, lock: bool = False) -> tuple[asyncpg.Record, UUID | None]:
    row = await conn.fetchrow("SELECT * FROM deliveries WHERE id = $1" + (" FOR UPDATE" if lock else ""),
                              delivery_id)
    driver_id = None if privileged else await _driver_id_of(caller)
    # Another's delivery is reported missing: its existence is not the caller's business.
    if row is None or not _visible_to(row, caller, driver_id, privileged):
        raise NotFound(f"delivery {delivery_id} not found")
    return row, driver_id


# -- creating ------------------------------------------------------------------------------------------


#: Deliveries, each with its first timeline entry and its ``delivery.status`` event, in one statement: the entry and
#: the event only for a delivery that was written (its shipment or key may have made one already). The owner, vehicle
#: types, fee, currency and time are the statement's, shared by its deliveries; the rest are arrays, one a delivery.
_INSERT = (
    "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], "
    "$7::jsonb[], $8::float8[], $9::text[], $10::uuid[], $11::text[]) AS u(id, shipment_id, order_id, "
    "idempotency_key, customer, pickup, dropoff, weight_kg, dispatch_state, event_id, payload)), "
    "d AS (INSERT INTO deliveries (id, shipment_id, order_id, owner, idempotency_key, status, pickup, dropoff, "
    "weight_kg, vehicle_types, driver_fee, currency, dispatch_state, created_at, updated_at, customer) "
    "SELECT id, shipment_id, order_id, $12, idempotency_key, 'created', pickup, dropoff, weight_kg, $13::text[], "
    "$14, $15, dispatch_state, $16, $16, customer FROM u ORDER BY shipment_id, idempotency_key "
    "ON CONFLICT DO NOTHING RETURNING *), "
    "t AS (INSERT INTO delivery_events (delivery_id, status, at, actor) SELECT id, 'created', $16, $12 FROM d), "
    f"e AS ({outbox_insert('u.event_id', '$17', 'u.id', 'u.payload', '$18', source='FROM u JOIN d USING (id)')}) "
    f"SELECT d.*, {NOTIFY} AS notified FROM d"
)


@dataclass(frozen=True)
class _New:
    """One delivery to write with :func:`_insert`: what is its own (the rest is its statement's)."""
    pickup: dict[str, Any]
    dropoff: dict[str, Any]
    weight_kg: float
    order_id: str | None
    shipment_id: str | None
    idempotency_key: str | None
    customer: str | None


async def _insert(conn: asyncpg.Connection, news: Sequence[_New], *, owner: str, vehicle_types: list[str] | None,
                  driver_fee: int, currency: str) -> dict[int, asyncpg.Record]:
    """Insert deliveries owned by ``owner``, each with its first timeline entry and event, in one round trip: the row
    of each one written, by its place in ``news`` (one whose shipment or key made one already is left out)."""
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in news]
    routable = [all(p.get("lat") is not None and p.get("lon") is not None for p in (n.pickup, n.dropoff))
                for n in news]
    rows = await conn.fetch(
        _INSERT, ids, [n.shipment_id for n in news], [n.order_id for n in news], [n.idempotency_key for n in news],
        [n.customer for n in news], [n.pickup for n in news], [n.dropoff for n in news],
        [n.weight_kg for n in news], ["pending" if r else "manual" for r in routable], postgres.new_ids(len(news)),
        [json_text(_status_event(i, n.shipment_id, n.order_id, n.customer, "created", now, None))
         for i, n in zip(ids, news, strict=True)],
        owner, vehicle_types, driver_fee, currency, now, STATUS_TOPIC, {})
    place = {i: k for k, i in enumerate(ids)}
    return {place[r["id"]]: r for r in rows}


async def _record(conn: asyncpg.Connection, row: asyncpg.Record, status: str, *, actor: str, note: str | None,
                  lat: float | None, lon: float | None, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO delivery_events (delivery_id, status, at, actor, note, lat, lon) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)", row["id"], status, at, actor, note, lat, lon)
    event = _status_event(row["id"], row["shipment_id"], row["order_id"], row["customer"], status, at,
                          row["driver_id"])
    await emit(conn, STATUS_TOPIC, event, key=str(row["id"]))


def _status_event(delivery_id: UUID, shipment_id: str | None, order_id: str | None, customer: str | None,
                  status: str, at: datetime, driver_id: UUID | None) -> dict[str, Any]:
    """The payload of a ``delivery.status`` event: the notification service tells its ``customer``."""
    return {"delivery_id": str(delivery_id), "shipment_id": shipment_id, "order_id": order_id, "customer": customer,
            "status": status, "at": at.isoformat(), "driver_id": str(driver_id) if driver_id else None}


async def create_delivery(
    *, caller: str, pickup: dict[str, Any], dropoff: dict[str, Any], weight_kg: float,
    vehicle_types: list[str] | None, driver_fee: int, currency: str, order_id: str | None,
    idempotency_key: str | None,
) -> tuple[DeliveryRead, bool]:
    """Create a delivery owned by ``caller``; (delivery, replayed) -- the same key returns the first one."""
    async with postgres.transaction() as conn:
        new = _New(pickup=pickup, dropoff=dropoff, weight_kg=weight_kg, order_id=order_id, shipment_id=None,
                   idempotency_key=idempotency_key, customer=caller)
        row = (await _insert(conn, [new], owner=caller, vehicle_types=vehicle_types, driver_fee=driver_fee,
                             currency=currency)).get(0)
        replayed = row is None
        if row is None:
            row = await conn.fetchrow("SELECT * FROM deliveries WHERE owner = $1 AND idempotency_key = $2",
                                      caller, idempotency_key)
            if row is None:
                raise Conflict("the delivery could not be created; retry")
    delivery = _read(row)
    if not replayed:
        await _submit_quietly(delivery.id)
    return delivery, replayed


async def create_from_shipments(conn: asyncpg.Connection, shipments: Sequence[dict[str, Any]]) -> int:
    """A delivery for each ``shipment.created`` payload, in the consumer's transaction and one statement; how many
    were new (a shipment that has one already makes none)."""
    s = settings_of(DeliverySettings)
    pickup = {"lat": s.deliveries_depot_lat, "lon": s.deliveries_depot_lon, "address": "depot"}
    news = []
    for data in shipments:
        address = data.get("address") or {}
        dropoff = {"lat": address.get("lat"), "lon": address.get("lon"), "address": address} \
            if isinstance(address, dict) else {"address": address}
        news.append(_New(pickup=pickup, dropoff=dropoff, weight_kg=float(data.get("weight_g") or 0) / 1000,
                         order_id=str(data["order_id"]) if data.get("order_id") else None,
                         shipment_id=str(data["shipment_id"]), idempotency_key=None,
                         customer=str(data["customer"]) if data.get("customer") else None))
    return len(await _insert(conn, news, owner=SERVICE, vehicle_types=None, driver_fee=s.deliveries_default_fee,
                             currency=s.deliveries_currency))


# -- reading -------------------------------------------------------------------------------------------


async def get_delivery(*, delivery_id: UUID, caller: str, privileged: bool) -> DeliveryRead:
    row, _ = await _load(await postgres.pool(), delivery_id, caller, privileged)
    return _read(row)


async def list_deliveries(*, caller: str, privileged: bool, status: str | None, all_: bool, page: PageRequest
                          ) -> Page[DeliveryRead]:
    """The caller's deliveries (owned, or assigned to them as a driver), newest first; all of them for an admin."""
    after = page.after_value(0)
    cursor = after if isinstance(after, str) else None
    everyone = all_ and privileged
    driver_id = None if everyone else await _driver_id_of(caller)
    rows = await (await postgres.pool()).fetch(
        "SELECT * FROM deliveries WHERE ($1 OR owner = $2 OR driver_id = $3) "
        "AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR "
        "(created_at, id::text) < ((split_part($5, '|', 1))::timestamptz, split_part($5, '|', 2))) "
        "ORDER BY created_at DESC, id::text DESC LIMIT $6",
        everyone, caller, driver_id, status, cursor, page.fetch_limit)
    return page.of(rows, key=lambda r: (f"{r['created_at'].isoformat()}|{r['id']}",), item=_read)


async def timeline(*, delivery_id: UUID, caller: str, privileged: bool) -> list[TimelineEntry]:
    pg = await postgres.pool()
    await _load(pg, delivery_id, caller, privileged)
    rows = await pg.fetch("SELECT status, at, actor, note, lat, lon FROM delivery_events WHERE delivery_id = $1 "
                          "ORDER BY id", delivery_id)
    return [TimelineEntry.model_validate(dict(r)) for r in rows]


# -- moving --------------------------------------------------------------------------------------------


def _refuse_move(row: asyncpg.Record, to: str) -> None:
    allowed = MOVES[row["status"]]
    if to not in allowed:
        raise Conflict(f"a {row['status']} delivery cannot become {to}",
                       extra={"status": row["status"], "allowed": list(allowed)})


async def _move(conn: asyncpg.Connection, row: asyncpg.Record, to: str, *, actor: str, note: str | None = None,
                lat: float | None = None, lon: float | None = None, driver_id: UUID | None = None,
                offer_id: str | None = None) -> asyncpg.Record:
    _refuse_move(row, to)
    now = datetime.now(UTC)
    moved = await conn.fetchrow(
        "UPDATE deliveries SET status = $2, updated_at = $3, driver_id = coalesce($4, driver_id), "
        "offer_id = coalesce($5, offer_id) WHERE id = $1 RETURNING *", row["id"], to, now, driver_id, offer_id)
    assert moved is not None
    await _record(conn, moved, to, actor=actor, note=note, lat=lat, lon=lon, at=now)
    return moved


async def assign(*, delivery_id: UUID, driver_id: UUID, caller: str, note: str | None) -> DeliveryRead:
    """An operator assigns a created delivery to a driver (when dispatch is absent or was overruled)."""
    await drivers.get_driver(driver_id=driver_id, caller=caller, privileged=True)  # 404 for an unknown driver
    async with postgres.transaction() as conn:
        row, _ = await _load(conn, delivery_id, caller, True, lock=True)
        moved = await _move(conn, row, "assigned", actor=caller, note=note, driver_id=driver_id)
    return _read(moved)


def _refuse_unless_driver(row: asyncpg.Record, driver_id: UUID | None, privileged: bool) -> None:
    """Only the assigned driver (or an administrator) moves a delivery; its owner sees it but may not."""
    if not privileged and (driver_id is None or row["driver_id"] != driver_id):
        raise Forbidden("only the delivery's driver or an administrator may do this")


async def _driver_move(*, delivery_id: UUID, to: str, caller: str, privileged: bool, note: str | None,
                       lat: float | None, lon: float | None) -> DeliveryRead:
    async with postgres.transaction() as conn:
        row, driver_id = await _load(conn, delivery_id, caller, privileged, lock=True)
        _refuse_unless_driver(row, driver_id, privileged)
        if to == "delivered" and await conn.fetchval(
                "SELECT 1 FROM delivery_proofs WHERE delivery_id = $1", delivery_id) is None:
            _refuse_move(row, to)
            raise Conflict("upload the proof of delivery first", extra={"status": row["status"]})
        moved = await _move(conn, row, to, actor=caller, note=note, lat=lat, lon=lon)
    delivery = _read(moved)
    if to in ("delivered", "failed") and delivery.driver_id is not None:
        await _finish_job(delivery)
    return delivery


async def _finish_job(delivery: DeliveryRead) -> None:
    """Free the driver and record their earning; retried by nothing else, so failures are logged loudly."""
    assert delivery.driver_id is not None
    try:
        await drivers.job_finished(driver_id=delivery.driver_id, job_id=str(delivery.id),
                                   amount=delivery.driver_fee if delivery.status == "delivered" else 0,
                                   currency=delivery.currency)
    except NexusError as err:
        log.error("delivery %s ended but its driver's job was not closed: %s", delivery.id, err.title)


async def pick_up(*, delivery_id: UUID, caller: str, privileged: bool, note: str | None, lat: float | None,
                  lon: float | None) -> DeliveryRead:
    return await _driver_move(delivery_id=delivery_id, to="picked_up", caller=caller, privileged=privileged,
                              note=note, lat=lat, lon=lon)


async def deliver(*, delivery_id: UUID, caller: str, privileged: bool, note: str | None, lat: float | None,
                  lon: float | None) -> DeliveryRead:
    return await _driver_move(delivery_id=delivery_id, to="delivered", caller=caller, privileged=privileged,
                              note=note, lat=lat, lon=lon)


async def fail(*, delivery_id: UUID, caller: str, privileged: bool, note: str | None, lat: float | None,
               lon: float | None) -> DeliveryRead:
    return await _driver_move(delivery_id=delivery_id, to="failed", caller=caller, privileged=privileged,
                              note=note, lat=lat, lon=lon)


# -- proof of delivery ---------------------------------------------------------------------------------


def _proof(row: asyncpg.Record) -> ProofRead:
    return ProofRead.model_validate(dict(row))


async def put_proof(*, delivery_id: UUID, caller: str, privileged: bool, kind: str, content_type: str, data: bytes,
                    sha256: str | None) -> ProofRead:
    """Store the proof (its bytes and their SHA-256) of a picked-up delivery; replace it until delivered."""
    # Who first: a stranger learns nothing about the delivery from how their upload is judged.
    row, driver_id = await _load(await postgres.pool(), delivery_id, caller, privileged)
    _refuse_unless_driver(row, driver_id, privileged)
    limit = settings_of(DeliverySettings).deliveries_proof_max_bytes
    if not data:
        raise ValidationFailed.for_field("body", "is empty")
    if len(data) > limit:
        raise ValidationFailed.for_field("body", f"is larger than {limit} bytes", "too_long")
    magic = PROOF_TYPES.get(content_type)
    if magic is None:
        raise ValidationFailed.for_field("content-type", f"must be one of {', '.join(sorted(PROOF_TYPES))}")
    if not data.startswith(magic) or (content_type == "image/webp" and data[8:12] != b"WEBP"):
        raise ValidationFailed.for_field("body", f"is not a {content_type} file")
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and sha256.lower() != digest:
        raise ValidationFailed.for_field("x-checksum-sha256", "does not match the SHA-256 of the body")
    async with postgres.transaction() as conn:
        row, driver_id = await _load(conn, delivery_id, caller, privileged, lock=True)
        _refuse_unless_driver(row, driver_id, privileged)
        if row["status"] != "picked_up":
            raise Conflict(f"a proof is taken for a picked_up delivery; this one is {row['status']}",
                           extra={"status": row["status"]})
        stored = await conn.fetchrow(
            "INSERT INTO delivery_proofs (delivery_id, kind, content_type, size_bytes, sha256, data, uploaded_by, "
            "uploaded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) ON CONFLICT (delivery_id) DO UPDATE SET "
            "kind = $2, content_type = $3, size_bytes = $4, sha256 = $5, data = $6, uploaded_by = $7, "
            "uploaded_at = now() RETURNING delivery_id, kind, content_type, size_bytes, sha256, uploaded_by, "
            "uploaded_at", delivery_id, kind, content_type, len(data), digest, data, caller)
    assert stored is not None
    return _proof(stored)


async def get_proof(*, delivery_id: UUID, caller: str, privileged: bool, with_data: bool = False
                    ) -> tuple[ProofRead, bytes | None]:
    pg = await postgres.pool()
    await _load(pg, delivery_id, caller, privileged)
    row = await pg.fetchrow(
        "SELECT delivery_id, kind, content_type, size_bytes, sha256, uploaded_by, uploaded_at"
        + (", data" if with_data else "") + " FROM delivery_proofs WHERE delivery_id = $1", delivery_id)
    if row is None:
        raise NotFound(f"delivery {delivery_id} has no proof of delivery")
    return ProofRead.model_validate({k: row[k] for k in ProofRead.model_fields}), row["data"] if with_data else None


# -- dispatch ------------------------------------------------------------------------------------------


async def submit_to_dispatch(row: asyncpg.Record) -> bool:
    """Submit a delivery as ai-dispatch's job (``submit_job``, idempotent on job id); False when it is absent."""
    if not exported(DISPATCH, "submit_job"):
        return False
    await call(
        DISPATCH, "submit_job", job_id=str(row["id"]),
        pickup={"lat": row["pickup"]["lat"], "lon": row["pickup"]["lon"]},
        dropoff={"lat": row["dropoff"]["lat"], "lon": row["dropoff"]["lon"]},
        weight_kg=row["weight_kg"], vehicle_types=row["vehicle_types"], ready_at=None,
        reference={"delivery_id": str(row["id"]), "shipment_id": row["shipment_id"], "order_id": row["order_id"],
                   "driver_fee": row["driver_fee"], "currency": row["currency"].strip()})
    return True


async def submit_pending(limit: int = 50) -> int:
    """Submit deliveries waiting for dispatch, each in its own transaction (row locked, skipped if busy)."""
    if not exported(DISPATCH, "submit_job"):
        return 0
    submitted = 0
    for _ in range(limit):
        async with postgres.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM deliveries WHERE dispatch_state = 'pending' AND status = 'created' "
                "ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED")
            if row is None:
                break
            await submit_to_dispatch(row)
            await conn.execute("UPDATE deliveries SET dispatch_state = 'submitted' WHERE id = $1", row["id"])
            submitted += 1
    return submitted


async def _submit_quietly(delivery_id: UUID) -> None:
    """Submit one new delivery now; the loop retries it if this fails."""
    try:
        async with postgres.transaction() as conn:
            row = await conn.fetchrow("SELECT * FROM deliveries WHERE id = $1 AND dispatch_state = 'pending' "
                                      "FOR UPDATE SKIP LOCKED", delivery_id)
            if row is not None and await submit_to_dispatch(row):
                await conn.execute("UPDATE deliveries SET dispatch_state = 'submitted' WHERE id = $1", delivery_id)
    except Exception as exc:
        log.warning("delivery %s not submitted to dispatch yet: %s", delivery_id, type(exc).__name__)


#: Background: submit pending deliveries to ai-dispatch (when it is there), retrying failures.
submit_forever = loops.every("dispatch submission", submit_pending,
                             lambda: settings_of(DeliverySettings).deliveries_submit_every_s, wait_first=True)


async def on_assigned(conn: asyncpg.Connection, data: dict[str, Any]) -> DeliveryRead | None:
    """ai-dispatch assigned the job (a driver accepted): created -> assigned; a repeat or stale one changes nothing."""
    try:
        delivery_id = UUID(str(data["job_id"]))
    except ValueError:
        return None  # not one of ours: dispatch's jobs may come from elsewhere
    row = await conn.fetchrow("SELECT * FROM deliveries WHERE id = $1 FOR UPDATE", delivery_id)
    if row is None or row["status"] != "created":
        return None
    moved = await _move(conn, row, "assigned", actor=DISPATCH, driver_id=UUID(str(data["driver_id"])),
                        offer_id=str(data.get("offer_id")) if data.get("offer_id") else None)
    return _read(moved)


# -- events --------------------------------------------------------------------------------------------


async def on_events(conn: asyncpg.Connection, events: list[Event]) -> None:
    """A fetch's events at once: its shipments' deliveries in one statement, then each assignment in turn (a
    delivery is always made before it is assigned)."""
    shipments = [e.data for e in events if e.topic == SHIPMENT_CREATED]
    if shipments and (made := await create_from_shipments(conn, shipments)):
        log.debug("%d deliveries created from shipments", made)
    for event in events:
        if event.topic == DISPATCH_ASSIGNED:
            await on_assigned(conn, event.data)


async def consume_forever() -> None:
    """Background: consume ``shipment.created`` and ``dispatch.assigned`` (at least once, idempotent)."""
    await EventConsumer(SERVICE, [SHIPMENT_CREATED, DISPATCH_ASSIGNED], None, handle_many=on_events,
                        session_timeout_ms=6000).run_until_stopped()


async def home_summary(*, user_id: str) -> dict[str, Any]:
    """The home view's deliveries part: the user's deliveries (as their sender), how many are under way, the 3
    latest."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT id, status, order_id, updated_at, count(*) OVER () AS n, "
        "count(*) FILTER (WHERE status NOT IN ('delivered', 'failed')) OVER () AS active "
        "FROM deliveries WHERE owner = $1 ORDER BY created_at DESC, id LIMIT 3", user_id)
    return {"count": rows[0]["n"] if rows else 0, "active": rows[0]["active"] if rows else 0,
            "latest": [{"delivery_id": str(r["id"]), "status": r["status"], "order_id": r["order_id"],
                        "updated_at": r["updated_at"].isoformat()} for r in rows]}
