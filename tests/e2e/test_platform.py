"""The platform as users reach it: nine Serve applications behind one entrypoint."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psutil
import pytest

from nexus_ray.catalog import NAMESPACES, SERVICES

pytestmark = pytest.mark.e2e


def _poll(condition, timeout: float = 60.0, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def test_all_applications_running(platform, ray_cluster):
    from nexus_ray.runtime import cluster

    status = cluster.serve_status(ray_cluster.dashboard_url)
    assert status == {ns: "RUNNING" for ns in NAMESPACES}


def test_every_service_ready_through_the_entrypoint(platform):
    with httpx.Client(base_url=platform, timeout=10) as c:
        for s in SERVICES:
            r = c.get(f"{s.path()}/health/ready")
            assert r.status_code == 200 and r.json()["ready"], (s.name, r.text)


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


def test_request_metrics_exported(platform, ray_cluster, bearer):
    with httpx.Client(base_url=platform, timeout=10) as c:
        for _ in range(5):
            c.get("/platform/v1/gateway/notice", headers=bearer("platform:gateway:read"))

    def exported():
        text = httpx.get(ray_cluster.metrics_url, timeout=10).text
        return [
            line for line in text.splitlines()
            if line.startswith("ray_nexus_http_requests_total") and 'namespace="platform"' in line
            and 'route="/v1/gateway/notice"' in line and 'service="gateway"' in line
        ]

    lines = _poll(exported, timeout=90, interval=2)
    assert any('status="200"' in line for line in lines)


def test_killed_ingress_replica_recovers(platform, ray_cluster, bearer):
    from nexus_ray.runtime import cluster

    headers = bearer("platform:gateway:read")
    url = f"{platform}/platform/v1/gateway/notice"
    assert httpx.get(url, headers=headers, timeout=10).status_code == 200
    victim = next(p for p in cluster.processes(ray_cluster.temp_dir)
                  if "ServeReplica:platform" in " ".join(p.cmdline()))
    os.kill(victim.pid, signal.SIGKILL)
    psutil.wait_procs([victim], timeout=10)

    def served_by_new_replica():
        try:
            ok = httpx.get(url, headers=headers, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False
        replicas = [p for p in cluster.processes(ray_cluster.temp_dir)
                    if "ServeReplica:platform" in " ".join(p.cmdline())]
        return ok and replicas and all(p.pid != victim.pid for p in replicas)

    _poll(served_by_new_replica, timeout=120, interval=0.5)
    codes = [httpx.get(url, headers=headers, timeout=10).status_code for _ in range(20)]
    assert codes == [200] * 20
    _poll(lambda: cluster.serve_status(ray_cluster.dashboard_url).get("platform") == "RUNNING", timeout=60)
