"""Fleets in their actors on the session's Ray cluster: telemetry over HTTP, nearest and area queries, a killed
FleetActor that comes back with its positions, and a driver's socket locations reaching the fleet."""

from __future__ import annotations

import json
import uuid

import pytest
import ray
from websockets.asyncio.client import connect

from nexus_ray.actors import NAMESPACE, actor_name
from nexus_ray.actors.fleet import FleetActor
from nexus_ray.deployments.kit.calls import call
from nexus_ray.stores.cache import redis_client

pytestmark = pytest.mark.e2e

FLEET = "/logistics/v1/fleet"
DRIVERS = "/logistics/v1/drivers"


@pytest.fixture(scope="module")
def ops(bearer):
    return bearer("logistics:fleet:*", "logistics:drivers:*", subject="fleet-ops")


async def new_fleet(client, headers, fleet_id: str) -> None:
    r = await client.post(f"{FLEET}/fleets", headers=headers, json={"fleet_id": fleet_id, "name": fleet_id})
    assert r.status_code == 201, r.text


async def test_telemetry_queries_and_a_killed_actor_resuming_with_its_positions(ray_client, ops, until):
    client, fleet_id = ray_client, f"e2e-{uuid.uuid4().hex[:8]}"
    await new_fleet(client, ops, fleet_id)
    for vehicle_id, status in (("near", "available"), ("nearer-busy", "busy"), ("far", "available")):
        r = await client.put(f"{FLEET}/fleets/{fleet_id}/vehicles/{vehicle_id}", headers=ops,
                             json={"vehicle_type": "van", "capacity_kg": 500, "status": status})
        assert r.status_code == 200, r.text
    batch = {"updates": [{"vehicle_id": "near", "lat": 52.521, "lon": 13.401, "ts": 100},
                         {"vehicle_id": "nearer-busy", "lat": 52.5201, "lon": 13.4001, "ts": 100},
                         {"vehicle_id": "far", "lat": 52.60, "lon": 13.60, "ts": 100},
                         {"vehicle_id": "ghost", "lat": 1, "lon": 1}]}
    r = await client.post(f"{FLEET}/fleets/{fleet_id}/telemetry", headers=ops, json=batch)
    assert r.json() == {"applied": 3, "stale": 0, "unknown": 1}

    async def nearest(**params) -> list[str]:
        r = await client.get(f"{FLEET}/fleets/{fleet_id}/nearest", headers=ops,
                             params={"lat": 52.52, "lon": 13.40, "k": 3, **params})
        assert r.status_code == 200, r.text
        return [v["vehicle_id"] for v in r.json()]

    assert await nearest() == ["near", "far"]
    assert await nearest(available_only="false") == ["nearer-busy", "near", "far"]
    r = await client.post(f"{FLEET}/fleets/{fleet_id}/area", headers=ops,
                          json={"bbox": [52.50, 13.39, 52.53, 13.41]})
    assert sorted(v["vehicle_id"] for v in r.json()) == ["near", "nearer-busy"]

    # The positions reach their periodic snapshot (no journal entry per update), then the actor is killed.
    await until(lambda: redis_client().exists(f"nexus:actor:fleet:{fleet_id}:positions"), within_s=30)
    handle = ray.get_actor(actor_name(FleetActor, fleet_id), namespace=NAMESPACE)
    pid = await handle.pid.remote()
    ray.kill(handle, no_restart=False)

    async def restarted() -> bool:
        # The kill is asynchronous: a call right after it may still reach the old process (a full run saw the
        # same pid), and one in between gets an error; the restart is when another process answers.
        try:
            return await handle.pid.remote() != pid
        except ray.exceptions.RayActorError:
            return False

    await until(restarted, within_s=60)
    assert await nearest(available_only="false") == ["nearer-busy", "near", "far"]
    r = await client.get(f"{FLEET}/fleets/{fleet_id}/vehicles/near", headers=ops)
    assert (r.json()["lat"], r.json()["lon"], r.json()["status"]) == (52.521, 13.401, "available")
    await call("puabo-nexus-fleet-manager", "ingest", fleet_id=fleet_id,
               updates=[{"vehicle_id": "far", "lat": 52.5202, "lon": 13.4002, "ts": 101}])
    assert await nearest() == ["far", "near"]


async def test_locations_over_the_driver_socket_reach_the_fleet(ray_client, served, bearer, ops):
    client, fleet_id = ray_client, f"e2e-{uuid.uuid4().hex[:8]}"
    await new_fleet(client, ops, fleet_id)
    subject = f"drv-{uuid.uuid4().hex[:8]}"
    headers = bearer("logistics:drivers:read", "logistics:drivers:write", subject=subject)
    r = await client.post(f"{DRIVERS}/drivers", headers=ops, json={
        "user_id": subject, "name": "Cy", "fleet_id": fleet_id, "vehicle_id": "cargo-1", "vehicle_type": "bike",
        "capacity_kg": 40})
    driver_id = r.json()["id"]
    assert (await client.post(f"{DRIVERS}/drivers/{driver_id}/shifts", headers=headers, json={})).status_code == 201

    token = headers["Authorization"].split()[1]
    async with connect(served + f"{DRIVERS}/drivers/me/live", subprotocols=["nexus.bearer", token]) as ws:
        await ws.send(json.dumps({"type": "location", "lat": 48.8566, "lon": 2.3522}))
        ack = json.loads(await ws.recv())
        assert ack == {"type": "location.ack", "applied": 1}
        available = await call("puabo-nexus-driver-app-backend", "available_drivers", fleet_id=fleet_id)
        assert [(str(d.driver_id), d.lat, d.lon, d.connected) for d in available] == [
            (driver_id, 48.8566, 2.3522, True)]

    r = await client.get(f"{FLEET}/fleets/{fleet_id}/vehicles/cargo-1", headers=ops)
    vehicle = r.json()
    assert (vehicle["lat"], vehicle["lon"], vehicle["status"], vehicle["driver_id"]) == (
        48.8566, 2.3522, "available", driver_id)
