"""ai-dispatch on the real stores: one live offer per job and per driver under concurrent rounds (the
database's rule), re-offer to another driver after a rejection or an expiry, assignment with its event,
constraints in the cost, the lease, and the operators' routes.

Drivers come from the shipped StaticDrivers source (driver-app-backend is another service); the jobs sit
in a spot of the South Pacific so that no other test's drivers are ever within reach of them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from nexus_ray.deployments.logistics import dispatch
from nexus_ray.deployments.logistics.dispatch import service
from nexus_ray.deployments.logistics.dispatch.drivers import StaticDrivers
from nexus_ray.deployments.logistics.dispatch.models import DriverState
from nexus_ray.stores import postgres

pytestmark = pytest.mark.integration

API = "/logistics/v1/dispatch"
HOME = (-47.0, -120.0)


def driver(name: str, dlat: float = 0.0, *, kind: str = "van", capacity: float = 500, hours: float = 8) -> DriverState:
    return DriverState(driver_id=f"{name}-{uuid.uuid4().hex[:6]}", lat=HOME[0] + dlat, lon=HOME[1],
                       vehicle_type=kind, capacity_kg=capacity,
                       shift_ends_at=datetime.now(UTC) + timedelta(hours=hours))


async def submit(dlat: float = 0.0, **extra) -> str:
    job_id = f"job-{uuid.uuid4().hex}"
    await dispatch.submit_job(job_id=job_id, pickup={"lat": HOME[0] + dlat, "lon": HOME[1]},
                              dropoff={"lat": HOME[0] + dlat + 0.01, "lon": HOME[1]}, weight_kg=10,
                              reference={"test": True}, **extra)
    return job_id


async def live_offers(job_ids: list[str]) -> list[asyncpg.Record]:
    return await (await postgres.pool()).fetch(
        "SELECT job_id, driver_id, id FROM dispatch_offers WHERE status = 'pending' AND job_id = ANY($1::text[])",
        job_ids)


async def test_concurrent_rounds_never_make_two_live_offers(migrated):
    jobs = [await submit(0.001 * i) for i in range(6)]
    drivers = [driver(f"d{i}", 0.0015 * i) for i in range(10)]
    sources = [StaticDrivers(drivers) for _ in range(4)]
    rounds = await asyncio.gather(*(service.run_round(source=s) for s in sources))
    live = await live_offers(jobs)
    assert sorted(r["job_id"] for r in live) == sorted(jobs), "every job offered"
    assert len({r["driver_id"] for r in live}) == len(live), "one live offer per driver"
    assert sum(r.offers for r in rounds if r) >= len(jobs)  # other tests' jobs may be offered too, never ours twice
    sent = [o for s in sources for o in s.offers if o["job"]["job_id"] in jobs]
    assert len(sent) == len(jobs), "each job's offer sent once, by the round that recorded it"
    # The database refuses a second live offer for a job outright, whoever writes it.
    with pytest.raises(asyncpg.UniqueViolationError):
        async with postgres.transaction() as conn:
            await conn.execute(
                "INSERT INTO dispatch_offers (id, job_id, driver_id, status, cost_s, expires_at) "
                "VALUES ($1, $2, 'someone-else', 'pending', 1, now() + interval '1 minute')", uuid.uuid4(), jobs[0])


async def test_rejection_reoffers_to_another_driver_and_acceptance_assigns(migrated):
    job = await submit()
    near, far = driver("near", 0.001), driver("far", 0.02)
    source = StaticDrivers([near, far])
    await service.run_round(source=source)
    [first] = await live_offers([job])
    assert first["driver_id"] == near.driver_id  # the cheaper one
    rejected = await dispatch.offer_answered(offer_id=str(first["id"]), driver_id=near.driver_id, accepted=False)
    assert rejected.status == "open"
    await service.run_round(source=source)
    [second] = await live_offers([job])
    assert second["driver_id"] == far.driver_id, "never offered again to the driver who said no"
    accepted = await dispatch.offer_answered(offer_id=str(second["id"]), driver_id=far.driver_id, accepted=True)
    assert (accepted.status, accepted.driver_id) == ("assigned", far.driver_id)
    again = await dispatch.offer_answered(offer_id=str(second["id"]), driver_id=far.driver_id, accepted=True)
    assert again.status == "assigned"  # the same answer again is a replay
    payload = await (await postgres.pool()).fetchval(
        "SELECT payload FROM outbox WHERE topic = 'dispatch.assigned' AND key = $1", job)
    assert payload == {"job_id": job, "driver_id": far.driver_id, "offer_id": str(second["id"])}
    await service.run_round(source=source)
    assert await live_offers([job]) == [], "an assigned job is not offered again"


async def test_an_expired_offer_goes_to_the_next_driver(migrated):
    job = await submit()
    near, far = driver("near", 0.001), driver("far", 0.02)
    source = StaticDrivers([near, far])
    await service.run_round(source=source)
    [first] = await live_offers([job])
    await (await postgres.pool()).execute(
        "UPDATE dispatch_offers SET expires_at = now() - interval '1 second' WHERE id = $1", first["id"])
    await service.run_round(source=source)  # it (or the app's own loop, whichever comes first) takes it back
    status = await (await postgres.pool()).fetchval("SELECT status FROM dispatch_offers WHERE id = $1", first["id"])
    assert status == "expired"
    [second] = await live_offers([job])
    assert second["driver_id"] == far.driver_id
    with pytest.raises(Exception, match="expired"):
        await dispatch.offer_answered(offer_id=str(first["id"]), driver_id=near.driver_id, accepted=True)


async def test_constraints_exclude_pairs(migrated):
    small = await submit(vehicle_types=["bike"])
    d_van, d_bike_weak, d_ending = driver("van"), driver("bike", kind="bike", capacity=5), driver("end", hours=0.05)
    source = StaticDrivers([d_van, d_bike_weak, d_ending])
    await service.run_round(source=source)
    assert await live_offers([small]) == [], "wrong type, too little capacity, shift ending: no one may take it"
    strong = driver("bike2", kind="bike")
    await service.run_round(source=StaticDrivers([strong]))
    [offer] = await live_offers([small])
    assert offer["driver_id"] == strong.driver_id
    cancelled = await dispatch.cancel_job(job_id=small)
    assert cancelled.status == "cancelled" and await live_offers([small]) == []


async def test_one_lease_holder_at_a_time(migrated):
    # A lease of its own name: the app's loop holds the real one meanwhile.
    pool = await postgres.pool()
    name = f"test-lease-{uuid.uuid4().hex}"
    assert await service.hold_lease(holder="replica-a", seconds=30, name=name)
    assert not await service.hold_lease(holder="replica-b", seconds=30, name=name)
    assert await service.hold_lease(holder="replica-a", seconds=30, name=name), "the holder renews"
    await pool.execute("UPDATE dispatch_leases SET expires_at = now() - interval '1 second' WHERE name = $1", name)
    assert await service.hold_lease(holder="replica-b", seconds=30, name=name), "an expired lease is taken over"
    await pool.execute("DELETE FROM dispatch_leases WHERE name = $1", name)


async def test_operator_routes_and_ownership(client, bearer):
    admin = bearer("logistics:dispatch:*", subject="dispatch-ops")
    user = bearer("logistics:dispatch:read", "logistics:dispatch:write", subject="shop-1")
    other = bearer("logistics:dispatch:read", "logistics:dispatch:write", subject="shop-2")
    body = {"job_id": f"http-{uuid.uuid4().hex}", "pickup": {"lat": HOME[0], "lon": HOME[1]},
            "dropoff": {"lat": HOME[0], "lon": HOME[1] + 0.01}, "weight_kg": 3}
    r = await client.post(f"{API}/jobs", json=body, headers=user)
    assert r.status_code == 200, r.text
    assert (await client.post(f"{API}/jobs", json=body, headers=user)).json()["job_id"] == body["job_id"]
    assert (await client.get(f"{API}/jobs/{body['job_id']}", headers=user)).status_code == 200
    assert (await client.get(f"{API}/jobs/{body['job_id']}", headers=other)).status_code == 404
    assert (await client.post(f"{API}/jobs/{body['job_id']}/cancel", headers=other)).status_code == 404
    mine = (await client.get(f"{API}/jobs", headers=user)).json()["items"]
    assert [j["job_id"] for j in mine] == [body["job_id"]]
    bad = await client.post(f"{API}/jobs", json={**body, "weight_kg": -1}, headers=user)
    assert bad.status_code == 422 and "weight_kg" in bad.text
    assert (await client.get(f"{API}/rounds", headers=user)).status_code == 403
    rounds = await client.get(f"{API}/rounds", headers=admin)
    assert rounds.status_code == 200 and all("solve_ms" in x for x in rounds.json()["items"])
    offers = await client.get(f"{API}/offers", params={"status": "pending"}, headers=admin)
    assert offers.status_code == 200
