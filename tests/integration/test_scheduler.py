"""scheduler on the real stores: cron with zones across DST, missed-run policies after (simulated) downtime,
leases (a crashed holder's run is taken over), and many races of two loops on one due schedule."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from nexus_ray.deployments.platform.scheduler import cron, service, tasks
from nexus_ray.deployments.platform.scheduler.models import ScheduleCreate

pytestmark = pytest.mark.integration

API = "/platform/v1/scheduler"
ALL = "platform:scheduler:*"

# -- a counting task: what ran, how often, and how many at once per key --------------------------------------

ran: Counter[str] = Counter()
live: Counter[str] = Counter()
most_live: Counter[str] = Counter()


async def _count(*, key: str, hold_s: float = 0.0) -> None:
    live[key] += 1
    most_live[key] = max(most_live[key], live[key])
    try:
        ran[key] += 1
        await asyncio.sleep(hold_s)  # a task that takes a while, so runs could overlap if leases let them
    finally:
        live[key] -= 1


tasks.register("tests.count", _count)

YEARLY = "0 0 1 1 *"  # far from now: the app's own loop (real clock) never plans these


async def yearly(policy: str = "run_once", *, key: str | None = None, **args) -> tuple:
    key = key or uuid.uuid4().hex
    body = ScheduleCreate(name=f"t-{key}", cron=YEARLY, timezone="Europe/Paris", target_type="task",
                          target="tests.count", args={"key": key, **args}, missed_policy=policy)
    created = await service.create_schedule(caller="sched-tests", body=body, now=datetime.now(UTC))
    return created, key


async def runs_of(schedule_id) -> list[dict]:
    from nexus_ray.stores import postgres

    p = await postgres.pool()
    return [dict(r) for r in await p.fetch(
        "SELECT due_at, trigger, status, attempt, holder, error FROM scheduler_runs WHERE schedule_id = $1 "
        "ORDER BY due_at", schedule_id)]


# -- cron -----------------------------------------------------------------------------------------------------


def test_cron_in_a_zone_fires_once_across_both_dst_changes():
    paris = cron.parse("30 2 * * *", "Europe/Paris")
    # 29 March 2026: 02:00 -> 03:00, so 02:30 does not exist: it fires at the jump (01:00 UTC), once.
    t = paris.next_after(datetime(2026, 3, 28, 12, tzinfo=UTC))
    assert t == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert paris.next_after(t) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)  # 02:30 CEST the next day
    # 25 October 2026: 03:00 -> 02:00, so 02:30 exists twice: it fires at the first one only.
    t = paris.next_after(datetime(2026, 10, 24, 12, tzinfo=UTC))
    assert t == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert paris.next_after(t) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    # Every half hour through New York's fall back: 01:00 and 01:30 once each, then 02:00 EST.
    ny = cron.parse("*/30 * * * *", "America/New_York")
    fired = ny.between(datetime(2026, 11, 1, 4, 50, tzinfo=UTC), datetime(2026, 11, 1, 7, 40, tzinfo=UTC), limit=10)
    assert [f.astimezone(ny.zone).strftime("%H:%M%z") for f in fired] == [
        "01:00-0400", "01:30-0400", "02:00-0500", "02:30-0500"]


def test_cron_fields_and_refusals():
    c = cron.parse("0 9 * * MON-FRI", "UTC")
    t = c.next_after(datetime(2026, 11, 27, 10, tzinfo=UTC))  # a Friday after 09:00
    assert t == datetime(2026, 11, 30, 9, tzinfo=UTC)  # Monday
    assert cron.parse("@daily").next_after(datetime(2026, 1, 1, 0, 0, tzinfo=UTC)) == datetime(2026, 1, 2, tzinfo=UTC)
    for bad in ("* * * *", "61 * * * *", "*/0 * * * *", "5-1 * * * *"):
        with pytest.raises(cron.CronError):
            cron.parse(bad)
    with pytest.raises(cron.CronError):
        cron.parse("* * * * *", "Mars/Olympus")


# -- missed runs after downtime ----------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "started", "skipped"), [("skip", 0, 3), ("run_once", 1, 2), ("run_all", 3, 0)])
async def test_missed_run_policy_after_downtime(migrated, policy, started, skipped):
    schedule, key = await yearly(policy)
    first = schedule.next_due_at
    # The scheduler was down across three due times: it comes back a month after the third.
    back = first.replace(year=first.year + 2) + timedelta(days=30)
    loop = service.Loop()
    await loop.step(now=back, wait=True)
    runs = await runs_of(schedule.id)
    assert len(runs) == 3
    assert sum(r["status"] == "succeeded" for r in runs) == started == ran[key]
    assert sum(r["status"] == "skipped" for r in runs) == skipped
    assert all(r["trigger"] == "missed" for r in runs)
    if policy == "run_once":
        assert runs[-1]["status"] == "succeeded"  # the latest missed time is the one run
    after = await service.get_schedule(schedule_id=schedule.id, caller="x", privileged=True)
    assert after.next_due_at > back  # planned past the downtime: nothing is due again
    assert await loop.step(now=back, wait=True) == 0


async def test_an_on_time_run_is_not_missed(migrated):
    schedule, key = await yearly("skip")
    await service.Loop().step(now=schedule.next_due_at + timedelta(seconds=5), wait=True)
    runs = await runs_of(schedule.id)
    assert [(r["trigger"], r["status"]) for r in runs] == [("schedule", "succeeded")] and ran[key] == 1


# -- leases --------------------------------------------------------------------------------------------------


async def test_a_crashed_holders_run_is_taken_over_after_its_lease_expires(migrated, until):
    schedule, key = await yearly()
    await service.plan(now=schedule.next_due_at)
    crashed = await service.claim(holder="crashed-loop", lease_s=1.0)
    assert crashed is not None and crashed["attempt"] == 1
    # While the lease lives nobody else may take the run (nor any other run of its schedule).
    await service.trigger(schedule_id=schedule.id, caller="x", privileged=True)
    assert await service.claim(holder="other") is None
    # The holder never renews (it crashed): the lease expires and the run is taken over.
    taken = await until(lambda: service.claim(holder="survivor"), within_s=10)
    assert taken["id"] == crashed["id"] and taken["attempt"] == 2
    assert await service.execute(taken, holder="survivor") == "succeeded"
    # The crashed holder cannot record an outcome any more; its renewals fail.
    assert not await service.renew(run=crashed, holder="crashed-loop")
    assert ran[key] == 1


async def test_two_loops_racing_never_start_a_run_twice(migrated):
    loops = [service.Loop(), service.Loop()]
    rounds = 25
    schedules = [await yearly("run_all", hold_s=0.02) for _ in range(rounds)]
    for schedule, _ in schedules:
        # Two due times each (one missed, one on time); both loops tick at once on the same clock.
        now = schedule.next_due_at.replace(year=schedule.next_due_at.year + 1) + timedelta(seconds=1)
        await asyncio.gather(*(loop.step(now=now) for loop in loops))
        for _ in range(50):
            await asyncio.gather(*(loop.step(now=now) for loop in loops))
            if not any(loop.live for loop in loops) and all(
                    r["status"] == "succeeded" for r in await runs_of(schedule.id)):
                break
        await asyncio.gather(*(t for loop in loops for t in list(loop.live)), return_exceptions=True)
    for schedule, key in schedules:
        runs = await runs_of(schedule.id)
        assert [r["status"] for r in runs] == ["succeeded", "succeeded"], runs
        assert ran[key] == 2 and most_live[key] == 1  # each due time once, never two at a time
        assert all(r["attempt"] == 1 for r in runs)


# -- HTTP ----------------------------------------------------------------------------------------------------


async def test_schedules_over_http(client, bearer, until):
    admin = bearer(ALL, subject="sched-admin")
    writer = bearer("platform:scheduler:read", "platform:scheduler:write", subject="sched-writer")
    other = bearer("platform:scheduler:read", "platform:scheduler:write", subject="sched-other")
    key = uuid.uuid4().hex
    body = {"name": f"http-{key}", "cron": "*/5 * * * *", "timezone": "Asia/Kolkata", "target_type": "task",
            "target": "tests.count", "args": {"key": key}, "missed_policy": "skip"}
    r = await client.post(f"{API}/schedules", json={**body, "cron": "61 * * * *"}, headers=writer)
    assert r.status_code == 422 and "cron" in r.text
    r = await client.post(f"{API}/schedules", json={**body, "target": "nope.nothing"}, headers=writer)
    assert r.status_code == 422 and "target" in r.text
    r = await client.post(f"{API}/schedules", json=body, headers=writer)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    assert datetime.fromisoformat(r.json()["next_due_at"]).astimezone(cron.zone("Asia/Kolkata")).minute % 5 == 0
    assert (await client.post(f"{API}/schedules", json=body, headers=writer)).status_code == 409
    assert (await client.get(f"{API}/schedules/{sid}", headers=other)).status_code == 404
    assert (await client.get(f"{API}/schedules/{sid}", headers=admin)).status_code == 200
    r = await client.post(f"{API}/schedules/{sid}/pause", headers=writer)
    assert r.status_code == 200 and r.json()["paused"] is True
    # Triggered by hand: the app's own loop runs it.
    r = await client.post(f"{API}/schedules/{sid}/trigger", headers=writer)
    assert r.status_code == 202 and r.json()["trigger"] == "manual"
    run_id = r.json()["id"]

    async def finished():
        got = await client.get(f"{API}/runs/{run_id}", headers=writer)
        return got.json() if got.json()["status"] == "succeeded" else None

    run = await until(finished, within_s=15)
    assert run["duration_s"] is not None and ran[key] == 1
    r = await client.get(f"{API}/schedules/{sid}/runs", headers=writer)
    assert [x["id"] for x in r.json()["items"]] == [run_id]
    r = await client.post(f"{API}/schedules/{sid}/resume", headers=writer)
    assert r.json()["paused"] is False
    assert (await client.delete(f"{API}/schedules/{sid}", headers=writer)).status_code == 403
    assert (await client.delete(f"{API}/schedules/{sid}", headers=admin)).status_code == 204


async def test_housekeeping_is_the_first_schedule(client, bearer):
    r = await client.get(f"{API}/schedules", headers=bearer(ALL, subject="sched-admin"))
    first = [s for s in r.json()["items"] if s["name"] == "housekeeping"]
    assert first and first[0]["target_type"] == "job" and first[0]["target"] == "housekeeping"
