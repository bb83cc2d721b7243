"""scheduler's logic: plan due runs, take them under a lease, run them, record what came of it.

Planning
--------
A schedule keeps ``next_due_at``. Each tick, a loop locks the due schedules (``FOR UPDATE SKIP LOCKED``:
two loops never plan the same schedule at once), lists the due times from ``next_due_at`` up to now,
and records one **run** per due time -- ``UNIQUE (schedule_id, due_at)``, so a due time becomes one run
whatever races to plan it -- then moves ``next_due_at`` past now. A due time older than
``scheduler_misfire_grace_s`` was **missed** (the scheduler was down); the schedule's policy decides:
``skip`` records missed due times as ``skipped`` runs and runs none of them, ``run_once`` runs the last
of them once (unless an on-time run covers it), ``run_all`` runs each (the latest
``scheduler_catchup_max``). Pausing stops planning; resuming plans from now (a pause is not downtime).
The clock is injectable (:func:`plan` takes ``now``), which is how tests simulate downtime.

Leases
------
A run is live while its schedule's row in ``scheduler_leases`` is unexpired. Taking a run inserts that
row (the primary key is the schedule, so at most one live run per schedule, across replicas and
restarts); the holder renews it every third of ``scheduler_lease_s`` and deletes it in the transaction
that records the outcome. A holder that crashes stops renewing: its row expires, and any loop takes
the run over (``attempt`` counts the takers). Nothing a crash leaves behind stays held, unlike a lock
row or a session-bound advisory lock taken by a process that is gone without its connection closing.

Job runs submit ``nexus_ray.jobs.<target>`` with :func:`nexus_ray.runtime.jobs.submit` under the
submission id ``nexus-sched-<run id>``, so a loop that takes over a run finds the job already submitted
instead of starting a second one, and follows it to its end. Task runs call a registered
:mod:`.tasks` callable; a taken-over task runs again (tasks are idempotent). Only a loop whose process
registered a run's task takes that run (:func:`claim`), so a process that lacks it never fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.pages import Page, PageRequest, one_or_404
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, ValidationFailed
from nexus_ray.runtime import jobs
from nexus_ray.stores import postgres

from . import cron, tasks
from .models import RunRead, ScheduleCreate, ScheduleRead
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

_SCHEDULE_COLUMNS = ("id, name, kind, cron, timezone, run_at, target_type, target, args, missed_policy, paused, "
                     "next_due_at, created_by, created_at, updated_at")
_RUN_COLUMNS = ("id, schedule_id, due_at, trigger, status, attempt, submission_id, logs_url, error, started_at, "
                "finished_at, duration_s")
# Due times walked per schedule and tick: a one-minute cron after a week of downtime has 10,080.
_WALK_LIMIT = 20_000


def _now() -> datetime:
    return datetime.now(UTC)


#: The scheduler's clock; tests replace it (or pass ``now``) to simulate downtime.
clock: Callable[[], datetime] = _now


def settings() -> SchedulerSettings:
    return settings_of(SchedulerSettings)


def _schedule(row: asyncpg.Record) -> ScheduleRead:
    return ScheduleRead.model_validate(dict(row))


def _run(row: asyncpg.Record) -> RunRead:
    return RunRead.model_validate(dict(row))


# -- schedules -----------------------------------------------------------------------------------


def _check_target(target_type: str, target: str) -> None:
    if target_type == "task":
        if tasks.get(target) is None:
            raise ValidationFailed.for_field("target", f"no registered task {target!r} (known: {tasks.names()})")
        return
    module = target if target.startswith("nexus_ray.jobs.") else f"nexus_ray.jobs.{target}"
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ValidationFailed.for_field("target", f"no job entry point {module}")


def first_due(body: ScheduleCreate, now: datetime) -> datetime:
    """When a new schedule is first due (422 naming the field that makes it impossible)."""
    if body.cron is not None:
        if body.run_at is not None:
            raise ValidationFailed.for_field("run_at", "a cron schedule has no run_at")
        try:
            expr = cron.parse(body.cron, body.timezone)
        except cron.CronError as exc:
            field = "timezone" if "time zone" in str(exc) else "cron"
            raise ValidationFailed.for_field(field, str(exc)) from None
        return expr.next_after(now)
    if body.run_at is None:
        raise ValidationFailed.for_field("run_at", "a schedule needs cron or run_at", "missing")
    if body.run_at.tzinfo is None:
        raise ValidationFailed.for_field("run_at", "must carry a time zone offset")
    try:
        cron.zone(body.timezone)
    except cron.CronError as exc:
        raise ValidationFailed.for_field("timezone", str(exc)) from None
    return body.run_at.astimezone(UTC)


async def create_schedule(*, caller: str, body: ScheduleCreate, now: datetime | None = None) -> ScheduleRead:
    """A new schedule, planned from ``now``; 409 when its name is taken."""
    _check_target(body.target_type, body.target)
    due = first_due(body, now or clock())
    p = await postgres.pool()
    try:
        row = await p.fetchrow(
            f"INSERT INTO scheduler_schedules (id, name, kind, cron, timezone, run_at, target_type, target, args, "
            f"missed_policy, next_due_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            f"RETURNING {_SCHEDULE_COLUMNS}",
            uuid.uuid4(), body.name, "cron" if body.cron else "once", body.cron, body.timezone, body.run_at,
            body.target_type, body.target, body.args, body.missed_policy, due, caller)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a schedule named {body.name!r} exists", extra={"field": "name"}) from None
    assert row is not None
    return _schedule(row)


async def list_schedules(*, caller: str, privileged: bool, page: PageRequest) -> Page[ScheduleRead]:
    """Schedules by name: all of them for an administrator, the caller's own otherwise."""
    p = await postgres.pool()
    rows = await p.fetch(
        f"SELECT {_SCHEDULE_COLUMNS} FROM scheduler_schedules WHERE ($1::text IS NULL OR created_by = $1) "
        f"AND ($2::text IS NULL OR name > $2) ORDER BY name LIMIT $3",
        None if privileged else caller, page.after_value(0), page.fetch_limit)
    return page.of(rows, key=lambda r: (r["name"],), item=_schedule)


async def get_schedule(*, schedule_id: UUID, caller: str, privileged: bool) -> ScheduleRead:
    p = await postgres.pool()
    row = await p.fetchrow(
        f"SELECT {_SCHEDULE_COLUMNS} FROM scheduler_schedules WHERE id = $1 AND ($2::text IS NULL OR created_by = $2)",
        schedule_id, None if privileged else caller)
    return _schedule(await one_or_404(row, "schedule", schedule_id))


async def set_paused(*, schedule_id: UUID, paused: bool, caller: str, privileged: bool,
                     now: datetime | None = None) -> ScheduleRead:
    """Pause (no more runs are planned) or resume (planned again from now); idempotent."""
    current = await get_schedule(schedule_id=schedule_id, caller=caller, privileged=privileged)
    if current.paused == paused:
        return current
    due: datetime | None = None
    if not paused:
        now = now or clock()
        if current.cron is not None:
            due = cron.parse(current.cron, current.timezone).next_after(now)
        elif current.next_due_at is not None:
            due = current.next_due_at
    p = await postgres.pool()
    row = await p.fetchrow(
        f"UPDATE scheduler_schedules SET paused = $2, next_due_at = CASE WHEN $2 THEN next_due_at ELSE $3 END, "
        f"updated_at = now() WHERE id = $1 RETURNING {_SCHEDULE_COLUMNS}", schedule_id, paused, due)
    return _schedule(await one_or_404(row, "schedule", schedule_id))


async def delete_schedule(*, schedule_id: UUID, caller: str, privileged: bool) -> None:
    await get_schedule(schedule_id=schedule_id, caller=caller, privileged=privileged)
    p = await postgres.pool()
    await p.execute("DELETE FROM scheduler_schedules WHERE id = $1", schedule_id)


async def trigger(*, schedule_id: UUID, caller: str, privileged: bool, now: datetime | None = None) -> RunRead:
    """A run now, besides the planned ones (it waits for a live run of the schedule to end)."""
    await get_schedule(schedule_id=schedule_id, caller=caller, privileged=privileged)
    p = await postgres.pool()
    row = await p.fetchrow(
        f"INSERT INTO scheduler_runs (id, schedule_id, due_at, trigger, status) VALUES ($1, $2, $3, 'manual', "
        f"'pending') ON CONFLICT (schedule_id, due_at) DO NOTHING RETURNING {_RUN_COLUMNS}",
        uuid.uuid4(), schedule_id, now or clock())
    if row is None:
        raise Conflict("a run of this schedule is due at this very instant; try again")
    return _run(row)


async def list_runs(*, schedule_id: UUID, caller: str, privileged: bool, page: PageRequest) -> Page[RunRead]:
    """A schedule's runs, latest due first."""
    await get_schedule(schedule_id=schedule_id, caller=caller, privileged=privileged)
    p = await postgres.pool()
    after = page.after_value(0)
    rows = await p.fetch(
        f"SELECT {_RUN_COLUMNS} FROM scheduler_runs WHERE schedule_id = $1 "
        f"AND ($2::timestamptz IS NULL OR (due_at, id) < ($2, $3)) ORDER BY due_at DESC, id DESC LIMIT $4",
        schedule_id, datetime.fromisoformat(after) if after else None,
        UUID(page.after_value(1)) if after else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["due_at"].isoformat(), str(r["id"])), item=_run)


async def get_run(*, run_id: UUID, caller: str, privileged: bool) -> RunRead:
    p = await postgres.pool()
    row = await p.fetchrow(
        f"SELECT {postgres.qualified('r', _RUN_COLUMNS)} FROM scheduler_runs r "
        f"JOIN scheduler_schedules s ON s.id = r.schedule_id WHERE r.id = $1 "
        f"AND ($2::text IS NULL OR s.created_by = $2)", run_id, None if privileged else caller)
    return _run(await one_or_404(row, "run", run_id))


# -- planning ------------------------------------------------------------------------------------


def _decide(policy: str, dues: list[datetime], now: datetime, grace_s: float, cap: int
            ) -> tuple[list[tuple[datetime, str]], list[datetime]]:
    """(due times to run with their trigger, due times recorded as skipped) for one schedule's due times."""
    edge = now - timedelta(seconds=grace_s)
    on_time = [d for d in dues if d >= edge]
    missed = [d for d in dues if d < edge]
    run: list[tuple[datetime, str]] = [(d, "schedule") for d in on_time]
    skipped: list[datetime] = []
    if policy == "run_all":
        run = [(d, "missed") for d in missed[-cap:]] + run
        skipped = missed[:-cap] if len(missed) > cap else []
    elif policy == "run_once" and missed and not on_time:
        run = [(missed[-1], "missed")]
        skipped = missed[:-1]
    else:
        skipped = missed
    return run, skipped[-cap:]


async def plan(*, now: datetime | None = None) -> int:
    """Record the runs of every due schedule as of ``now``; returns how many runs it started (pending)."""
    now = now or clock()
    s = settings()
    created = 0
    async with postgres.transaction() as conn:
        rows = await conn.fetch(
            "SELECT id, kind, cron, timezone, run_at, missed_policy, next_due_at FROM scheduler_schedules "
            "WHERE NOT paused AND (next_due_at <= $1 OR (kind = 'cron' AND next_due_at IS NULL)) "
            "ORDER BY next_due_at NULLS FIRST LIMIT 200 FOR UPDATE SKIP LOCKED", now)
        for row in rows:
            expr = cron.parse(row["cron"], row["timezone"]) if row["kind"] == "cron" else None
            if row["next_due_at"] is None:  # seeded by a migration: plan from now
                assert expr is not None
                await conn.execute("UPDATE scheduler_schedules SET next_due_at = $2 WHERE id = $1",
                                   row["id"], expr.next_after(now))
                continue
            dues = (expr.between(row["next_due_at"], now, limit=_WALK_LIMIT) if expr is not None
                    else [row["next_due_at"]])
            to_run, to_skip = _decide(row["missed_policy"], dues, now, s.scheduler_misfire_grace_s,
                                      s.scheduler_catchup_max)
            if to_run:
                done = await conn.fetch(
                    "INSERT INTO scheduler_runs (id, schedule_id, due_at, trigger, status) "
                    "SELECT gen_random_uuid(), $1, d, t, 'pending' FROM unnest($2::timestamptz[], $3::text[]) AS "
                    "u(d, t) ON CONFLICT (schedule_id, due_at) DO NOTHING RETURNING id",
                    row["id"], [d for d, _ in to_run], [t for _, t in to_run])
                created += len(done)
            if to_skip:
                await conn.execute(
                    "INSERT INTO scheduler_runs (id, schedule_id, due_at, trigger, status, finished_at, error) "
                    "SELECT gen_random_uuid(), $1, d, 'missed', 'skipped', now(), 'missed while the scheduler "
                    "was down' FROM unnest($2::timestamptz[]) AS u(d) ON CONFLICT (schedule_id, due_at) DO NOTHING",
                    row["id"], to_skip)
            last = dues[-1] if dues else now
            next_due = expr.next_after(max(now, last)) if expr is not None else None
            await conn.execute("UPDATE scheduler_schedules SET next_due_at = $2, updated_at = now() WHERE id = $1",
                               row["id"], next_due)
            if to_skip:
                log.warning("schedule %s: %d missed due times skipped (policy %s)", row["id"], len(to_skip),
                            row["missed_policy"])
    return created


# -- leases and runs -----------------------------------------------------------------------------


def new_holder() -> str:
    """A name for one scheduler loop: host, process, and a nonce (two loops in one process differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def claim(*, holder: str, lease_s: float | None = None,
                known_tasks: Collection[str] | None = None) -> asyncpg.Record | None:
    """Take a run whose schedule has no live lease: lease it, mark it running; None if there is none.

    Runs taken over from a crashed holder come first (they were started), then the oldest due. A task
    run is taken only by a loop whose process registered that task (``known_tasks``, by default this
    process's :func:`.tasks.names`): loops in processes that do not know it (another application's
    replicas, an older release) leave it to one that does instead of failing it. Job runs are taken by
    any loop.
    """
    lease_s = lease_s if lease_s is not None else settings().scheduler_lease_s
    known = sorted(known_tasks) if known_tasks is not None else tasks.names()
    async with postgres.transaction() as conn:
        run = await conn.fetchrow(
            "SELECT r.id, r.schedule_id FROM scheduler_runs r JOIN scheduler_schedules s ON s.id = r.schedule_id "
            "WHERE r.status IN ('pending', 'running') AND (s.target_type <> 'task' OR s.target = ANY($1::text[])) "
            "AND NOT EXISTS (SELECT 1 FROM scheduler_leases l WHERE l.schedule_id = r.schedule_id "
            "AND l.expires_at > now()) ORDER BY r.status = 'running' DESC, r.due_at, r.id LIMIT 1 "
            "FOR UPDATE OF r SKIP LOCKED", known)
        if run is None:
            return None
        # The primary key arbitrates between loops that locked different runs of one schedule: the
        # second waits for the first's commit and then finds a live lease, which it may not replace.
        leased = await conn.fetchval(
            "INSERT INTO scheduler_leases (schedule_id, run_id, holder, expires_at) "
            "VALUES ($1, $2, $3, now() + make_interval(secs => $4)) ON CONFLICT (schedule_id) DO UPDATE SET "
            "run_id = EXCLUDED.run_id, holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at "
            "WHERE scheduler_leases.expires_at <= now() RETURNING run_id",
            run["schedule_id"], run["id"], holder, lease_s)
        if leased is None:
            return None
        return await conn.fetchrow(
            "UPDATE scheduler_runs r SET status = 'running', attempt = r.attempt + 1, holder = $2, "
            "started_at = coalesce(r.started_at, now()) FROM scheduler_schedules s WHERE r.id = $1 "
            "AND s.id = r.schedule_id RETURNING r.id, r.schedule_id, r.attempt, r.submission_id, s.name, "
            "s.target_type, s.target, s.args", run["id"], holder)


async def renew(*, run: asyncpg.Record, holder: str, lease_s: float | None = None) -> bool:
    """Extend the lease on ``run``; False when it is no longer ours (it expired and another loop took it)."""
    lease_s = lease_s if lease_s is not None else settings().scheduler_lease_s
    p = await postgres.pool()
    return bool(await p.fetchval(
        "UPDATE scheduler_leases SET expires_at = now() + make_interval(secs => $4) WHERE schedule_id = $1 "
        "AND run_id = $2 AND holder = $3 RETURNING true", run["schedule_id"], run["id"], holder, lease_s))


async def _finish(run: asyncpg.Record, holder: str, status: str, error: str | None, duration_s: float | None
                  ) -> bool:
    async with postgres.transaction() as conn:
        mine = await conn.fetchval(
            "DELETE FROM scheduler_leases WHERE schedule_id = $1 AND run_id = $2 AND holder = $3 RETURNING true",
            run["schedule_id"], run["id"], holder)
        if not mine:
            return False  # taken over: the new holder records the outcome
        await conn.execute(
            "UPDATE scheduler_runs SET status = $2, error = $3, duration_s = $4, finished_at = now() WHERE id = $1",
            run["id"], status, error, duration_s)
    return True


class _LeaseLost(Exception):
    pass


async def _keep_leased(run: asyncpg.Record, holder: str, lease_s: float) -> None:
    while True:
        await asyncio.sleep(lease_s / 3)
        if not await renew(run=run, holder=holder, lease_s=lease_s):
            raise _LeaseLost(str(run["id"]))


async def _run_job(run: asyncpg.Record) -> tuple[str, str | None, float | None]:
    argv = [str(a) for a in (run["args"] or {}).get("argv", [])]
    submission_id = run["submission_id"] or f"nexus-sched-{run['id']}"
    submission_id = await asyncio.to_thread(
        jobs.submit, run["target"], argv, submission_id=submission_id,
        metadata={"schedule": run["name"], "run_id": str(run["id"])})
    p = await postgres.pool()
    await p.execute("UPDATE scheduler_runs SET submission_id = $2, logs_url = $3 WHERE id = $1", run["id"],
                    submission_id, jobs.logs_url(submission_id))
    poll_s = settings().scheduler_job_poll_s
    while True:
        info = await asyncio.to_thread(jobs.info, submission_id)
        if info.terminal:
            if info.status == "SUCCEEDED":
                return "succeeded", None, info.duration_s
            return "failed", f"{info.status}: {info.message}"[:2000], info.duration_s
        await asyncio.sleep(poll_s)


async def _run_task(run: asyncpg.Record) -> tuple[str, str | None, float | None]:
    fn = tasks.get(run["target"])
    if fn is None:
        return "failed", f"no registered task {run['target']!r} in this process", None
    began = time.monotonic()
    await fn(**(run["args"] or {}))
    return "succeeded", None, time.monotonic() - began


async def execute(run: asyncpg.Record, *, holder: str, lease_s: float | None = None) -> str | None:
    """Carry a claimed run to its end under its lease; the status recorded, or None when the lease was lost."""
    lease_s = lease_s if lease_s is not None else settings().scheduler_lease_s
    keeper = asyncio.create_task(_keep_leased(run, holder, lease_s))
    work = asyncio.create_task(_run_job(run) if run["target_type"] == "job" else _run_task(run))
    began = time.monotonic()
    try:
        await asyncio.wait({keeper, work}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        keeper.cancel()
        if not work.done():
            work.cancel()  # the lease is lost: whoever holds it now carries the run
        with contextlib.suppress(BaseException):
            await keeper
    if not work.done() or work.cancelled():
        log.warning("run %s: lease lost to another loop", run["id"])
        return None
    exc = work.exception()
    outcome: tuple[str, str | None, float | None]
    if exc is not None:
        outcome = ("failed", f"{type(exc).__name__}: {exc}"[:2000], time.monotonic() - began)
    else:
        outcome = work.result()
    status, error, duration = outcome
    if not await _finish(run, holder, status, error, duration):
        return None
    log.info("run %s of schedule %s: %s", run["id"], run["name"], status)
    return status


class Loop:
    """One scheduler loop: plans, claims and carries runs; any number may run, in any processes."""

    def __init__(self, holder: str | None = None) -> None:
        self.holder = holder or new_holder()
        self.live: set[asyncio.Task[Any]] = set()

    async def step(self, *, now: datetime | None = None, wait: bool = False) -> int:
        """One tick: plan, then take runs up to the concurrency; returns how many it took.

        ``wait``: carry the taken runs to their end, and take again until nothing is left to take (the
        runs of one schedule go one after another, as their lease allows).
        """
        await plan(now=now)
        taken = 0
        while True:
            before = taken
            limit = settings().scheduler_concurrency
            while len(self.live) < limit:
                run = await claim(holder=self.holder)
                if run is None:
                    break
                taken += 1
                task = asyncio.create_task(execute(run, holder=self.holder))
                self.live.add(task)
                task.add_done_callback(self.live.discard)
            if not wait or (taken == before and not self.live):
                return taken
            await asyncio.gather(*self.live, return_exceptions=True)

    async def run_forever(self) -> None:
        try:
            await loops.repeat("scheduler tick", self.step, settings().scheduler_tick_s)
        finally:
            for task in list(self.live):
                task.cancel()


async def run_forever() -> None:
    """Background: this process's scheduler loop (off with ``NEXUS_SCHEDULER_ENABLED=false``)."""
    if not settings().scheduler_enabled:
        return
    await Loop().run_forever()


async def purge_runs(*, conn: asyncpg.Connection, older_than_days: int) -> int:
    """Delete finished runs older than ``older_than_days`` (the housekeeping job calls it)."""
    done = await conn.fetch(
        "DELETE FROM scheduler_runs WHERE status IN ('succeeded', 'failed', 'skipped') "
        "AND finished_at < now() - make_interval(days => $1) RETURNING 1", older_than_days)
    return len(done)


__all__ = ["Loop", "claim", "create_schedule", "execute", "plan", "purge_runs", "run_forever"]
