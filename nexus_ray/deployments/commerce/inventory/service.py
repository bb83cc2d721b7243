"""inventory-mgr's logic: stock that is never oversold, reservations that expire, movements that explain it.

Model
-----
A **stock row** is one SKU in one warehouse: ``on_hand`` units and ``reserved`` of them held for
someone; ``available = on_hand - reserved``. A **reservation** holds units of several SKUs for a
reference (an order), all lines or none, until it is **committed** (the units leave for good),
**released** (they return to available) or **expired** (released by time). A committed
reservation that is released is a **return**: the units come back on hand. Every change of a
stock row is a **movement** (reserve, commit, release, expire, restock, adjust, return) with its
deltas of on_hand and reserved, so summing a row's movements gives the row: the history explains
the stock, and the reconciliation in the tests checks that it does.

No oversell: one lock per SKU, taken in one order
-------------------------------------------------
Every transaction that changes a SKU's stock first locks that SKU's row in ``inventory_skus``
(``FOR UPDATE``, all its SKUs in one statement, ordered by SKU), then reads its stock rows and
decides. Two reservations of the same SKU therefore queue on one row lock and the second sees
what the first took; two transactions never wait on each other's SKUs in opposite orders. A
transaction that touches reservations locks them first (in id order), then their SKUs: commit,
release and expiry, and a new reservation that ends the lapsed holds on its SKUs before it locks
them (it waits for a lapsed hold that someone else is ending rather than skip it, which would refuse
stock that is free a moment later). The sweep takes reservations with ``SKIP LOCKED`` and never
waits on one. No transaction holds a SKU while it waits for a reservation, so the orders cannot
deadlock. The CHECKs on ``inventory_stock``
(``0 <= reserved <= on_hand``) are the last guard: a bug would be an error, never an oversell.

Expiry
------
A hold past its ``expires_at`` counts as released for every read (stock levels subtract only the
holds still running; a reservation shows ``expired``) and for a new reservation of the same SKUs,
which releases such holds in its own transaction before it counts. The background sweep
(:func:`expire_forever`) releases the rest, each with an ``expire`` movement.

Low stock
---------
``inventory_skus.low`` remembers whether a SKU's available stock is below its threshold; a change
that takes it below emits ``stock.low`` and sets the flag, one that brings it back emits
``stock.replenished`` and clears it: one event per crossing, whatever the number of changes.

Idempotency
-----------
A reservation's key (scoped to the caller) is a UNIQUE column of the reservation: the INSERT that
claims it waits for a concurrent request with the same key and then finds its row, so a retry
returns the first reservation and never holds twice; the same key with another body is a 409 naming
``idempotency_key``. A refused reservation (not enough stock) leaves nothing behind, so a retry may
succeed later. Commit and release are idempotent by state.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit, emit_many
from nexus_ray.stores.together import GroupCommit

from .models import MovementRead, ReservationLine, ReservationRead, StockRead, WarehouseRead, WarehouseStock
from .settings import InventorySettings

log = logging.getLogger(__name__)

STOCK_LOW = "stock.low"
STOCK_REPLENISHED = "stock.replenished"


def reservation_topic(status: str) -> str:
    """The event of a reservation reaching ``status``: ``reservation.held``, ``reservation.committed``..."""
    return f"reservation.{status}"


# -- warehouses ------------------------------------------------------------------------------------------


async def create_warehouse(*, id: str, name: str, priority: int) -> WarehouseRead:
    """Open a warehouse; 409 if the id is taken."""
    pg = await postgres.pool()
    try:
        row = await pg.fetchrow(
            "INSERT INTO inventory_warehouses (id, name, priority) VALUES ($1, $2, $3) "
            "RETURNING id, name, priority, created_at", id, name, priority)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"warehouse {id} exists", extra={"field": "id", "code": "warehouse_exists"}) from None
    return WarehouseRead.model_validate(dict(row))


async def list_warehouses() -> list[WarehouseRead]:
    """Every warehouse, in the order reservations draw from them (a handful: not paged)."""
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT id, name, priority, created_at FROM inventory_warehouses ORDER BY priority, id")
    return [WarehouseRead.model_validate(dict(r)) for r in rows]


# -- movements: the one way stock changes -----------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One change of one stock row, and why."""

    sku: str
    warehouse_id: str
    kind: str
    on_hand: int
    reserved: int
    reservation_id: UUID | None = None
    note: str = ""


async def _lock_skus(conn: asyncpg.Connection, skus: Sequence[str]) -> dict[str, asyncpg.Record]:
    """Lock the SKUs' rows (one statement, SKU order): every change of their stock waits for this one."""
    rows = await conn.fetch(
        "SELECT sku, low_threshold, low FROM inventory_skus WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE",
        sorted(set(skus)))
    return {r["sku"]: r for r in rows}


def _move_statements(caller: str, moves: Sequence[Move],
                     first: int) -> tuple[str, str, list[Any], list[tuple[str, str]]]:
    """The statements that write ``moves``: (their history's INSERT, the stock rows' UPDATE, the parameters of
    both, numbered from ``first``, and the stock rows they change, as (sku, warehouse))."""
    totals: dict[tuple[str, str], list[int]] = {}
    for m in moves:
        t = totals.setdefault((m.sku, m.warehouse_id), [0, 0])
        t[0] += m.on_hand
        t[1] += m.reserved
    keys = sorted(totals)
    p = [f"${first + i}" for i in range(12)]
    history = (
        "INSERT INTO inventory_movements (sku, warehouse_id, kind, on_hand_delta, reserved_delta, reservation_id, "
        f"note, created_by) SELECT s, w, k, o, r, i, n, {p[11]} FROM unnest({p[4]}::text[], {p[5]}::text[], "
        f"{p[6]}::text[], {p[7]}::int8[], {p[8]}::int8[], {p[9]}::uuid[], {p[10]}::text[]) "
        "WITH ORDINALITY AS u(s, w, k, o, r, i, n, x) ORDER BY x")
    stock = (
        "UPDATE inventory_stock s SET on_hand = s.on_hand + u.o, reserved = s.reserved + u.r "
        f"FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::int8[], {p[3]}::int8[]) AS u(k, w, o, r) "
        "WHERE s.sku = u.k AND s.warehouse_id = u.w")
    args = [[k[0] for k in keys], [k[1] for k in keys], [totals[k][0] for k in keys], [totals[k][1] for k in keys],
            [m.sku for m in moves], [m.warehouse_id for m in moves], [m.kind for m in moves],
            [m.on_hand for m in moves], [m.reserved for m in moves], [m.reservation_id for m in moves],
            [m.note for m in moves], caller]
    return history, stock, args, keys


def _oversold() -> Conflict:
    # Only reachable through a bug in the checks before: the database refuses to oversell.
    return Conflict("the change would take stock below zero or below what is reserved",
                    extra={"code": "insufficient_stock"})


async def _apply(conn: asyncpg.Connection, caller: str, moves: Sequence[Move],
                 known: dict[str, tuple[int, bool, int]] | None = None) -> None:
    """Write ``moves`` to the stock rows (their SKUs locked by the caller) and to the history; flag low stock.

    ``known``: per SKU, (threshold, low, available before the moves) when the caller has just read them
    under its lock, which spares the query for the low-stock check.
    """
    if not moves:
        return
    history, stock, args, keys = _move_statements(caller, moves, 1)
    try:
        # The history and the stock rows in one statement.
        found = {(r["sku"], r["warehouse_id"]) for r in await conn.fetch(
            f"WITH m AS ({history}) {stock} RETURNING s.sku, s.warehouse_id", *args)}
        new = [k for k in keys if k not in found]  # a SKU's first units in a warehouse
        if new:
            totals = {k: (on_hand, reserved) for k, on_hand, reserved in zip(keys, args[2], args[3], strict=True)}
            await conn.execute(
                "INSERT INTO inventory_stock (sku, warehouse_id, on_hand, reserved) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[])",
                [k[0] for k in new], [k[1] for k in new], [totals[k][0] for k in new], [totals[k][1] for k in new])
    except asyncpg.CheckViolationError:
        raise _oversold() from None
    await _after_moves(conn, moves, known)


async def _moved_with_events(conn: asyncpg.Connection, caller: str, moves: Sequence[Move], topic: str,
                             events: Sequence[tuple[str | None, dict[str, Any] | str]], beside: str,
                             args: Sequence[Any], known: dict[str, tuple[int, bool, int]] | None = None) -> None:
    """Write ``moves`` (as :func:`_apply` does, to stock rows that exist: those read under the caller's lock), the
    change ``beside`` (its parameters numbered from ``$6``, given in ``args``) and ``events`` of ``topic``, in one
    statement; then flag low stock. For a reservation's hold, commit and release, whose moves are on rows they read
    or reserved from: one round trip instead of two."""
    if not moves or not events:
        await _apply(conn, caller, moves, known)
        await emit_many(conn, topic, events, beside=beside, args=args)
        return
    history, stock, move_args, _ = _move_statements(caller, moves, 6 + len(args))
    try:
        await emit_many(conn, topic, events, beside=(beside, history, stock), args=[*args, *move_args])
    except asyncpg.CheckViolationError:
        raise _oversold() from None
    await _after_moves(conn, moves, known)


async def _after_moves(conn: asyncpg.Connection, moves: Sequence[Move],
                       known: dict[str, tuple[int, bool, int]] | None) -> None:
    """Flag the SKUs whose available stock ``moves`` took across their low-stock threshold (see :func:`_apply`)."""
    change: dict[str, int] = {}
    for m in moves:
        change[m.sku] = change.get(m.sku, 0) + m.on_hand - m.reserved
    skus = sorted(sku for sku, delta in change.items() if delta)
    if not skus:  # no SKU's available stock moved (a commit takes the units from on hand and reserved alike)
        return
    if known is None or any(sku not in known for sku in skus):
        await _flag_low(conn, skus)
        return
    after = {sku: known[sku][2] + change[sku] for sku in skus}
    await _flip(conn, [(sku, not known[sku][1], after[sku], known[sku][0]) for sku in skus
                       if (after[sku] < known[sku][0]) != known[sku][1]])


async def _flag_low(conn: asyncpg.Connection, skus: Sequence[str]) -> None:
    """Emit ``stock.low`` / ``stock.replenished`` for the SKUs (locked) whose available stock crossed the threshold."""
    rows = await conn.fetch(
        "SELECT k.sku, k.low_threshold, k.low, coalesce(sum(s.on_hand - s.reserved), 0) AS available "
        "FROM inventory_skus k LEFT JOIN inventory_stock s ON s.sku = k.sku "
        "WHERE k.sku = ANY($1::text[]) GROUP BY k.sku, k.low_threshold, k.low", list(skus))
    await _flip(conn, [(r["sku"], not r["low"], int(r["available"]), r["low_threshold"]) for r in rows
                       if (int(r["available"]) < r["low_threshold"]) != r["low"]])


async def _flip(conn: asyncpg.Connection, flips: Sequence[tuple[str, bool, int, int]]) -> None:
    """Record the SKUs (sku, now low, available, threshold) that crossed their threshold, with their events."""
    if not flips:
        return
    await conn.execute(
        "UPDATE inventory_skus k SET low = u.low FROM unnest($1::text[], $2::bool[]) AS u(sku, low) "
        "WHERE k.sku = u.sku", [f[0] for f in flips], [f[1] for f in flips])
    for sku, low, available, threshold in flips:
        await emit(conn, STOCK_LOW if low else STOCK_REPLENISHED,
                   {"sku": sku, "available": available, "low_threshold": threshold}, key=sku)


async def _ensure_sku(conn: asyncpg.Connection, sku: str) -> None:
    await conn.execute("INSERT INTO inventory_skus (sku) VALUES ($1) ON CONFLICT DO NOTHING", sku)


async def _warehouse_exists(conn: asyncpg.Connection, warehouse_id: str) -> None:
    if not await conn.fetchval("SELECT 1 FROM inventory_warehouses WHERE id = $1", warehouse_id):
        raise NotFound(f"warehouse {warehouse_id} not found", extra={"field": "warehouse_id"})


def request_hash(operation: str, body: dict[str, Any]) -> str:
    """The hash a key is bound to: the operation and its body (without the key), canonical JSON."""
    return hashlib.sha256(orjson.dumps({"op": operation, "body": body}, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _key_reused() -> Conflict:
    return Conflict("idempotency_key was already used with another request", extra={
        "errors": [{"field": "idempotency_key", "message": "was used with another request",
                    "type": "idempotency_key_reused"}], "code": "idempotency_key_reused"})


def _in_progress() -> Conflict:
    return Conflict("a request with this idempotency_key is in progress; retry",
                    extra={"code": "idempotency_key_in_progress"})


async def _keyed_change(caller: str, key: str | None, h: str, sku: str, warehouse_id: str, move: Move
                        ) -> tuple[StockRead, bool]:
    """Apply one restock/adjustment once per key: (the SKU's stock after it, replayed)."""
    pg = await postgres.pool()
    for _ in range(2):
        if key is not None:
            earlier = await pg.fetchrow(
                "SELECT request_hash, response FROM inventory_idempotency WHERE principal = $1 AND key = $2",
                caller, key)
            if earlier is not None:
                if earlier["request_hash"] != h:
                    raise _key_reused()
                return StockRead.model_validate(earlier["response"]), True
        try:
            async with postgres.transaction() as conn:
                await _warehouse_exists(conn, warehouse_id)
                await _ensure_sku(conn, sku)
                await _lock_skus(conn, [sku])
                if move.on_hand < 0:
                    row = await conn.fetchrow(
                        "SELECT on_hand, reserved FROM inventory_stock WHERE sku = $1 AND warehouse_id = $2",
                        sku, warehouse_id)
                    free = (row["on_hand"] - row["reserved"]) if row else 0
                    if free + move.on_hand < 0:
                        raise Conflict(f"{sku} has {free} unreserved in {warehouse_id}: cannot remove {-move.on_hand}",
                                       extra={"field": "delta", "code": "insufficient_stock", "available": free})
                await _apply(conn, caller, [move])
                (result,) = await _stock(conn, [sku])
                if key is not None:
                    await conn.execute(
                        "INSERT INTO inventory_idempotency (principal, key, request_hash, response) "
                        "VALUES ($1, $2, $3, $4)", caller, key, h, result.model_dump(mode="json"))
            return result, False
        except asyncpg.UniqueViolationError:
            continue  # the same key committed meanwhile: replay it
    raise _in_progress()


async def restock(*, caller: str, sku: str, warehouse_id: str, quantity: int, note: str = "",
                  idempotency_key: str | None = None) -> tuple[StockRead, bool]:
    """Receive ``quantity`` units of ``sku`` into ``warehouse_id``: (the SKU's stock, replayed)."""
    h = request_hash("restock", {"sku": sku, "warehouse_id": warehouse_id, "quantity": quantity, "note": note})
    return await _keyed_change(caller, idempotency_key, h, sku, warehouse_id,
                               Move(sku, warehouse_id, "restock", quantity, 0, note=note))


async def adjust(*, caller: str, sku: str, warehouse_id: str, delta: int, reason: str,
                 idempotency_key: str | None = None) -> tuple[StockRead, bool]:
    """Correct on-hand stock by ``delta`` (never below what is reserved): (the SKU's stock, replayed)."""
    if delta == 0:
        raise ValidationFailed.for_field("delta", "must not be 0")
    h = request_hash("adjust", {"sku": sku, "warehouse_id": warehouse_id, "delta": delta, "reason": reason})
    return await _keyed_change(caller, idempotency_key, h, sku, warehouse_id,
                               Move(sku, warehouse_id, "adjust", delta, 0, note=reason))


async def set_threshold(*, sku: str, low_threshold: int) -> StockRead:
    """Set the SKU's low-stock threshold; crossing it by this change emits the event as any other would."""
    async with postgres.transaction() as conn:
        await _ensure_sku(conn, sku)
        await _lock_skus(conn, [sku])
        await conn.execute("UPDATE inventory_skus SET low_threshold = $2 WHERE sku = $1", sku, low_threshold)
        await _flag_low(conn, [sku])
        (result,) = await _stock(conn, [sku])
    return result


# -- reads -------------------------------------------------------------------------------------------------


async def _stock(conn: asyncpg.Connection | asyncpg.Pool, skus: Sequence[str]) -> list[StockRead]:
    """The stock of ``skus`` that exist, holds past their expiry counted as released."""
    rows = await conn.fetch(
        "SELECT k.sku, k.low_threshold, k.low, s.warehouse_id, s.on_hand, s.reserved FROM inventory_skus k "
        "LEFT JOIN inventory_stock s ON s.sku = k.sku WHERE k.sku = ANY($1::text[]) ORDER BY k.sku, s.warehouse_id",
        list(skus))
    lapsed = {(r["sku"], r["warehouse_id"]): int(r["q"]) for r in await conn.fetch(
        "SELECT l.sku, l.warehouse_id, sum(l.quantity) AS q FROM inventory_reservations r "
        "JOIN inventory_reservation_lines l ON l.reservation_id = r.id "
        "WHERE r.status = 'held' AND r.expires_at <= now() AND l.sku = ANY($1::text[]) GROUP BY 1, 2", list(skus))}
    out: dict[str, StockRead] = {}
    for r in rows:
        s = out.get(r["sku"])
        if s is None:
            s = out[r["sku"]] = StockRead(sku=r["sku"], on_hand=0, reserved=0, available=0,
                                          low_threshold=r["low_threshold"], low=r["low"], warehouses=[])
        if r["warehouse_id"] is None:
            continue
        reserved = r["reserved"] - lapsed.get((r["sku"], r["warehouse_id"]), 0)
        s.warehouses.append(WarehouseStock(warehouse_id=r["warehouse_id"], on_hand=r["on_hand"], reserved=reserved,
                                           available=r["on_hand"] - reserved))
        s.on_hand += r["on_hand"]
        s.reserved += reserved
        s.available += r["on_hand"] - reserved
    return list(out.values())


async def stock(*, skus: Sequence[str]) -> list[StockRead]:
    """The stock of each of ``skus`` (unknown SKUs are left out)."""
    return await _stock(await postgres.pool(), sorted(set(skus)))


async def movements(*, sku: str, page: PageRequest) -> Page[MovementRead]:
    """A SKU's movements in order (keyset on id)."""
    after = page.after_value(0, 0)
    if not isinstance(after, int) or isinstance(after, bool):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT id, sku, warehouse_id, kind, on_hand_delta, reserved_delta, reservation_id, note, created_by, "
        "created_at FROM inventory_movements WHERE sku = $1 AND id > $2 ORDER BY id LIMIT $3",
        sku, after, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["id"],), item=lambda r: MovementRead.model_validate(dict(r)))


# -- reservations --------------------------------------------------------------------------------------------

_RES_COLUMNS = "id, caller, reference, status, returned, request_hash, created_at, expires_at, resolved_at"


async def _reservation_read(conn: asyncpg.Connection | asyncpg.Pool, row: asyncpg.Record) -> ReservationRead:
    lines = await conn.fetch(
        "SELECT sku, warehouse_id, quantity FROM inventory_reservation_lines WHERE reservation_id = $1 "
        "ORDER BY sku, warehouse_id", row["id"])
    return _read_of(row, lines)


def _read_of(row: asyncpg.Record | dict[str, Any], lines: Sequence[asyncpg.Record]) -> ReservationRead:
    """A reservation's row and its lines (in SKU and warehouse order) as it is read."""
    status = row["status"]
    if status == "held" and row["expires_at"] <= datetime.now(UTC):
        status = "expired"  # reads treat a lapsed hold as released, before the sweep gets to it
    return ReservationRead(id=row["id"], reference=row["reference"], status=status, returned=row["returned"],
                           expires_at=row["expires_at"], created_at=row["created_at"],
                           resolved_at=row["resolved_at"],
                           lines=[ReservationLine(sku=ln["sku"], warehouse_id=ln["warehouse_id"],
                                                  quantity=ln["quantity"]) for ln in lines])


def _insufficient(i: int, sku: str, wanted: int, available: int) -> Conflict:
    return Conflict(f"not enough stock of {sku}: {wanted} wanted, {available} available", extra={
        "errors": [{"field": f"lines.{i}.sku", "message": f"only {available} available", "type": "insufficient_stock"}],
        "code": "insufficient_stock", "sku": sku, "available": available})


def _allocate(wanted: int, free: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Where ``wanted`` units come from: the first warehouse (by priority) that has them all, else spread
    over the warehouses in priority order. ``free``: (warehouse id, units free) in priority order, enough in
    total."""
    for warehouse_id, units in free:
        if units >= wanted:
            return [(warehouse_id, wanted)]
    out, left = [], wanted
    for warehouse_id, units in free:
        take = min(left, units)
        if take > 0:
            out.append((warehouse_id, take))
            left -= take
    return out


@dataclass(frozen=True)
class _Reservation:
    """A reservation asked for: its request, and what it wants of each SKU (the SKUs in the order of their first
    line, with the index of that line)."""

    caller: str
    reference: str
    ttl_s: int
    key: str
    request_hash: str
    wanted: dict[str, int]
    first_index: dict[str, int]


async def reserve(*, caller: str, reference: str, lines: Sequence[dict[str, Any]], ttl_s: int,
                  idempotency_key: str) -> tuple[ReservationRead, bool]:
    """Hold every line's units for ``ttl_s`` seconds, or none (409 naming the first short SKU):
    (the reservation, whether it was a replay of the same key).

    The reservations that a process's requests of one caller ask for at the same moment are made together, in one
    transaction of a few statements for all of them, each held or refused on its own (:func:`_reserve_many`)."""
    wanted: dict[str, int] = {}
    first_index: dict[str, int] = {}
    for i, ln in enumerate(lines):
        wanted[ln["sku"]] = wanted.get(ln["sku"], 0) + int(ln["quantity"])
        first_index.setdefault(ln["sku"], i)
    h = request_hash("reserve", {"reference": reference, "ttl_s": ttl_s,
                                 "lines": [[ln["sku"], int(ln["quantity"])] for ln in lines]})
    return await _RESERVES.submit(caller, _Reservation(caller, reference, ttl_s, idempotency_key, h, wanted,
                                                       first_index))


async def _reserve_many(caller: str, asks: list[_Reservation]) -> list[tuple[ReservationRead, bool] | BaseException]:
    """Reserve for ``asks`` (all of ``caller``) in one transaction: their keys claimed in one statement, their SKUs
    locked in one (in SKU order, as every change locks them) and read in one, each allocated in turn from what
    the ones before it left, the holds, their lines and their events written in two statements. A reservation
    that the stock cannot hold is refused alone: its claim is deleted in the same transaction, so it leaves
    nothing. A key sent twice in the batch is reserved once and its later asks are answered as replays."""
    out: list[tuple[ReservationRead, bool] | BaseException | None] = [None] * len(asks)
    first: dict[str, int] = {}
    for i, a in enumerate(asks):
        first.setdefault(a.key, i)
    now = datetime.now(UTC)
    claims = sorted(first.items())  # two batches that share keys claim them in one order: no deadlock
    async with postgres.transaction() as conn:
        all_skus = sorted({sku for a in asks for sku in a.wanted})
        # The claims of the keys, and whether a lapsed hold on these SKUs is to be released first, in one trip.
        claimed = await conn.fetch(
            "WITH claim AS (INSERT INTO inventory_reservations (id, caller, reference, status, idempotency_key, "
            "               request_hash, created_at, expires_at) SELECT i, $2, r, 'held', k, h, $6, e "
            "               FROM unnest($1::uuid[], $3::text[], $4::text[], $5::text[], $7::timestamptz[]) "
            "               AS u(i, r, k, h, e) ON CONFLICT (caller, idempotency_key) DO NOTHING "
            "               RETURNING id, idempotency_key) "
            "SELECT c.id, c.idempotency_key AS key, EXISTS (SELECT 1 FROM inventory_reservations r "
            "    JOIN inventory_reservation_lines l ON l.reservation_id = r.id WHERE r.status = 'held' "
            "    AND r.expires_at <= now() AND l.sku = ANY($8::text[])) AS lapsed FROM claim c",
            [uuid.uuid4() for _ in claims], caller, [asks[i].reference for _, i in claims], [k for k, _ in claims],
            [asks[i].request_hash for _, i in claims], now,
            [now + timedelta(seconds=asks[i].ttl_s) for _, i in claims], all_skus)
        ids = {r["key"]: r["id"] for r in claimed}
        if taken := [k for k, _ in claims if k not in ids]:  # used before (a concurrent first one has committed)
            earlier = _with_lines(await conn.fetch(
                f"SELECT {postgres.qualified('r', _RES_COLUMNS)}, r.idempotency_key, "
                f"l.sku, l.warehouse_id, l.quantity FROM inventory_reservations r "
                f"LEFT JOIN inventory_reservation_lines l ON l.reservation_id = r.id "
                f"WHERE r.caller = $1 AND r.idempotency_key = ANY($2::text[]) ORDER BY r.id, l.sku, l.warehouse_id",
                caller, taken), "idempotency_key")
            for k in taken:
                i = first[k]
                if k not in earlier:  # claimed and refused by another transaction since: the caller retries
                    out[i] = _in_progress()
                    continue
                row, lines = earlier[k]
                out[i] = _key_reused() if row["request_hash"] != asks[i].request_hash else (_read_of(row, lines), True)
        if ids:
            skus = sorted({sku for _, i in claims if asks[i].key in ids for sku in asks[i].wanted})
            if claimed[0]["lapsed"]:  # before the SKUs are locked: reservations, then SKUs, as the sweep locks them
                await _expire_lapsed(conn, skus, caller)
            held, refused = await _hold(conn, caller, skus, [(i, ids[asks[i].key]) for i in sorted(first.values())
                                                             if asks[i].key in ids], asks, now)
            for i, result in held.items():
                out[i] = result
            if refused:
                await conn.execute("DELETE FROM inventory_reservations WHERE id = ANY($1::uuid[])", refused)
    for i, a in enumerate(asks):
        if out[i] is None:  # the key's later asks: as if they came right after the first
            j = first[a.key]
            earlier_out = out[j]
            if asks[j].request_hash != a.request_hash:
                out[i] = _key_reused()
            elif isinstance(earlier_out, tuple):
                out[i] = (earlier_out[0], True)
            else:
                out[i] = earlier_out
    return [o for o in out if o is not None]


async def _hold(conn: asyncpg.Connection, caller: str, skus: Sequence[str], claimed: Sequence[tuple[int, UUID]],
                asks: Sequence[_Reservation], now: datetime
                ) -> tuple[dict[int, tuple[ReservationRead, bool] | BaseException], list[UUID]]:
    """Allocate the ``claimed`` asks (index, reservation id), in turn, from the stock of ``skus``: each ask's
    answer, and the ids of the reservations refused for want of stock (to delete)."""
    # Lock first, then read, in two statements: a read joined to the lock would see the stock as it was
    # before the wait for the lock (a row locked after a wait is re-read, the rows joined to it are not).
    locked = await _lock_skus(conn, skus)
    rows = await conn.fetch(
        "SELECT s.sku, s.warehouse_id, s.on_hand - s.reserved AS free FROM inventory_stock s "
        "JOIN inventory_warehouses w ON w.id = s.warehouse_id WHERE s.sku = ANY($1::text[]) "
        "ORDER BY s.sku, w.priority, s.warehouse_id", list(skus))
    free: dict[str, dict[str, int]] = {}  # per SKU, per warehouse in priority order: what is still free
    for r in rows:
        free.setdefault(r["sku"], {})[r["warehouse_id"]] = r["free"]
    known = {sku: (k["low_threshold"], k["low"], sum(free.get(sku, {}).values())) for sku, k in locked.items()}
    answers: dict[int, tuple[ReservationRead, bool] | BaseException] = {}
    refused: list[UUID] = []
    moves: list[Move] = []
    events: list[tuple[str | None, dict[str, Any] | str]] = []
    for i, rid in claimed:
        a = asks[i]
        mine: list[Move] = []
        for sku in sorted(a.wanted, key=lambda s: a.first_index[s]):
            left = free.get(sku, {})
            available = sum(left.values())
            if available < a.wanted[sku]:
                answers[i] = _insufficient(a.first_index[sku], sku, a.wanted[sku], available)
                break
            mine += [Move(sku, w, "reserve", 0, q, rid) for w, q in _allocate(a.wanted[sku], list(left.items()))]
        else:
            for m in mine:
                free[m.sku][m.warehouse_id] -= m.reserved
            moves += mine
            read = ReservationRead(
                id=rid, reference=a.reference, status="held", returned=False, created_at=now,
                expires_at=now + timedelta(seconds=a.ttl_s), resolved_at=None,
                lines=sorted((ReservationLine(sku=m.sku, warehouse_id=m.warehouse_id, quantity=m.reserved)
                              for m in mine), key=lambda ln: (ln.sku, ln.warehouse_id)))
            answers[i] = (read, False)
            events.append((str(rid), read.model_dump(mode="json")))
            continue
        refused.append(rid)
    await _moved_with_events(
        conn, caller, moves, reservation_topic("held"), events,
        "INSERT INTO inventory_reservation_lines (reservation_id, sku, warehouse_id, quantity) "
        "SELECT * FROM unnest($6::uuid[], $7::text[], $8::text[], $9::int8[])",
        [[m.reservation_id for m in moves], [m.sku for m in moves], [m.warehouse_id for m in moves],
         [m.reserved for m in moves]], known)
    return answers, refused


#: Reservations asked for at the same moment, by caller, made together.
_RESERVES: GroupCommit[str, _Reservation, tuple[ReservationRead, bool]] = GroupCommit(_reserve_many)


async def _finish(conn: asyncpg.Connection, caller: str, res: Sequence[asyncpg.Record], status: str,
                  lines: Sequence[asyncpg.Record] | None = None, *,
                  skus_locked: bool = False) -> dict[UUID, ReservationRead]:
    """Move locked reservations to ``status``: held -> committed/released/expired, committed -> returned.
    Returns each as it now reads. ``lines``: theirs, in reservation, SKU and warehouse order, when the caller has
    read them with the reservations. ``skus_locked``: the caller has locked their SKUs already
    (:func:`_locked_reservations`)."""
    if not res:
        return {}
    ids = [r["id"] for r in res]
    state = {r["id"]: r["status"] for r in res}
    if lines is None:
        lines = await conn.fetch(
            "SELECT reservation_id, sku, warehouse_id, quantity FROM inventory_reservation_lines "
            "WHERE reservation_id = ANY($1::uuid[]) ORDER BY reservation_id, sku, warehouse_id", ids)
    if not skus_locked:
        await _lock_skus(conn, [ln["sku"] for ln in lines])
    moves = []
    for ln in lines:
        q, rid = ln["quantity"], ln["reservation_id"]
        if state[rid] == "committed":  # released after commit: the goods came back
            moves.append(Move(ln["sku"], ln["warehouse_id"], "return", q, 0, rid))
        elif status == "committed":
            moves.append(Move(ln["sku"], ln["warehouse_id"], "commit", -q, -q, rid))
        else:
            moves.append(Move(ln["sku"], ln["warehouse_id"], "release" if status == "released" else "expire", 0, -q,
                              rid))
    by_reservation: dict[UUID, list[asyncpg.Record]] = {}
    for ln in lines:  # in reservation, SKU and warehouse order
        by_reservation.setdefault(ln["reservation_id"], []).append(ln)
    # Each reservation as it reads after the change (its row is locked: nobody else changes it), and its event, by
    # topic; the change and the stock's moves are written in the statement of the first topic's events.
    now = datetime.now(UTC)
    reads: dict[UUID, ReservationRead] = {}
    events: dict[str, list[tuple[str | None, dict[str, Any] | str]]] = {}
    for r in res:
        returned = r["returned"] or r["status"] == "committed"
        read = reads[r["id"]] = _read_of({**dict(r), "status": status, "returned": returned, "resolved_at": now},
                                         by_reservation.get(r["id"], []))
        topic = reservation_topic("returned" if returned and status == "released" else status)
        events.setdefault(topic, []).append((str(r["id"]), read.model_dump(mode="json")))
    change = ("UPDATE inventory_reservations SET status = $7, returned = returned OR status = 'committed', "
              "resolved_at = $8 WHERE id = ANY($6::uuid[])")
    for n, (topic, items) in enumerate(events.items()):
        if n == 0:
            await _moved_with_events(conn, caller, moves, topic, items, change, (ids, status, now))
        else:
            await emit_many(conn, topic, items)
    return reads


async def _expire_lapsed(conn: asyncpg.Connection, skus: Sequence[str], caller: str) -> None:
    """Expire the lapsed holds on ``skus`` that touch no other SKU, before the caller locks the SKUs.

    A lapsed hold that someone else has locked (the sweep, or its owner committing or releasing it) is waited
    for, not skipped: whoever holds it is ending it, and skipping it would refuse a reservation for stock that
    is free a moment later. Locks go reservations first (in id order), then SKUs, as in the sweep and in
    commit and release, so the wait cannot close a cycle. After the wait the row is read again: ended by the
    other, it is left out.
    """
    res = await conn.fetch(
        f"SELECT {_RES_COLUMNS} FROM inventory_reservations r WHERE r.status = 'held' AND r.expires_at <= now() "
        "AND EXISTS (SELECT 1 FROM inventory_reservation_lines l WHERE l.reservation_id = r.id "
        "            AND l.sku = ANY($1::text[])) "
        "AND NOT EXISTS (SELECT 1 FROM inventory_reservation_lines l WHERE l.reservation_id = r.id "
        "                AND NOT l.sku = ANY($1::text[])) "
        "ORDER BY r.id FOR UPDATE OF r", list(skus))
    await _finish(conn, caller, res, "expired")


_LOCKED = (f"SELECT {postgres.qualified('r', _RES_COLUMNS)}, l.reservation_id, l.sku, "
           f"l.warehouse_id, l.quantity FROM inventory_reservations r LEFT JOIN inventory_reservation_lines l "
           f"ON l.reservation_id = r.id WHERE r.id = ANY($1::uuid[]) ORDER BY r.id, l.sku, l.warehouse_id "
           f"FOR UPDATE OF r")


#: :data:`_LOCKED`, then the SKUs of the reservations' lines locked (in SKU order), in one statement. The SKUs'
#: read takes every reservation's row first (``ARRAY(...)`` is computed once, whole, before it), so the reservations
#: are locked before their SKUs, as every transaction that touches reservations locks them.
_LOCKED_WITH_SKUS = (
    f"WITH locked AS ({_LOCKED}), skus AS (SELECT 1 FROM inventory_skus WHERE sku = ANY (ARRAY("
    f"SELECT DISTINCT sku FROM locked WHERE sku IS NOT NULL)) ORDER BY sku FOR UPDATE) "
    f"SELECT locked.*, (SELECT count(*) FROM skus) AS skus_locked FROM locked ORDER BY id, sku, warehouse_id")


async def _locked_reservations(conn: asyncpg.Connection, ids: Sequence[UUID]
                               ) -> dict[UUID, tuple[asyncpg.Record, list[asyncpg.Record]]]:
    """The reservations, locked in id order, each with its lines (in SKU and warehouse order), and the SKUs of
    their lines locked after them, in one statement: a commit or release moves their stock next (with
    ``_finish(..., skus_locked=True)``). A reservation that turns out not to move leaves its SKUs locked for
    nothing, until the commit."""
    return _with_lines(await conn.fetch(_LOCKED_WITH_SKUS, sorted(set(ids))), "id")


def _with_lines(rows: Sequence[asyncpg.Record], by: str) -> dict[Any, tuple[asyncpg.Record, list[asyncpg.Record]]]:
    """Rows of reservations joined to their lines (``LEFT JOIN``, a reservation's rows together), as each
    reservation's row and its lines, keyed by the column ``by``."""
    out: dict[Any, tuple[asyncpg.Record, list[asyncpg.Record]]] = {}
    for r in rows:
        _, lines = out.setdefault(r[by], (r, []))
        if r["sku"] is not None:
            lines.append(r)
    return out


def _visible(found: tuple[asyncpg.Record, list[asyncpg.Record]] | None, reservation_id: UUID, caller: str,
             privileged: bool) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    # Another caller's reservation is reported as missing: its existence is not their business.
    if found is None or (found[0]["caller"] != caller and not privileged):
        raise NotFound(f"reservation {reservation_id} not found")
    return found


async def _locked_reservation(conn: asyncpg.Connection, reservation_id: UUID, caller: str, privileged: bool
                              ) -> tuple[asyncpg.Record, list[asyncpg.Record]]:
    """The reservation, locked, and its lines (in SKU and warehouse order), in one statement."""
    found = await _locked_reservations(conn, [reservation_id])
    return _visible(found.get(reservation_id), reservation_id, caller, privileged)


async def get_reservation(*, reservation_id: UUID, caller: str, privileged: bool) -> ReservationRead:
    pg = await postgres.pool()
    row = await pg.fetchrow(f"SELECT {_RES_COLUMNS} FROM inventory_reservations WHERE id = $1", reservation_id)
    if row is None or (row["caller"] != caller and not privileged):
        raise NotFound(f"reservation {reservation_id} not found")
    return await _reservation_read(pg, row)


def _lapsed(row: asyncpg.Record) -> bool:
    return bool(row["status"] == "held" and row["expires_at"] <= datetime.now(UTC))


async def commit_reservation(*, reservation_id: UUID, caller: str, privileged: bool) -> ReservationRead:
    """The held units leave for good; committing a committed reservation returns it; 409 past its expiry.

    The commits that a process's requests ask for at the same moment are made together, in one transaction of
    a few statements for all of them (:func:`_commit_many`)."""
    return await _COMMITS.submit("commit", _Commit(reservation_id, caller, privileged))


@dataclass(frozen=True)
class _Commit:
    reservation_id: UUID
    caller: str
    privileged: bool


async def _commit_many(_: str, asks: list[_Commit]) -> list[ReservationRead | BaseException]:
    """Commit the reservations ``asks`` name, each decided on its own: the reservations locked in id order, then
    their SKUs, as one commit locks them; the held ones committed and the lapsed ones expired (and refused) in
    one change each. A reservation asked for twice is decided once, and both asks see it."""
    async with postgres.transaction() as conn:
        found = await _locked_reservations(conn, [a.reservation_id for a in asks])
        seen: list[tuple[asyncpg.Record, list[asyncpg.Record]] | NotFound] = []  # each ask's reservation, or 404
        for a in asks:
            try:
                seen.append(_visible(found.get(a.reservation_id), a.reservation_id, a.caller, a.privileged))
            except NotFound as err:
                seen.append(err)
        decided: dict[UUID, _Commit] = {}  # each reservation by the first ask that may change it
        for a, sight in zip(asks, seen, strict=True):
            if not isinstance(sight, NotFound):
                decided.setdefault(a.reservation_id, a)
        moving: dict[tuple[str, str], list[asyncpg.Record]] = {}
        refusals: dict[UUID, Conflict] = {}
        for rid, a in decided.items():
            row = found[rid][0]
            if row["status"] == "held":
                if _lapsed(row):  # expire it now (committed with this transaction), then refuse
                    moving.setdefault((a.caller, "expired"), []).append(row)
                    refusals[rid] = Conflict(f"reservation {rid} has expired", extra={"code": "reservation_expired"})
                else:
                    moving.setdefault((a.caller, "committed"), []).append(row)
            elif row["status"] != "committed":
                refusals[rid] = Conflict(f"reservation {rid} is {row['status']}, not held",
                                         extra={"code": "reservation_not_held", "status": row["status"]})
        reads: dict[UUID, ReservationRead] = {}
        for (caller, status), rows in moving.items():
            rows.sort(key=lambda r: r["id"])
            reads.update(await _finish(conn, caller, rows, status, [ln for r in rows for ln in found[r["id"]][1]],
                                       skus_locked=True))
    out: list[ReservationRead | BaseException] = []
    for a, sight in zip(asks, seen, strict=True):
        if isinstance(sight, NotFound):
            out.append(sight)
            continue
        refusal = refusals.get(a.reservation_id)
        out.append(refusal if refusal is not None else reads.get(a.reservation_id) or _read_of(*sight))
    return out


#: Commits asked for at the same moment, made together.
_COMMITS: GroupCommit[str, _Commit, ReservationRead] = GroupCommit(_commit_many)


async def release_reservation(*, reservation_id: UUID, caller: str, privileged: bool) -> ReservationRead:
    """Return the units: a hold is released (expired, if past its expiry), a committed reservation is a return
    (its units come back on hand). Releasing a released or expired reservation returns it as it is."""
    async with postgres.transaction() as conn:
        row, lines = await _locked_reservation(conn, reservation_id, caller, privileged)
        reads: dict[UUID, ReservationRead] = {}
        if row["status"] == "held":
            reads = await _finish(conn, caller, [row], "expired" if _lapsed(row) else "released", lines,
                                  skus_locked=True)
        elif row["status"] == "committed":
            reads = await _finish(conn, caller, [row], "released", lines, skus_locked=True)
        return reads.get(row["id"]) or _read_of(row, lines)


async def expire_reservations(*, limit: int | None = None) -> int:
    """Expire held reservations past their expiry; returns how many. Safe to run anywhere at once."""
    limit = limit or settings_of(InventorySettings).inventory_sweep_batch
    async with postgres.transaction() as conn:
        # SKIP LOCKED: one being committed or released right now is left to that transaction (or the next sweep).
        res = await conn.fetch(
            f"SELECT {_RES_COLUMNS} FROM inventory_reservations WHERE status = 'held' AND expires_at <= now() "
            f"ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
        await _finish(conn, "inventory-sweep", res, "expired")
    return len(res)


#: Background: release lapsed holds every ``inventory_sweep_s``.
expire_forever = loops.every("reservation expiry sweep", expire_reservations,
                             lambda: settings_of(InventorySettings).inventory_sweep_s, drain=True)
