"""route-optimizer's logic: solve jobs kept in PostgreSQL and run as Ray tasks.

A job's life: ``queued`` (written by the API, which answers 202 at once) -> ``running`` (claimed
by one replica's runner with ``FOR UPDATE SKIP LOCKED``, so each queued job is claimed once
whichever replicas race) -> ``succeeded`` / ``failed``; ``cancelled`` from either open state.

The runner (:func:`run_jobs_forever`, a background task of every replica) keeps at most
``routes_parallel`` solves in flight as Ray tasks (:func:`nexus_ray.compute.vrp.solve` through
:func:`nexus_ray.compute.remote`), so many problems are solved in parallel across the cluster.
While one runs, its runner heartbeats the row every ``routes_poll_s`` and reads its status: a
job cancelled through any replica is then stopped with ``ray.cancel`` by the replica that owns
the task. A job whose runner stopped heartbeating (its replica died) is claimed again after
``routes_stale_s``, at most ``routes_max_attempts`` times. Results are written only by the
runner holding the job and only while it is still ``running``, so a cancel always wins over a
result that arrives after it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.compute import vrp
from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NotFound, ValidationFailed
from nexus_ray.stores import postgres

from .models import TERMINAL, JobCreate, JobRead
from .settings import RoutesSettings

log = logging.getLogger(__name__)

RUNNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
"""This process's runner id, written on the jobs it claims."""

_kick = asyncio.Event()
_COLUMNS = ("id, status, name, customers, backend, objective, time_limit_s, owner, created_at, started_at, "
            "finished_at, error, solution")


def _read(row: asyncpg.Record) -> JobRead:
    return JobRead.model_validate(dict(row))


async def submit(*, owner: str, body: JobCreate) -> tuple[JobRead, bool]:
    """Queue a job; returns it and whether it was created now (False: replay of its idempotency key)."""
    settings = settings_of(RoutesSettings)
    if body.time_limit_s > settings.routes_time_limit_max_s:
        raise ValidationFailed.for_field("time_limit_s", f"must be at most {settings.routes_time_limit_max_s:g}")
    problem = body.parsed()
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            f"""INSERT INTO route_jobs (id, owner, status, name, customers, backend, objective, time_limit_s,
                                        problem, idempotency_key)
                VALUES ($1, $2, 'queued', $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (owner, idempotency_key) DO NOTHING RETURNING {_COLUMNS}""",
            uuid.uuid4(), owner, problem.name, len(problem.customers), body.backend, body.objective,
            body.time_limit_s, problem.model_dump(mode="json"), body.idempotency_key,
        )
        if row is None:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM route_jobs WHERE owner = $1 AND idempotency_key = $2",
                owner, body.idempotency_key,
            )
            return _read(row), False
    _kick.set()
    return _read(row), True


def _job_id(job_id: UUID | str) -> UUID:
    try:
        return job_id if isinstance(job_id, UUID) else UUID(job_id)
    except ValueError:
        raise NotFound(f"job {job_id} not found") from None


async def get(*, job_id: UUID | str, caller: str, admin: bool) -> JobRead:
    """The job, if ``caller`` owns it or is an administrator (404 otherwise, also for a malformed id)."""
    job_id = _job_id(job_id)
    row = await (await postgres.pool()).fetchrow(f"SELECT {_COLUMNS} FROM route_jobs WHERE id = $1", job_id)
    if row is None or (row["owner"] != caller and not admin):
        raise NotFound(f"job {job_id} not found")
    return _read(row)


async def problem_of(*, job_id: UUID | str, caller: str, admin: bool) -> tuple[vrp.VrpProblem, JobRead]:
    """The job's problem and the job (404 as :func:`get`)."""
    job_id = _job_id(job_id)
    job = await get(job_id=job_id, caller=caller, admin=admin)
    raw = await (await postgres.pool()).fetchval("SELECT problem FROM route_jobs WHERE id = $1", job_id)
    return vrp.VrpProblem.model_validate(raw), job


async def list_jobs(*, owner: str, status: str | None, page: PageRequest) -> Page[JobRead]:
    """``owner``'s jobs, newest first."""
    after = page.after
    rows = await (await postgres.pool()).fetch(
        f"""SELECT {_COLUMNS} FROM route_jobs
            WHERE owner = $1 AND ($2::text IS NULL OR status = $2)
              AND ($3::timestamptz IS NULL OR (created_at, id) < ($3::timestamptz, $4::uuid))
            ORDER BY created_at DESC, id DESC LIMIT $5""",
        owner, status, None if after is None else _timestamp(after[0]),
        None if after is None else UUID(str(after[-1])), page.fetch_limit,
    )
    return page.of(rows, key=lambda r: [r["created_at"].isoformat(), str(r["id"])], item=_read)


def _timestamp(value: Any) -> Any:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None


async def wait(*, job_id: UUID | str, caller: str, admin: bool, timeout_s: float) -> JobRead:
    """The job once it has ended, or as it is after ``timeout_s`` (long poll)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        job = await get(job_id=job_id, caller=caller, admin=admin)
        if job.status in TERMINAL or loop.time() >= deadline:
            return job
        await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))


async def cancel(*, job_id: UUID | str, caller: str, admin: bool) -> JobRead:
    """Cancel an open job (idempotent: a cancelled job is returned as it is; 409 for one that ended otherwise)."""
    job_id = _job_id(job_id)
    job = await get(job_id=job_id, caller=caller, admin=admin)
    row = await (await postgres.pool()).fetchrow(
        f"""UPDATE route_jobs SET status = 'cancelled', finished_at = now()
            WHERE id = $1 AND status IN ('queued', 'running') RETURNING {_COLUMNS}""",
        job_id,
    )
    if row is not None:
        _kick.set()  # this replica's runner stops the task now if it holds it
        return _read(row)
    job = await get(job_id=job_id, caller=caller, admin=admin)
    if job.status != "cancelled":
        raise Conflict(f"job {job_id} already {job.status}")
    return job


# -- the runner ------------------------------------------------------------------------------------------------

_tasks: dict[UUID, asyncio.Task[None]] = {}


async def run_jobs_forever() -> None:
    """Background: claim queued jobs and run them as Ray tasks while this process is connected to Ray."""
    import ray

    settings = settings_of(RoutesSettings)
    said = False

    async def one_round() -> None:
        nonlocal said
        if ray.is_initialized():
            await _claim(settings)
        elif not said:
            log.info("route-optimizer runner idle: this process is not connected to Ray")
            said = True

    try:
        await loops.repeat("route-optimizer runner round", one_round, settings.routes_poll_s, wake=_kick)
    finally:
        for task in _tasks.values():
            task.cancel()


async def _claim(settings: RoutesSettings) -> None:
    free = settings.routes_parallel - len(_tasks)
    if free <= 0:
        return
    p = await postgres.pool()
    async with p.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE route_jobs SET status = 'failed', finished_at = now(), error = 'gave up after repeated runs'
               WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) AND attempts >= $2""",
            settings.routes_stale_s, settings.routes_max_attempts,
        )
        rows = await conn.fetch(
            """UPDATE route_jobs SET status = 'running', runner = $1, attempts = attempts + 1, heartbeat_at = now(),
                      started_at = coalesce(started_at, now())
               WHERE id IN (SELECT id FROM route_jobs
                            WHERE status = 'queued'
                               OR (status = 'running' AND heartbeat_at < now() - make_interval(secs => $2))
                            ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
               RETURNING id, problem, backend, objective, time_limit_s""",
            RUNNER, settings.routes_stale_s, free,
        )
    for row in rows:
        job_id = row["id"]
        _tasks[job_id] = asyncio.create_task(_supervise(job_id, row, settings), name=f"route-job-{job_id}")


async def _supervise(job_id: UUID, row: asyncpg.Record, settings: RoutesSettings) -> None:
    from nexus_ray.compute import remote

    problem = vrp.VrpProblem.model_validate(row["problem"])
    ref = remote(vrp.solve, num_cpus=1, max_retries=0).remote(
        problem, backend=row["backend"], time_limit_s=row["time_limit_s"], objective=row["objective"]
    )
    result = asyncio.ensure_future(ref)
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=settings.routes_poll_s)
            if done:
                await _finish(job_id, result)
                return
            status = await (await postgres.pool()).fetchval(
                "UPDATE route_jobs SET heartbeat_at = now() WHERE id = $1 AND runner = $2 RETURNING status",
                job_id, RUNNER,
            )
            if status != "running":  # cancelled, or taken over by another runner
                _stop(ref, result)
                log.info("route job %s stopped: %s", job_id, status or "claimed elsewhere")
                return
    except asyncio.CancelledError:
        _stop(ref, result)
        raise
    except Exception as exc:
        log.warning("route job %s supervision failed: %s", job_id, type(exc).__name__)
    finally:
        _tasks.pop(job_id, None)
        _kick.set()  # a slot is free


def _stop(ref: Any, result: asyncio.Future[Any]) -> None:
    """Cancel the solve (``ref``) unless its reply is already in: cancelling a task whose reply Ray is
    handling trips a check that ends this process (ray-project/ray#54846). A solve runs for seconds, so
    the reply and the cancel rarely meet; ``compute.map_tasks``, whose tasks are short, cancels none."""
    import ray

    if not result.done():
        ray.cancel(ref, force=True)


async def _finish(job_id: UUID, result: asyncio.Future[Any]) -> None:
    try:
        solution: vrp.VrpSolution = result.result()
        status, payload, error = "succeeded", solution.model_dump(mode="json"), None
    except Exception as exc:  # the task raised, or its worker died
        cause = getattr(exc, "cause", None) or exc
        status, payload, error = "failed", None, f"{type(cause).__name__}: {str(cause)[:300]}"
    await (await postgres.pool()).execute(
        """UPDATE route_jobs SET status = $3, solution = $4, error = $5, finished_at = now()
           WHERE id = $1 AND runner = $2 AND status = 'running'""",
        job_id, RUNNER, status, payload, error,
    )
