"""FleetActor without Ray, on the session's real Redis and PostgreSQL: telemetry, spatial queries, geofence events,
and what a restart restores (journaled vehicles and fences, positions as of the last positions snapshot)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from nexus_ray.actors.fleet import GEOFENCE_ENTERED, GEOFENCE_EXITED, FleetActor
from nexus_ray.compute.spatial import haversine_to_km, points_in_polygon
from nexus_ray.stores import postgres

pytestmark = pytest.mark.integration

# A square of about 1.1 km around (52.52, 13.40) and a point well outside it.
FENCE = [[52.515, 13.395], [52.525, 13.395], [52.525, 13.405], [52.515, 13.405]]


@pytest.fixture
async def fleet(migrated):
    actor = await FleetActor.open(f"test-{uuid.uuid4().hex[:10]}")
    yield actor
    await actor.close()
    await actor.erase()


def _random_fleet(n: int, seed: int = 7) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"v{i}" for i in range(n)], rng.uniform(52.40, 52.60, n), rng.uniform(13.20, 13.60, n)


async def test_ingest_then_nearest_and_area_match_brute_force(fleet):
    ids, lat, lon = _random_fleet(400)
    busy = set(ids[::3])
    await fleet.upsert_vehicles([{"vehicle_id": v, "status": "busy" if v in busy else "available",
                                  "vehicle_type": "van", "capacity_kg": 500} for v in ids])
    result = await fleet.ingest(ids, lat, lon, [1000.0] * len(ids))
    assert result == {"applied": 400, "stale": 0, "unknown": 0}

    # Stale and unknown readings change nothing.
    again = await fleet.ingest([ids[0], "ghost"], [0.0, 0.0], [0.0, 0.0], [999.0, 1000.0])
    assert again == {"applied": 0, "stale": 1, "unknown": 1}

    q = (52.5, 13.4)
    dist = haversine_to_km(*q, lat, lon)
    available = np.array([v not in busy for v in ids])
    expected = [ids[i] for i in np.argsort(np.where(available, dist, np.inf))[:7]]
    near = fleet.nearest(*q, 7)
    assert [v["vehicle_id"] for v in near] == expected
    assert all(v["status"] == "available" for v in near)
    assert near[0]["distance_km"] == pytest.approx(dist[ids.index(expected[0])])
    assert [v["vehicle_id"] for v in fleet.nearest(*q, 3, available_only=False)] == [
        ids[i] for i in np.argsort(dist)[:3]]

    box = [52.45, 13.30, 52.50, 13.45]
    in_box = {ids[i] for i in range(len(ids)) if box[0] <= lat[i] <= box[2] and box[1] <= lon[i] <= box[3]}
    assert in_box and {v["vehicle_id"] for v in fleet.in_area(bbox=box)} == in_box
    triangle = [[52.42, 13.25], [52.58, 13.30], [52.50, 13.55]]
    inside = points_in_polygon(lat, lon, triangle)
    assert {v["vehicle_id"] for v in fleet.in_area(polygon=triangle)} == {ids[i] for i in np.nonzero(inside)[0]}


async def _crossings(fleet_id: str) -> list[tuple[str, str, str]]:
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT topic, payload FROM outbox WHERE topic = ANY($1::text[]) AND payload->>'fleet_id' = $2 ORDER BY id",
        [GEOFENCE_ENTERED, GEOFENCE_EXITED], fleet_id)
    return [(r["topic"], r["payload"]["vehicle_id"], r["payload"]["geofence_id"]) for r in rows]


async def test_geofence_enter_and_exit_are_events_in_the_outbox(fleet):
    await fleet.upsert_vehicles([{"vehicle_id": "a"}, {"vehicle_id": "b"}])
    await fleet.ingest(["a", "b"], [52.50, 52.60], [13.30, 13.30], [1.0, 1.0])  # both outside
    await fleet.put_geofence("centre", "Mitte", FENCE)
    assert await _crossings(fleet.key) == []

    await fleet.ingest(["a"], [52.52], [13.40], [2.0])              # a enters
    await fleet.ingest(["a", "b"], [52.521, 52.61], [13.401, 13.31], [3.0, 2.0])  # a moves inside: nothing new
    await fleet.ingest(["a"], [52.53], [13.40], [4.0])              # a leaves
    await fleet.ingest(["b"], [52.519], [13.399], [3.0])            # b enters
    assert await _crossings(fleet.key) == [
        (GEOFENCE_ENTERED, "a", "centre"), (GEOFENCE_EXITED, "a", "centre"), (GEOFENCE_ENTERED, "b", "centre")]
    pg = await postgres.pool()
    payload = await pg.fetchval("SELECT payload FROM outbox WHERE topic = $1 AND payload->>'fleet_id' = $2 "
                                "AND payload->>'vehicle_id' = 'b'", GEOFENCE_ENTERED, fleet.key)
    assert payload["geofence_name"] == "Mitte" and payload["ts"] == 3.0


async def test_a_restart_restores_vehicles_fences_and_snapshotted_positions(fleet):
    await fleet.upsert_vehicles([{"vehicle_id": "a", "status": "available"}, {"vehicle_id": "b", "status": "busy"}])
    await fleet.put_geofence("centre", "Mitte", FENCE)
    await fleet.ingest(["a", "b"], [52.52, 52.40], [13.40, 13.10], [1.0, 1.0])
    assert await fleet.snapshot_positions() == 2
    # After the snapshot: one more reading, which a crash now would lose (the documented window).
    await fleet.ingest(["b"], [52.41], [13.11], [2.0])

    again = await FleetActor.open(fleet.key)  # as the restarted actor's constructor does
    try:
        assert again.state["vehicles"]["b"]["status"] == "busy"
        assert [g["geofence_id"] for g in again.geofences()] == ["centre"]
        assert {(v["vehicle_id"], v["lat"], v["ts"]) for v in again.vehicles()} == {("a", 52.52, 1.0),
                                                                                     ("b", 52.40, 1.0)}
        assert [v["vehicle_id"] for v in again.nearest(52.52, 13.40, 5)] == ["a"]
        # Membership came back with the positions: a reading inside the fence again is no new "entered".
        before = await _crossings(fleet.key)
        await again.ingest(["a"], [52.5201], [13.4001], [5.0])
        assert await _crossings(fleet.key) == before
    finally:
        await again.close()


async def test_a_fleet_is_reached_by_its_operator_and_admins_only(client, bearer):
    api = "/logistics/v1/fleet/fleets"
    operator = bearer("logistics:fleet:read", "logistics:fleet:write", subject=f"op-{uuid.uuid4().hex[:6]}")
    stranger = bearer("logistics:fleet:read", "logistics:fleet:write", subject=f"op-{uuid.uuid4().hex[:6]}")
    fleet_id = f"f-{uuid.uuid4().hex[:8]}"
    r = await client.post(api, json={"fleet_id": fleet_id, "name": "Berlin vans"}, headers=operator)
    assert r.status_code == 201 and r.json()["owner"] == operator_subject(operator)
    assert (await client.post(api, json={"fleet_id": fleet_id, "name": "again"}, headers=stranger)).status_code == 409
    assert (await client.get(f"{api}/{fleet_id}", headers=operator)).status_code == 200
    assert [f["fleet_id"] for f in (await client.get(api, headers=operator)).json()["items"]] == [fleet_id]
    assert (await client.get(api, headers=stranger)).json()["items"] == []
    # Refused before the actor or the body is looked at (an empty area query would be a 422).
    for method, path, body in (("GET", "", None), ("GET", "/nearest?lat=1&lon=1", None), ("POST", "/area", {}),
                               ("POST", "/telemetry", {"updates": [{"vehicle_id": "v", "lat": 1, "lon": 1}]}),
                               ("PUT", "/vehicles/v1", {}), ("PUT", "/geofences/g1", {})):
        r = await client.request(method, f"{api}/{fleet_id}{path}", json=body, headers=stranger)
        assert r.status_code == 404, (method, path, r.status_code)
    admin = bearer("logistics:fleet:*", subject="fleet-admin")
    assert (await client.get(f"{api}/{fleet_id}", headers=admin)).status_code == 200
    # A made-up fleet is refused to everyone: naming one must not start an actor.
    assert (await client.get(f"{api}/made-up-{fleet_id}/nearest?lat=1&lon=1", headers=admin)).status_code == 404


def operator_subject(headers: dict[str, str]) -> str:
    import base64
    import json

    payload = headers["Authorization"].split()[1].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
