"""driver-app-backend's logic: drivers, shifts, locations into the fleet, job offers, earnings.

Where each fact lives
---------------------
PostgreSQL holds drivers, shifts, offers and earnings (the source of truth). The fleet's
actor (fleet-manager, same namespace: plain function calls) holds the driver's vehicle,
its status and position: a shift start registers the vehicle ``available``, an accepted
offer makes it ``busy``, a finished job ``available`` again, a shift end ``offline``.
Those status writes follow the database change and are repaired when they fail: a
location whose vehicle the fleet does not know re-registers it with the status the
database implies, so the fleet converges on the database.

Offers
------
ai-dispatch calls :func:`offer_job`: the offer is stored (idempotent on its id) and pushed
to the driver's live sockets. Pushes go through Redis pub/sub on the driver's channel
``nexus:drivers:push:<driver_id>``: every replica holds one pattern subscription for all
drivers (:mod:`.live`) and hands each message to the sockets of that driver it holds, so
an offer reaches the driver on whatever replica their socket is connected to. A socket
also receives the pending offers when it connects, so nothing pushed while it was away
is lost; the HTTP routes are the fallback for apps without a socket.

An answer (socket or HTTP) is checked (the driver's own, still pending, not expired, the
driver not busy with another job), told to ai-dispatch (``offer_answered``) while the
offer's row is locked, and recorded only if dispatch takes it: a job dispatch has given
to someone else meanwhile is refused (409) and nothing changes. Without ai-dispatch in
this code base the answer is recorded alone.

Earnings
--------
:func:`job_finished` (deliveries, when a delivery ends) frees the driver and records the
job's earning once per (driver, job). When ``drivers_earnings_debit_account`` is set, each
earning is posted to the ledger (``post_transfer`` from that account to the driver's
payable account in the earning's currency, opened with ``open_account`` on first need),
idempotent on the earning's id; a failed posting is retried by :func:`post_earnings_forever`.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.calls import call, exported
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.deployments.logistics.fleet import service as fleet
from nexus_ray.deployments.logistics.fleet.models import PositionUpdate
from nexus_ray.exceptions import Conflict, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.cache import redis_client

from .models import DriverRead, DriverState, EarningRead, Location, OfferRead, ShiftRead
from .settings import DriverSettings

log = logging.getLogger(__name__)

SERVICE = "puabo-nexus-driver-app-backend"
DISPATCH = "puabo-nexus-ai-dispatch"
LEDGER = "ledger-mgr"
PUSH_PREFIX = "nexus:drivers:push:"
PRESENCE_PREFIX = "nexus:drivers:presence:"


# -- drivers ------------------------------------------------------------------------------------------

_DRIVER = (
    "SELECT d.id, d.user_id, d.name, d.fleet_id, d.vehicle_id, d.vehicle_type, d.capacity_kg, d.busy_job, "
    "d.created_at, s.planned_end_at AS shift_ends_at, (s.id IS NOT NULL) AS on_shift "
    "FROM drivers d LEFT JOIN driver_shifts s ON s.driver_id = d.id AND s.ended_at IS NULL "
)


def _driver(row: asyncpg.Record) -> DriverRead:
    return DriverRead.model_validate(dict(row))


async def create_driver(
    *, caller: str, privileged: bool, user_id: str | None, name: str, fleet_id: str, vehicle_id: str,
    vehicle_type: str, capacity_kg: float,
) -> DriverRead:
    """Register ``user_id`` (default the caller) as a driver of ``fleet_id``; one record per account.

    The fleet's operator (its owner) registers its drivers, an administrator any: a driver cannot
    join another's fleet on their own (404 for a fleet that is not the caller's).
    """
    user_id = user_id or caller
    await fleet.ensure_access(fleet_id=fleet_id, caller=caller, privileged=privileged)
    driver_id = uuid.uuid4()
    async with postgres.transaction() as conn:
        inserted = await conn.fetchval(
            "INSERT INTO drivers (id, user_id, name, fleet_id, vehicle_id, vehicle_type, capacity_kg) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO NOTHING RETURNING id",
            driver_id, user_id, name, fleet_id, vehicle_id, vehicle_type, capacity_kg)
        if inserted is None:
            raise Conflict(f"account {user_id} is already a driver", extra={"field": "user_id"})
        row = await conn.fetchrow(_DRIVER + "WHERE d.id = $1", driver_id)
    assert row is not None
    return _driver(row)


async def _visible(conn: asyncpg.Connection | asyncpg.Pool, driver_id: UUID, caller: str, privileged: bool,
                   *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(_DRIVER + "WHERE d.id = $1" + (" FOR UPDATE OF d" if lock else ""), driver_id)
    # Another driver's record is reported missing: its existence is not the caller's business.
    if row is None or (row["user_id"] != caller and not privileged):
        raise NotFound(f"driver {driver_id} not found")
    return row


async def get_driver(*, driver_id: UUID, caller: str, privileged: bool) -> DriverRead:
    return _driver(await _visible(await postgres.pool(), driver_id, caller, privileged))


async def driver_of_user(*, user_id: str) -> DriverRead:
    """The driver record of an account (404 if it is not a driver)."""
    row = await (await postgres.pool()).fetchrow(_DRIVER + "WHERE d.user_id = $1", user_id)
    if row is None:
        raise NotFound(f"account {user_id} is not a registered driver")
    return _driver(row)


async def list_drivers(*, fleet_id: str | None, page: PageRequest) -> Page[DriverRead]:
    after = page.after_value(0)
    if after is not None:
        try:
            after = UUID(str(after))
        except ValueError:
            raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    rows = await (await postgres.pool()).fetch(
        _DRIVER + "WHERE ($1::text IS NULL OR d.fleet_id = $1) AND ($2::uuid IS NULL OR d.id > $2) "
        "ORDER BY d.id LIMIT $3", fleet_id, after, page.fetch_limit)
    return page.of(rows, key=lambda r: (str(r["id"]),), item=_driver)


async def set_vehicle(*, driver_id: UUID, caller: str, privileged: bool, fleet_id: str, vehicle_id: str,
                      vehicle_type: str, capacity_kg: float) -> DriverRead:
    """Put the driver on another vehicle (not while on shift: the fleet tracks the vehicle of the shift).

    Moving to another fleet is its operator's (or an administrator's) decision, as registering is.
    """
    async with postgres.transaction() as conn:
        row = await _visible(conn, driver_id, caller, privileged, lock=True)
        if row["on_shift"]:
            raise Conflict("end the shift before changing vehicle")
        if fleet_id != row["fleet_id"]:
            await fleet.ensure_access(fleet_id=fleet_id, caller=caller, privileged=privileged)
        await conn.execute(
            "UPDATE drivers SET fleet_id = $2, vehicle_id = $3, vehicle_type = $4, capacity_kg = $5 WHERE id = $1",
            driver_id, fleet_id, vehicle_id, vehicle_type, capacity_kg)
        updated = await conn.fetchrow(_DRIVER + "WHERE d.id = $1", driver_id)
    assert updated is not None
    return _driver(updated)


# -- the driver's vehicle in the fleet ---------------------------------------------------------------


def _fleet_status(driver: DriverRead) -> str:
    if not driver.on_shift:
        return "offline"
    return "busy" if driver.busy_job else "available"


async def sync_vehicle(driver: DriverRead) -> bool:
    """Register the driver's vehicle in the fleet with the status the database implies; False if the fleet is away.

    The database is the truth and this is repaired on the next location (see the module's documentation),
    so a fleet that cannot answer does not fail the shift or the answer that called this.
    """
    try:
        await fleet.upsert_vehicles(fleet_id=driver.fleet_id, vehicles=[{
            "vehicle_id": driver.vehicle_id, "vehicle_type": driver.vehicle_type, "capacity_kg": driver.capacity_kg,
            "status": _fleet_status(driver), "driver_id": str(driver.id)}])
    except NexusError as err:
        log.warning("fleet %s not updated for a driver's vehicle: %s", driver.fleet_id, err.title)
        return False
    return True


async def _reload(driver_id: UUID) -> DriverRead:
    row = await (await postgres.pool()).fetchrow(_DRIVER + "WHERE d.id = $1", driver_id)
    assert row is not None
    return _driver(row)


# -- shifts -------------------------------------------------------------------------------------------


def _shift(row: asyncpg.Record) -> ShiftRead:
    return ShiftRead.model_validate(dict(row))


async def start_shift(*, driver_id: UUID, caller: str, privileged: bool, hours: float) -> ShiftRead:
    """Open a shift of ``hours`` (409 if one is open); the vehicle becomes available in the fleet."""
    if hours > settings_of(DriverSettings).drivers_shift_max_h:
        raise ValidationFailed.for_field("hours", f"must be at most {settings_of(DriverSettings).drivers_shift_max_h}")
    now = datetime.now(UTC)
    async with postgres.transaction() as conn:
        await _visible(conn, driver_id, caller, privileged, lock=True)
        row = await conn.fetchrow(
            "INSERT INTO driver_shifts (id, driver_id, started_at, planned_end_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (driver_id) WHERE ended_at IS NULL DO NOTHING RETURNING *",
            uuid.uuid4(), driver_id, now, now + timedelta(hours=hours))
        if row is None:
            raise Conflict("a shift is already open; end it first")
    await sync_vehicle(await _reload(driver_id))
    return _shift(row)


async def end_shift(*, driver_id: UUID, caller: str, privileged: bool) -> ShiftRead:
    """Close the open shift (409 if none, or while a job is under way); the vehicle goes offline."""
    async with postgres.transaction() as conn:
        driver = await _visible(conn, driver_id, caller, privileged, lock=True)
        if driver["busy_job"] is not None:
            raise Conflict(f"job {driver['busy_job']} is under way; finish it before ending the shift")
        row = await conn.fetchrow(
            "UPDATE driver_shifts SET ended_at = now() WHERE driver_id = $1 AND ended_at IS NULL RETURNING *",
            driver_id)
        if row is None:
            raise Conflict("no shift is open")
    await sync_vehicle(await _reload(driver_id))
    return _shift(row)


async def list_shifts(*, driver_id: UUID, caller: str, privileged: bool, page: PageRequest) -> Page[ShiftRead]:
    pg = await postgres.pool()
    await _visible(pg, driver_id, caller, privileged)
    after = page.after_value(0)
    rows = await pg.fetch(
        "SELECT * FROM driver_shifts WHERE driver_id = $1 AND ($2::text IS NULL OR "
        "(started_at, id::text) < ((split_part($2, '|', 1))::timestamptz, split_part($2, '|', 2))) "
        "ORDER BY started_at DESC, id::text DESC LIMIT $3",
        driver_id, after if isinstance(after, str) else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (f"{r['started_at'].isoformat()}|{r['id']}",), item=_shift)


# -- locations ----------------------------------------------------------------------------------------


async def report_locations(*, driver: DriverRead, points: list[Location]) -> int:
    """Feed the driver's readings to their vehicle in the fleet; returns how many moved it."""
    now = time.time()
    updates = [PositionUpdate(vehicle_id=driver.vehicle_id, lat=p.lat, lon=p.lon,
                              ts=p.ts or datetime.fromtimestamp(now, UTC)) for p in points]
    result = await fleet.ingest(fleet_id=driver.fleet_id, updates=updates)
    if result.unknown:
        # The fleet does not know the vehicle (a shift started while it was away): register it and resend.
        await sync_vehicle(driver)
        result = await fleet.ingest(fleet_id=driver.fleet_id, updates=updates)
    return result.applied


async def report_locations_of(*, driver_id: UUID, caller: str, privileged: bool, points: list[Location]) -> int:
    driver = _driver(await _visible(await postgres.pool(), driver_id, caller, privileged))
    return await report_locations(driver=driver, points=points)


# -- presence -----------------------------------------------------------------------------------------


async def mark_present(driver_id: UUID, connection: str) -> None:
    """Record that ``connection`` (a socket) of the driver is open, for the presence TTL."""
    await redis_client().set(f"{PRESENCE_PREFIX}{driver_id}", connection,
                             ex=settings_of(DriverSettings).drivers_presence_ttl_s)


_CLEAR_PRESENCE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


async def mark_absent(driver_id: UUID, connection: str) -> None:
    """Forget the presence ``connection`` recorded, unless a newer socket of the driver replaced it."""
    await redis_client().eval(_CLEAR_PRESENCE, 1, f"{PRESENCE_PREFIX}{driver_id}", connection)


async def _connected(driver_ids: list[UUID]) -> list[bool]:
    if not driver_ids:
        return []
    found = await redis_client().mget([f"{PRESENCE_PREFIX}{d}" for d in driver_ids])
    return [v is not None for v in found]


# -- available drivers (for dispatch) -----------------------------------------------------------------


async def available_drivers(*, fleet_id: str | None = None) -> list[DriverState]:
    """Drivers on shift, not busy, whose vehicle's position the fleet knows."""
    rows = await (await postgres.pool()).fetch(
        "SELECT d.id, d.fleet_id, d.vehicle_id, d.vehicle_type, d.capacity_kg, s.planned_end_at "
        "FROM drivers d JOIN driver_shifts s ON s.driver_id = d.id AND s.ended_at IS NULL "
        "WHERE d.busy_job IS NULL AND s.planned_end_at > now() AND ($1::text IS NULL OR d.fleet_id = $1) "
        "ORDER BY d.id", fleet_id)
    by_fleet: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_fleet.setdefault(r["fleet_id"], []).append(r)
    connected = dict(zip([r["id"] for r in rows], await _connected([r["id"] for r in rows]), strict=True))
    out: list[DriverState] = []
    for fid, members in by_fleet.items():
        positions = {v.vehicle_id: v for v in await fleet.vehicles(fleet_id=fid,
                                                                 vehicle_ids=[r["vehicle_id"] for r in members])}
        for r in members:
            v = positions.get(r["vehicle_id"])
            if v is None or v.lat is None or v.lon is None:
                continue  # no position yet: dispatch cannot cost it
            out.append(DriverState(driver_id=r["id"], fleet_id=fid, vehicle_id=r["vehicle_id"], lat=v.lat, lon=v.lon,
                                   vehicle_type=r["vehicle_type"], capacity_kg=r["capacity_kg"],
                                   shift_ends_at=r["planned_end_at"], connected=connected[r["id"]]))
    return out


# -- offers -------------------------------------------------------------------------------------------


def _offer(row: asyncpg.Record) -> OfferRead:
    out = dict(row)
    if out["status"] == "pending" and out["expires_at"] <= datetime.now(UTC):
        out["status"] = "expired"
    return OfferRead.model_validate(out)


async def push(driver_id: UUID | str, message: dict[str, Any]) -> None:
    """Send ``message`` to the driver's live sockets, on whatever replica they are connected to."""
    await redis_client().publish(f"{PUSH_PREFIX}{driver_id}", orjson.dumps(message))


async def offer_job(*, driver_id: UUID | str, offer_id: str, job: dict[str, Any], expires_at: datetime) -> OfferRead:
    """Store an offer (idempotent on ``offer_id``) and push it to the driver's sockets."""
    driver_id = UUID(str(driver_id))
    if expires_at.tzinfo is None:
        raise ValidationFailed.for_field("expires_at", "must carry a time zone")
    job_id = str(job.get("job_id") or job.get("id") or offer_id)
    async with postgres.transaction() as conn:
        if await conn.fetchval("SELECT 1 FROM drivers WHERE id = $1", driver_id) is None:
            raise NotFound(f"driver {driver_id} not found")
        await conn.execute(
            "INSERT INTO driver_offers (id, driver_id, job_id, job, status, expires_at) "
            "VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT (id) DO NOTHING",
            offer_id, driver_id, job_id, job, expires_at)
        row = await conn.fetchrow("SELECT * FROM driver_offers WHERE id = $1", offer_id)
    assert row is not None
    if row["driver_id"] != driver_id:
        raise Conflict(f"offer {offer_id} was made to another driver", extra={"field": "offer_id"})
    offer = _offer(row)
    if offer.status == "pending":
        await push(driver_id, {"type": "offer", "offer": offer.model_dump(mode="json")})
    return offer


async def withdraw_offer(*, offer_id: str) -> None:
    """Withdraw an offer (dispatch gave the job to another driver or cancelled it); frees its driver if taken."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow("SELECT driver_id, job_id, status FROM driver_offers WHERE id = $1 FOR UPDATE",
                                  offer_id)
        if row is None or row["status"] not in ("pending", "accepted"):
            return
        await conn.execute("UPDATE driver_offers SET status = 'withdrawn', answered_at = coalesce(answered_at, now()) "
                           "WHERE id = $1", offer_id)
        freed = await conn.fetchval(
            "UPDATE drivers SET busy_job = NULL WHERE id = $1 AND busy_job = $2 RETURNING id",
            row["driver_id"], row["job_id"]) if row["status"] == "accepted" else None
    await push(row["driver_id"], {"type": "offer.withdrawn", "offer_id": offer_id})
    if freed is not None:
        await sync_vehicle(await _reload(row["driver_id"]))


async def list_offers(*, driver_id: UUID, caller: str, privileged: bool, pending_only: bool, page: PageRequest
                      ) -> Page[OfferRead]:
    pg = await postgres.pool()
    await _visible(pg, driver_id, caller, privileged)
    return await _offers_page(pg, driver_id, pending_only, page)


async def _offers_page(pg: asyncpg.Pool, driver_id: UUID, pending_only: bool, page: PageRequest) -> Page[OfferRead]:
    after = page.after_value(0)
    rows = await pg.fetch(
        "SELECT * FROM driver_offers WHERE driver_id = $1 "
        "AND (NOT $2 OR (status = 'pending' AND expires_at > now())) "
        "AND ($3::text IS NULL OR (created_at, id) < ((split_part($3, '|', 1))::timestamptz, "
        "substr($3, strpos($3, '|') + 1))) "
        "ORDER BY created_at DESC, id DESC LIMIT $4",
        driver_id, pending_only, after if isinstance(after, str) else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (f"{r['created_at'].isoformat()}|{r['id']}",), item=_offer)


async def pending_offers(driver_id: UUID) -> list[OfferRead]:
    """The driver's offers still open, newest first (what a socket receives when it connects)."""
    rows = await (await postgres.pool()).fetch(
        "SELECT * FROM driver_offers WHERE driver_id = $1 AND status = 'pending' AND expires_at > now() "
        "ORDER BY created_at DESC LIMIT 100", driver_id)
    return [_offer(r) for r in rows]


async def tell_dispatch(*, offer_id: str, driver_id: UUID, accepted: bool) -> bool:
    """Report a driver's answer to ai-dispatch (``offer_answered``); False when ai-dispatch is not in this code base.

    Its refusal (the job went to another driver, the offer timed out there) propagates: the
    caller records nothing.
    """
    if not exported(DISPATCH, "offer_answered"):
        return False
    try:
        await call(DISPATCH, "offer_answered", offer_id=offer_id, driver_id=str(driver_id), accepted=accepted)
    except NotFound:
        # An offer ai-dispatch never made (an operator's or another service's, through ``offer_job``): the
        # driver's answer is this service's alone to record. A dispatch offer is never forgotten there.
        return False
    return True


async def answer_offer(*, driver_id: UUID, offer_id: str, accepted: bool, reason: str | None, caller: str,
                       privileged: bool) -> OfferRead:
    """Accept or reject an offer made to the driver; the same answer again returns it (idempotent), another is 409."""
    wanted = "accepted" if accepted else "rejected"
    async with postgres.transaction() as conn:
        driver = await _visible(conn, driver_id, caller, privileged, lock=True)
        row = await conn.fetchrow("SELECT * FROM driver_offers WHERE id = $1 FOR UPDATE", offer_id)
        if row is None or row["driver_id"] != driver_id:
            raise NotFound(f"offer {offer_id} not found")
        offer = _offer(row)
        if offer.status == wanted:
            return offer
        if offer.status != "pending":
            raise Conflict(f"offer {offer_id} is {offer.status}", extra={"status": offer.status})
        if accepted and driver["busy_job"] is not None:
            raise Conflict(f"job {driver['busy_job']} is under way; finish it first")
        if accepted and not driver["on_shift"]:
            raise Conflict("no shift is open")
        await tell_dispatch(offer_id=offer_id, driver_id=driver_id, accepted=accepted)
        row = await conn.fetchrow(
            "UPDATE driver_offers SET status = $2, reason = $3, answered_at = now() WHERE id = $1 RETURNING *",
            offer_id, wanted, reason)
        if accepted:
            await conn.execute("UPDATE drivers SET busy_job = $2 WHERE id = $1", driver_id, offer.job_id)
    if accepted:
        await sync_vehicle(await _reload(driver_id))
    assert row is not None
    return _offer(row)


# -- jobs finished and earnings -----------------------------------------------------------------------


def _earning(row: asyncpg.Record) -> EarningRead:
    return EarningRead.model_validate({**dict(row), "currency": row["currency"].strip()})


async def job_finished(*, driver_id: UUID | str, job_id: str, amount: int, currency: str) -> EarningRead:
    """The driver finished (or ended) ``job_id``: free them and record the job's earning once (then post it)."""
    driver_id = UUID(str(driver_id))
    if amount < 0:
        raise ValidationFailed.for_field("amount", "must not be negative")
    async with postgres.transaction() as conn:
        if await conn.fetchval("SELECT 1 FROM drivers WHERE id = $1", driver_id) is None:
            raise NotFound(f"driver {driver_id} not found")
        freed = await conn.fetchval(
            "UPDATE drivers SET busy_job = NULL WHERE id = $1 AND busy_job = $2 RETURNING id", driver_id, job_id)
        await conn.execute(
            "INSERT INTO driver_earnings (id, driver_id, job_id, amount, currency) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (driver_id, job_id) DO NOTHING", uuid.uuid4(), driver_id, job_id, amount, currency)
        row = await conn.fetchrow("SELECT * FROM driver_earnings WHERE driver_id = $1 AND job_id = $2",
                                  driver_id, job_id)
    assert row is not None
    if freed is not None:
        await sync_vehicle(await _reload(driver_id))
    earning = _earning(row)
    if earning.entry_id is None:
        try:
            earning = await post_earning(earning_id=earning.id) or earning
        except Exception as exc:  # the ledger away: the sweep posts it later
            log.warning("earning %s not posted yet: %s", earning.id, type(exc).__name__)
    return earning


async def list_earnings(*, driver_id: UUID, caller: str, privileged: bool, page: PageRequest) -> Page[EarningRead]:
    pg = await postgres.pool()
    await _visible(pg, driver_id, caller, privileged)
    after = page.after_value(0)
    rows = await pg.fetch(
        "SELECT * FROM driver_earnings WHERE driver_id = $1 AND ($2::text IS NULL OR "
        "(created_at, id::text) < ((split_part($2, '|', 1))::timestamptz, split_part($2, '|', 2))) "
        "ORDER BY created_at DESC, id::text DESC LIMIT $3",
        driver_id, after if isinstance(after, str) else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (f"{r['created_at'].isoformat()}|{r['id']}",), item=_earning)


async def _payable_account(driver_id: UUID, currency: str) -> str:
    """The driver's payable account in ``currency``, opened in the ledger on first need (one per currency)."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow("SELECT user_id, payable_accounts FROM drivers WHERE id = $1 FOR UPDATE", driver_id)
        assert row is not None
        known = row["payable_accounts"].get(currency)
        if known:
            return str(known)
        # Under the driver's row lock: two earnings never open two accounts. Should this transaction fail
        # after the ledger opened one, that account stays empty and unused.
        account = await call(LEDGER, "open_account", caller=SERVICE, owner=row["user_id"],
                             name=f"driver {driver_id} payable", type="liability", currency=currency)
        await conn.execute(
            "UPDATE drivers SET payable_accounts = payable_accounts || jsonb_build_object($2::text, $3::text) "
            "WHERE id = $1", driver_id, currency, str(account.id))
        return str(account.id)


async def post_earning(*, earning_id: UUID) -> EarningRead | None:
    """Post one earning to the ledger (idempotent on its id); None when earnings are not posted (no debit account)."""
    debit = settings_of(DriverSettings).drivers_earnings_debit_account
    if debit is None:
        return None
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM driver_earnings WHERE id = $1", earning_id)
    if row is None:
        raise NotFound(f"earning {earning_id} not found")
    if row["entry_id"] is not None or row["amount"] == 0:
        return _earning(row)
    currency = row["currency"].strip()
    credit = await _payable_account(row["driver_id"], currency)
    entry = await call(LEDGER, "post_transfer", caller=SERVICE, debit_account_id=str(debit), credit_account_id=credit,
                       amount=row["amount"], currency=currency, idempotency_key=f"driver-earning:{earning_id}",
                       description=f"job {row['job_id']}", metadata={"driver_id": str(row["driver_id"]),
                                                                     "job_id": row["job_id"]})
    posted = await pg.fetchrow(
        "UPDATE driver_earnings SET entry_id = $2, posted_at = now() WHERE id = $1 RETURNING *", earning_id, entry.id)
    assert posted is not None
    return _earning(posted)


async def post_unposted_earnings() -> int:
    """Post the earnings a failed ledger call left unposted (when a debit account is configured); how many."""
    if settings_of(DriverSettings).drivers_earnings_debit_account is None:
        return 0
    ids = await (await postgres.pool()).fetch(
        "SELECT id FROM driver_earnings WHERE entry_id IS NULL AND amount > 0 "
        "AND created_at < now() - interval '10 seconds' ORDER BY created_at LIMIT 100")
    for r in ids:
        await post_earning(earning_id=r["id"])
    return len(ids)


#: Background: :func:`post_unposted_earnings` every ``drivers_earnings_sweep_s``.
post_earnings_forever = loops.every("earnings sweep", post_unposted_earnings,
                                    lambda: settings_of(DriverSettings).drivers_earnings_sweep_s, wait_first=True)
