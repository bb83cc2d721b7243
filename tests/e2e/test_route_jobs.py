"""route-optimizer's asynchronous jobs through the API, solved as Ray tasks: submit (202), wait, GeoJSON,
Solomon text in, cancel of a running solve (its Ray task stopped), ownership and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_ray.deployments.logistics.routes import service

pytestmark = pytest.mark.e2e

API = "/logistics/v1/routes"
SOLOMON = Path(__file__).resolve().parent.parent / "data" / "solomon"

TINY = {
    "name": "tiny", "vehicles": 3, "capacity": 10,
    "depot": {"id": "depot", "x": 0, "y": 0, "due": 200},
    "customers": [
        {"id": "a", "x": 10, "y": 0, "demand": 4, "ready": 0, "due": 50, "service": 5},
        {"id": "b", "x": 10, "y": 10, "demand": 4, "ready": 20, "due": 80, "service": 5},
        {"id": "c", "x": 0, "y": 10, "demand": 4, "ready": 0, "due": 150, "service": 5},
        {"id": "d", "x": -10, "y": 5, "demand": 5, "ready": 0, "due": 150, "service": 5},
    ],
}


def solomon_text(name: str, customers: int) -> str:
    lines = (SOLOMON / f"{name}.txt").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("0 "))
    return "\n".join(lines[: header + 1 + customers])


async def test_submit_wait_and_read_routes_as_geojson(ray_client, bearer, until):
    me = bearer("logistics:routes:read", "logistics:routes:write", subject="planner-1")
    r = await ray_client.post(f"{API}/jobs", json={"problem": TINY, "time_limit_s": 0.5}, headers=me)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and r.headers["Location"].endswith(job["id"])
    done = (await ray_client.get(f"{API}/jobs/{job['id']}/wait", params={"timeout_s": 60}, headers=me)).json()
    assert done["status"] == "succeeded", done
    solution = done["solution"]
    assert solution["feasible"] and sorted(v["id"] for r in solution["routes"] for v in r["visits"]) == list("abcd")
    geo = (await ray_client.get(f"{API}/jobs/{job['id']}/geojson", headers=me)).json()
    assert geo["type"] == "FeatureCollection"
    assert sum(f["geometry"]["type"] == "LineString" for f in geo["features"]) == solution["vehicles"]

    text = solomon_text("C101", 10)
    r = await ray_client.post(f"{API}/jobs", json={"solomon": text, "backend": "ortools", "time_limit_s": 0.5},
                              headers=me)
    assert r.status_code == 202, r.text
    done = (await ray_client.get(f"{API}/jobs/{r.json()['id']}/wait", params={"timeout_s": 60}, headers=me)).json()
    assert done["status"] == "succeeded" and done["solution"]["backend"] == "ortools" and done["customers"] == 10

    other = bearer("logistics:routes:read", "logistics:routes:write", subject="planner-2")
    assert (await ray_client.get(f"{API}/jobs/{job['id']}", headers=other)).status_code == 404
    both = await ray_client.post(f"{API}/jobs", json={"problem": TINY, "solomon": text}, headers=me)
    assert both.status_code == 422
    bad = await ray_client.post(f"{API}/jobs", json={"solomon": "not an instance"}, headers=me)
    assert bad.status_code == 422 and "solomon" in bad.text


async def test_cancel_stops_a_running_solve(ray_client, bearer, until):
    me = bearer("logistics:routes:read", "logistics:routes:write", subject="planner-3")
    body = {"solomon": solomon_text("RC201", 25), "time_limit_s": 120}
    job = (await ray_client.post(f"{API}/jobs", json=body, headers=me)).json()

    async def running() -> bool:
        got = (await ray_client.get(f"{API}/jobs/{job['id']}", headers=me)).json()
        return got["status"] == "running"

    await until(running, within_s=60, every=0.2)
    r = await ray_client.post(f"{API}/jobs/{job['id']}/cancel", headers=me)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # The runner that holds the task sees it and cancels the Ray task (its supervisor ends).
    from uuid import UUID

    await until(lambda: UUID(job["id"]) not in service._tasks, within_s=30)
    again = await ray_client.post(f"{API}/jobs/{job['id']}/cancel", headers=me)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    final = (await ray_client.get(f"{API}/jobs/{job['id']}", headers=me)).json()
    assert final["status"] == "cancelled" and final["solution"] is None
    listed = (await ray_client.get(f"{API}/jobs", params={"status": "cancelled"}, headers=me)).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
