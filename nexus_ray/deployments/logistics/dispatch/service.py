"""ai-dispatch's logic: a loop that offers open jobs to available drivers at minimum total cost.

A job is ``open`` -> ``offered`` (one live offer) -> ``assigned`` (its driver accepted), or back to
``open`` when the driver rejects or lets the offer expire (then it is never offered to that driver
again); ``cancelled`` from any state.

A round (:func:`run_round`):

1. takes back offers past their expiry (job ``open`` again; the driver app is told to withdraw);
2. reads the available drivers from its :class:`~.drivers.DriverSource` (driver-app-backend's
   ``available_drivers`` by default, the one place that calls it; without that service the round
   does nothing and says so once in the log) and the open jobs, leaving out drivers that hold a
   live offer;
3. builds the cost matrix: travel time to the pickup (great-circle km times a detour factor at an
   average speed), ``inf`` where the driver's vehicle is of a type the job does not allow, carries
   less than its weight, is farther than ``dispatch_max_pickup_km``, would end its shift before
   delivering (pickup + pickup-to-drop-off + handling), or already turned the job down;
4. solves the minimum-cost assignment (:func:`nexus_ray.compute.assignment.assign`) as a Ray task
   when this process is connected to Ray (in a thread otherwise);
5. records each offer and the job's move to ``offered`` in one transaction per pair, then sends it
   (driver-app-backend's ``offer_job``).

Never two live offers for one job, nor for one driver: two partial unique indexes on
``dispatch_offers`` (``WHERE status = 'pending'``) refuse the second, whatever rounds race, and
the job's own ``open -> offered`` update is conditional; a pair refused that way is skipped.
One loop is live across replicas: each replica's :func:`dispatch_forever` runs a round only while
it holds the lease row in ``dispatch_leases`` (taken when free or expired, renewed every round).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import numpy as np

from nexus_ray.compute import assignment
from nexus_ray.compute.geo import distance_matrix_km, haversine_km
from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit

from .drivers import DriverApp, DriverSource
from .models import DispatchJobCreate, DispatchJobRead, DriverState, OfferRead, Place, RoundRead
from .settings import DispatchSettings

log = logging.getLogger(__name__)

ASSIGNED = "dispatch.assigned"
LEASE = "dispatch-loop"
RUNNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

_kick = asyncio.Event()
_JOB = ("job_id, status, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon, weight_kg, vehicle_types, ready_at, "
        "reference, driver_id, offers_made, created_at, updated_at, assigned_at")


def _job(row: asyncpg.Record, offers: list[OfferRead] | None = None) -> DispatchJobRead:
    r = dict(row)
    return DispatchJobRead(
        job_id=r["job_id"], status=r["status"], pickup=Place(lat=r["pickup_lat"], lon=r["pickup_lon"]),
        dropoff=Place(lat=r["dropoff_lat"], lon=r["dropoff_lon"]), weight_kg=r["weight_kg"],
        vehicle_types=r["vehicle_types"], ready_at=r["ready_at"], reference=r["reference"], driver_id=r["driver_id"],
        offers_made=r["offers_made"], created_at=r["created_at"], updated_at=r["updated_at"],
        assigned_at=r["assigned_at"], offers=offers,
    )


def _offer(row: asyncpg.Record) -> OfferRead:
    return OfferRead.model_validate(dict(row))


# -- jobs ------------------------------------------------------------------------------------------------------


async def submit_job(*, job: DispatchJobCreate, submitted_by: str) -> DispatchJobRead:
    """Record a job to dispatch; idempotent on ``job_id`` (the same id again returns the job as it is)."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            f"""INSERT INTO dispatch_jobs (job_id, status, pickup_lat, pickup_lon, dropoff_lat, dropoff_lon,
                                           weight_kg, vehicle_types, ready_at, reference, submitted_by)
                VALUES ($1, 'open', $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (job_id) DO NOTHING RETURNING {_JOB}""",
            job.job_id, job.pickup.lat, job.pickup.lon, job.dropoff.lat, job.dropoff.lon, job.weight_kg,
            job.vehicle_types, job.ready_at, job.reference, submitted_by,
        )
        if row is None:
            row = await conn.fetchrow(f"SELECT {_JOB} FROM dispatch_jobs WHERE job_id = $1", job.job_id)
    _kick.set()
    return _job(row)


async def get_job(*, job_id: str, with_offers: bool = True, caller: str | None = None) -> DispatchJobRead:
    """The job with its offers; with ``caller``, only if ``caller`` submitted it (404 otherwise)."""
    p = await postgres.pool()
    row = await p.fetchrow(f"SELECT {_JOB}, submitted_by FROM dispatch_jobs WHERE job_id = $1", job_id)
    if row is None or (caller is not None and row["submitted_by"] != caller):
        raise NotFound(f"job {job_id} not found")
    offers = None
    if with_offers:
        offers = [_offer(r) for r in await p.fetch(
            "SELECT * FROM dispatch_offers WHERE job_id = $1 ORDER BY created_at, id", job_id)]
    return _job(row, offers)


async def list_jobs(*, status: str | None, submitted_by: str | None, page: PageRequest) -> Page[DispatchJobRead]:
    """Jobs, newest first; ``submitted_by``: only those (None: all, for operators)."""
    after = page.after
    rows = await (await postgres.pool()).fetch(
        f"""SELECT {_JOB} FROM dispatch_jobs WHERE ($1::text IS NULL OR status = $1)
              AND ($5::text IS NULL OR submitted_by = $5)
              AND ($2::timestamptz IS NULL OR (created_at, job_id) < ($2::timestamptz, $3::text))
            ORDER BY created_at DESC, job_id DESC LIMIT $4""",
        status, None if after is None else _timestamp(after[0]), None if after is None else str(after[-1]),
        page.fetch_limit, submitted_by,
    )
    return page.of(rows, key=lambda r: [r["created_at"].isoformat(), r["job_id"]], item=_job)


async def list_offers(*, job_id: str | None, driver_id: str | None, status: str | None, page: PageRequest
                      ) -> Page[OfferRead]:
    after = page.after
    rows = await (await postgres.pool()).fetch(
        """SELECT * FROM dispatch_offers
           WHERE ($1::text IS NULL OR job_id = $1) AND ($2::text IS NULL OR driver_id = $2)
             AND ($3::text IS NULL OR status = $3)
             AND ($4::timestamptz IS NULL OR (created_at, id) < ($4::timestamptz, $5::uuid))
           ORDER BY created_at DESC, id DESC LIMIT $6""",
        job_id, driver_id, status, None if after is None else _timestamp(after[0]),
        None if after is None else _uuid(after[-1]), page.fetch_limit,
    )
    return page.of(rows, key=lambda r: [r["created_at"].isoformat(), str(r["id"])], item=_offer)


async def list_rounds(*, min_offers: int = 0, page: PageRequest) -> Page[RoundRead]:
    """Rounds of the loop, newest first; ``min_offers``: only those that offered at least that many."""
    after = page.after
    rows = await (await postgres.pool()).fetch(
        """SELECT * FROM dispatch_rounds WHERE offers >= $4
             AND ($1::timestamptz IS NULL OR (started_at, id) < ($1::timestamptz, $2::uuid))
           ORDER BY started_at DESC, id DESC LIMIT $3""",
        None if after is None else _timestamp(after[0]), None if after is None else _uuid(after[-1]), page.fetch_limit,
        min_offers,
    )
    return page.of(rows, key=lambda r: [r["started_at"].isoformat(), str(r["id"])],
                   item=lambda r: RoundRead.model_validate(dict(r)))


def _timestamp(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None


def _uuid(value: Any) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None


async def cancel_job(*, job_id: str, caller: str | None = None) -> DispatchJobRead:
    """Cancel a job (idempotent); its live offer is withdrawn. With ``caller``: only a job it submitted."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow("SELECT submitted_by FROM dispatch_jobs WHERE job_id = $1 FOR UPDATE", job_id)
        if row is None or (caller is not None and row["submitted_by"] != caller):
            raise NotFound(f"job {job_id} not found")
        live = await conn.fetch(
            "UPDATE dispatch_offers SET status = 'withdrawn', answered_at = now() "
            "WHERE job_id = $1 AND status = 'pending' RETURNING id", job_id)
        await conn.execute(
            "UPDATE dispatch_jobs SET status = 'cancelled', updated_at = now() WHERE job_id = $1", job_id)
    for r in live:
        await _withdraw(DriverApp(), str(r["id"]))
    return await get_job(job_id=job_id)


async def offer_answered(*, offer_id: str, driver_id: str, accepted: bool) -> DispatchJobRead:
    """A driver's answer. Accepted: the job is assigned and ``dispatch.assigned`` emitted. Rejected: it is
    open again for another driver. The same answer again returns the job (idempotent); an answer to an offer
    that is no longer live (expired, withdrawn, answered otherwise) is 409."""
    offer_uuid = _offer_id(offer_id)
    wanted = "accepted" if accepted else "rejected"
    async with postgres.transaction() as conn:
        offer = await conn.fetchrow("SELECT * FROM dispatch_offers WHERE id = $1 FOR UPDATE", offer_uuid)
        if offer is None or offer["driver_id"] != str(driver_id):
            raise NotFound(f"offer {offer_id} not found")
        job_id = offer["job_id"]
        if offer["status"] == wanted:
            pass  # replay
        elif offer["status"] != "pending":
            raise Conflict(f"offer {offer_id} is {offer['status']}")
        elif offer["expires_at"] <= datetime.now(UTC):
            await conn.execute("UPDATE dispatch_offers SET status = 'expired' WHERE id = $1", offer_uuid)
            await _reopen(conn, job_id)
            raise Conflict(f"offer {offer_id} expired")
        else:
            await conn.execute(
                "UPDATE dispatch_offers SET status = $2, answered_at = now() WHERE id = $1", offer_uuid, wanted)
            if accepted:
                await conn.execute(
                    """UPDATE dispatch_jobs SET status = 'assigned', driver_id = $2, assigned_at = now(),
                              updated_at = now() WHERE job_id = $1 AND status = 'offered'""",
                    job_id, str(driver_id),
                )
                await emit(conn, ASSIGNED, {"job_id": job_id, "driver_id": str(driver_id), "offer_id": offer_id},
                           key=job_id)
            else:
                await _reopen(conn, job_id)
    if not accepted:
        _kick.set()  # offer it to someone else now
    return await get_job(job_id=job_id)


def _offer_id(offer_id: str) -> UUID:
    try:
        return UUID(str(offer_id))
    except ValueError:
        raise NotFound(f"offer {offer_id} not found") from None


async def _reopen(conn: asyncpg.Connection, job_id: str) -> None:
    await conn.execute(
        "UPDATE dispatch_jobs SET status = 'open', updated_at = now() WHERE job_id = $1 AND status = 'offered'", job_id)


async def _withdraw(source: DriverSource, offer_id: str) -> None:
    try:
        await source.withdraw(offer_id=offer_id)
    except Exception as exc:  # the offer is dead here whatever the app says; the driver's answer will be refused
        log.warning("withdraw_offer %s failed: %s", offer_id, type(exc).__name__)


# -- the round ---------------------------------------------------------------------------------------------------


def cost_matrix(
    drivers: list[DriverState], jobs: list[asyncpg.Record] | list[dict[str, Any]], *, now: datetime,
    settings: DispatchSettings, refused: set[tuple[str, str]] | None = None,
) -> np.ndarray:
    """Seconds from each driver to each job's pickup, ``inf`` for pairs that may not be offered."""
    refused = refused or set()
    if not drivers or not jobs:
        return np.zeros((len(drivers), len(jobs)))
    speed = settings.dispatch_speed_kmh / 3600 / settings.dispatch_detour  # great-circle km per second
    at = np.array([(d.lat, d.lon) for d in drivers])
    pickups = np.array([(j["pickup_lat"], j["pickup_lon"]) for j in jobs])
    dropoffs = np.array([(j["dropoff_lat"], j["dropoff_lon"]) for j in jobs])
    km = distance_matrix_km(at, pickups)
    cost = km / speed
    leg = np.array([haversine_km(a, b) for a, b in zip(pickups, dropoffs, strict=True)]) / speed
    left = np.array([(d.shift_ends_at - now).total_seconds() for d in drivers])
    capacity = np.array([d.capacity_kg for d in drivers])
    weight = np.array([j["weight_kg"] for j in jobs])
    bad = km > settings.dispatch_max_pickup_km
    bad |= capacity[:, None] < weight[None, :]
    bad |= cost + leg[None, :] + settings.dispatch_handling_s > left[:, None]
    for jcol, job in enumerate(jobs):
        types = job["vehicle_types"]
        if types:
            allowed = set(types)
            bad[:, jcol] |= np.array([d.vehicle_type not in allowed for d in drivers])
    index = {d.driver_id: i for i, d in enumerate(drivers)}
    columns = {j["job_id"]: c for c, j in enumerate(jobs)}
    for job_id, driver_id in refused:
        if driver_id in index and job_id in columns:
            bad[index[driver_id], columns[job_id]] = True
    cost[bad] = np.inf
    return cost


#: Driver-job pairs above which a round's assignment runs as a Ray task rather than in this process.
_REMOTE_CELLS = 250_000


async def _solve(cost: np.ndarray) -> list[tuple[int, int]]:
    """The assignment: a Ray task when connected to Ray and the round is large (the compute runs where the
    cluster has room); in a thread of this process otherwise, where a small round takes milliseconds and
    never waits behind the cluster's queue of long tasks (route solves, training folds)."""
    import ray

    if ray.is_initialized() and cost.size > _REMOTE_CELLS:
        from nexus_ray.compute import remote

        pairs: list[tuple[int, int]] = await remote(assignment.assign, num_cpus=1).remote(cost)
        return pairs
    return await asyncio.to_thread(assignment.assign, cost)


async def run_round(*, source: DriverSource | None = None) -> RoundRead | None:
    """One dispatch round (see the module) over the drivers of ``source`` (default: driver-app-backend).
    Returns the round's record, or None when there is no driver source."""
    source = source or DriverApp()
    settings = settings_of(DispatchSettings)
    began = time.perf_counter()
    started_at = datetime.now(UTC)
    round_id = uuid.uuid4()
    p = await postgres.pool()
    expired = await p.fetch(
        """WITH e AS (UPDATE dispatch_offers SET status = 'expired'
                      WHERE status = 'pending' AND expires_at <= now() RETURNING id, job_id)
           UPDATE dispatch_jobs j SET status = 'open', updated_at = now() FROM e
           WHERE j.job_id = e.job_id AND j.status = 'offered' RETURNING e.id""")
    for r in expired:
        await _withdraw(source, str(r["id"]))
    drivers = await source.available()
    if drivers is None:
        return None
    busy = {r["driver_id"] for r in await p.fetch("SELECT driver_id FROM dispatch_offers WHERE status = 'pending'")}
    drivers = [d for d in drivers if d.driver_id not in busy]
    jobs = await p.fetch(
        f"""SELECT {_JOB} FROM dispatch_jobs WHERE status = 'open' AND (ready_at IS NULL OR ready_at <= now())
            ORDER BY created_at, job_id LIMIT $1""", settings.dispatch_max_jobs)
    refused = {(r["job_id"], r["driver_id"]) for r in await p.fetch(
        "SELECT job_id, driver_id FROM dispatch_offers WHERE job_id = ANY($1::text[]) "
        "AND status IN ('rejected', 'expired')", [j["job_id"] for j in jobs])}
    cost = cost_matrix(drivers, jobs, now=started_at, settings=settings, refused=refused)
    solve_began = time.perf_counter()
    pairs = await _solve(cost) if drivers and jobs else []
    solve_ms = 1000 * (time.perf_counter() - solve_began)
    made: list[tuple[UUID, DriverState, asyncpg.Record, float]] = []
    expires_at = started_at + timedelta(seconds=settings.dispatch_offer_ttl_s)
    for i, jcol in pairs:
        offer = await _record_offer(round_id, drivers[i], jobs[jcol], float(cost[i, jcol]), expires_at)
        if offer is not None:
            made.append((offer, drivers[i], jobs[jcol], float(cost[i, jcol])))
    for offer_id, driver, job, _ in made:
        await _send(source, offer_id, driver, job, expires_at)
    record = RoundRead(
        id=round_id, runner=RUNNER, started_at=started_at, drivers=len(drivers), jobs=len(jobs), offers=len(made),
        expired=len(expired), cost_s=sum(c for *_, c in made), solve_ms=solve_ms,
        total_ms=1000 * (time.perf_counter() - began), note="" if len(made) == len(pairs) else
        f"{len(pairs) - len(made)} pairs taken by a concurrent round",
    )
    await p.execute(
        """INSERT INTO dispatch_rounds (id, runner, started_at, drivers, jobs, offers, expired, cost_s, solve_ms,
                                        total_ms, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        record.id, record.runner, record.started_at, record.drivers, record.jobs, record.offers, record.expired,
        record.cost_s, record.solve_ms, record.total_ms, record.note,
    )
    return record


async def _record_offer(round_id: UUID, driver: DriverState, job: asyncpg.Record, cost_s: float,
                        expires_at: datetime) -> UUID | None:
    """The offer and the job's move to ``offered`` together, or nothing when a concurrent round got there first."""
    offer_id = uuid.uuid4()
    try:
        async with postgres.transaction() as conn:
            moved = await conn.fetchval(
                """UPDATE dispatch_jobs SET status = 'offered', offers_made = offers_made + 1, updated_at = now()
                   WHERE job_id = $1 AND status = 'open' RETURNING job_id""", job["job_id"])
            if moved is None:
                return None
            await conn.execute(
                """INSERT INTO dispatch_offers (id, job_id, driver_id, round_id, status, cost_s, expires_at)
                   VALUES ($1, $2, $3, $4, 'pending', $5, $6)""",
                offer_id, job["job_id"], driver.driver_id, round_id, cost_s, expires_at,
            )
    except asyncpg.UniqueViolationError:  # the driver (or job) holds a live offer from a concurrent round
        return None
    return offer_id


async def _send(source: DriverSource, offer_id: UUID, driver: DriverState, job: asyncpg.Record,
                expires_at: datetime) -> None:
    """Deliver the offer to the driver (driver-app-backend's ``offer_job``); an offer it refuses is withdrawn."""
    payload = _job(job).model_dump(mode="json", exclude={"offers"})
    try:
        await source.offer(driver_id=driver.driver_id, offer_id=str(offer_id), job=payload, expires_at=expires_at)
    except Exception as exc:
        log.warning("offer %s to driver %s not delivered: %s", offer_id, driver.driver_id, type(exc).__name__)
        async with postgres.transaction() as conn:
            gone = await conn.fetchval(
                "UPDATE dispatch_offers SET status = 'withdrawn', answered_at = now() "
                "WHERE id = $1 AND status = 'pending' RETURNING job_id", offer_id)
            if gone is not None:
                await _reopen(conn, gone)


# -- the loop ---------------------------------------------------------------------------------------------------


async def hold_lease(*, holder: str = RUNNER, seconds: float | None = None, name: str = LEASE) -> bool:
    """Take or renew the lease ``name`` (the loop's) for ``holder``; False while another holder's lease is live."""
    ttl = seconds if seconds is not None else settings_of(DispatchSettings).dispatch_lease_s
    got = await (await postgres.pool()).fetchval(
        """INSERT INTO dispatch_leases (name, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
           ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
           WHERE dispatch_leases.holder = EXCLUDED.holder OR dispatch_leases.expires_at < now()
           RETURNING holder""",
        name, holder, ttl,
    )
    return got == holder


async def _round_if_leased() -> None:
    if await hold_lease():
        await run_round()


#: Background: run a round every ``dispatch_interval_s`` (sooner when kicked) while holding the lease.
dispatch_forever = loops.every("dispatch round", _round_if_leased,
                               lambda: settings_of(DispatchSettings).dispatch_interval_s, wake=_kick)
