"""Placement is configuration: a service moves to a deployment of its own and back, its paths unchanged."""

from __future__ import annotations

import httpx
import pytest

from nexus_ray.catalog import Placement
from nexus_ray.runtime import cluster, serve_config

pytestmark = pytest.mark.e2e

SESSIONS = "/platform/v1/sessions/users/placed-user/sessions"
SCOPES = ("platform:sessions:read", "platform:sessions:write")


async def _deployed(c: httpx.AsyncClient, ray_cluster, until, *, dedicated: dict[str, Placement]) -> dict:
    port = int(str(c.base_url).rstrip("/").rsplit(":", 1)[1])
    config = serve_config.build(host="127.0.0.1", port=port, dedicated_services=dedicated)
    cluster.deploy(ray_cluster.dashboard_url, config)
    wanted = {app["name"] for app in config["applications"]}

    def settled():
        apps = cluster.serve_applications(ray_cluster.dashboard_url)
        return apps if set(apps) == wanted and all(a.get("status") == "RUNNING" for a in apps.values()) else None

    apps = await until(settled, within_s=240, every=1.0)

    async def serving():
        try:
            return (await c.get("/platform/health/ready")).status_code == 200
        except httpx.HTTPError:
            return False

    await until(serving, within_s=120, every=0.5)
    return apps


async def _paths(c: httpx.AsyncClient, doc: str) -> set[str]:
    return set((await c.get(doc)).json()["paths"])


async def test_a_service_moves_to_its_own_deployment_and_back(platform, ray_cluster, bearer, until):
    headers = bearer(*SCOPES, subject="placed-user")
    async with httpx.AsyncClient(base_url=platform, timeout=30) as c:
        try:
            apps = await _deployed(c, ray_cluster, until, dedicated={"session-mgr": Placement()})
            assert list(apps["platform-sessions-v1"]["deployments"]) == ["platform-sessions-v1"]
            # The namespace ingress no longer mounts it; its own application does, under the same paths.
            assert not any(p.startswith("/v1/sessions/users") for p in await _paths(c, "/platform/openapi.json"))
            assert "/users/{user_id}/sessions" in await _paths(c, "/platform/v1/sessions/openapi.json")

            async def created():
                r = await c.post(SESSIONS, json={"device": "moved"}, headers=headers)
                return r if r.status_code == 201 else None

            assert (await until(created, within_s=60, every=0.5)).json()["device"] == "moved"
            listed = await c.get(SESSIONS, headers=headers)
            assert listed.status_code == 200 and [s["device"] for s in listed.json()["items"]] == ["moved"]
        finally:
            apps = await _deployed(c, ray_cluster, until, dedicated={})
        assert "platform-sessions-v1" not in apps
        assert any(p.startswith("/v1/sessions/users") for p in await _paths(c, "/platform/openapi.json"))
        listed = await c.get(SESSIONS, headers=headers)
        assert [s["device"] for s in listed.json()["items"]] == ["moved"]  # the state stayed where it lives
        await c.delete(SESSIONS, headers=headers)
