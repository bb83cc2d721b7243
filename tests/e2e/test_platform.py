"""The platform as users reach it: nine Serve applications behind one entrypoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from nexus_ray.catalog import NAMESPACES, SERVICES

pytestmark = pytest.mark.e2e


def test_all_applications_running(platform, ray_cluster):
    from nexus_ray.runtime import cluster

    status = cluster.serve_status(ray_cluster.dashboard_url)
    assert status == {ns: "RUNNING" for ns in NAMESPACES}


def test_every_service_ready_through_the_entrypoint(platform):
    with httpx.Client(base_url=platform, timeout=10) as c:
        for s in SERVICES:
            r = c.get(f"{s.path()}/health/ready")
            assert r.status_code == 200 and r.json()["ready"], (s.name, r.text)


def test_the_heads_processes_include_its_ray_client_server(ray_cluster):
    """`nexus down` stops what `processes` finds; Ray's client server names neither the temp dir nor a parent."""
    from nexus_ray.runtime import cluster

    titles = [" ".join(p.cmdline()) for p in cluster.processes(ray_cluster.temp_dir)]
    assert [t for t in titles if "ray.util.client.server" in t]
    assert [t for t in titles if "gcs_server" in t]


def test_no_serve_process_of_the_local_head_loads_pandas(platform, ray_cluster):
    """Serve would import pandas into each of its processes; a local head leaves it out (cluster.WITHOUT_PANDAS)."""
    from nexus_ray.runtime import cluster

    serve = {}
    for p in cluster.processes(ray_cluster.temp_dir):
        title = " ".join(p.cmdline())
        if any(kind in title for kind in ("ServeReplica:", "ServeController", "ProxyActor", "HAProxyManager")):
            serve[p.pid] = title
    assert sum("ServeReplica:" in title for title in serve.values()) >= len(NAMESPACES)
    with_pandas = [title for pid, title in serve.items() if "/pandas/_libs/" in Path(f"/proc/{pid}/maps").read_text()]
    assert with_pandas == []


def test_directory_uses_handles_across_namespaces(platform, bearer):
    with httpx.Client(base_url=platform, timeout=30) as c:
        r = c.get("/platform/v1/gateway/services", headers=bearer("platform:gateway:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 44 and body["ready"] == 44
    assert {s["namespace"] for s in body["services"]} == set(NAMESPACES)


def test_refusals_are_problems_through_serve(platform, bearer):
    with httpx.Client(base_url=platform, timeout=10) as c:
        r = c.get("/platform/v1/gateway/services")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
        r = c.get("/platform/v1/gateway/services", headers=bearer("commerce:orders:read"))
        assert r.status_code == 403
        r = c.get("/commerce/v9/order-processor/health/live")
        assert r.status_code == 404 and "v9" in r.json()["detail"]
        r = c.get("/platform/health/live", headers={"X-Request-ID": "e2e-trace-1"})
        assert r.headers.get_list("x-request-id") == ["e2e-trace-1"]


def test_status_shows_health_only_services_as_such(platform):
    """`nexus status`: the services with API routes read "ready", the ones that answer only health "health only"."""
    from typer.testing import CliRunner

    from nexus_ray.cli import app

    result = CliRunner().invoke(app, ["status", "--api", platform], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 3}
    assert "ready" in rows["auth-service"] and "health only" not in rows["auth-service"]
    assert "ready" in rows["puabo-nuki-order-processor"] and "health only" not in rows["puabo-nuki-order-processor"]
    assert "health only" in rows["glitch"]
    assert "44/44 services ready" in result.output and "health only" in result.output.splitlines()[-1]


async def test_request_metrics_exported(platform, ray_cluster, bearer, until, edge_knows):
    await edge_knows(platform)
    async with httpx.AsyncClient(base_url=platform, timeout=10) as c:
        for _ in range(5):
            await c.get("/platform/v1/gateway/notice", headers=bearer("platform:gateway:read"))

        async def exported_ok():
            # Series appear one export after another (a 401 of an earlier request may come first):
            # wait for the one counting these answers.
            text = (await c.get(ray_cluster.metrics_url)).text
            return [
                line for line in text.splitlines()
                if line.startswith("ray_nexus_http_requests_total") and 'namespace="platform"' in line
                and 'route="/v1/gateway/notice"' in line and 'service="gateway"' in line
                and 'status="200"' in line
            ]

        lines = await until(exported_ok, within_s=90, every=2)
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1


async def test_killed_ingress_replica_recovers(platform, ray_cluster, bearer, until):
    from nexus_ray.runtime import cluster

    headers = bearer("platform:gateway:read")
    url = f"{platform}/platform/v1/gateway/notice"
    async with httpx.AsyncClient(timeout=10) as c:
        assert (await c.get(url, headers=headers)).status_code == 200
        victim = next(p for p in cluster.processes(ray_cluster.temp_dir)
                      if "ServeReplica:platform" in " ".join(p.cmdline()))
        os.kill(victim.pid, signal.SIGKILL)
        await until(lambda: not victim.is_running(), within_s=10)

        async def served_by_new_replica():
            try:
                ok = (await c.get(url, headers=headers, timeout=5)).status_code == 200
            except httpx.HTTPError:
                return False
            replicas = [p for p in cluster.processes(ray_cluster.temp_dir)
                        if "ServeReplica:platform" in " ".join(p.cmdline())]
            return ok and replicas and all(p.pid != victim.pid for p in replicas)

        await until(served_by_new_replica, within_s=120, every=0.5)
        codes = [(await c.get(url, headers=headers)).status_code for _ in range(20)]
    assert codes == [200] * 20
    await until(lambda: cluster.serve_status(ray_cluster.dashboard_url).get("platform") == "RUNNING", within_s=60)
