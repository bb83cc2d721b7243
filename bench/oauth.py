"""Throughput of token issuance at auth-service-v2: client credentials grants per second, and latency.

    .venv/bin/python bench/oauth.py [--duration 20] [--concurrency 32]             # in-process
    .venv/bin/python bench/oauth.py --api http://127.0.0.1:8000 [--duration 20]    # a running platform

In-process (the default) starts the embedded stores in a temporary data directory and builds the
``auth`` namespace app in this process (the edge and the provider exactly as deployed, without
Serve); the load generator (httpx over the ASGI transport) shares the process and its cores, so
the figure is a floor for one replica. With ``--api`` it registers a client through the admin API
of a running platform (``nexus up``; admin token from ``nexus token``) and posts over HTTP.

Every request is a full issuance: the per-address rate limit (Redis; the limit itself raised so it
never refuses), client lookup and secret check (PostgreSQL, keyed hash), scope narrowing, and an
ES256 access token signed by key-service with its audit row written before the response (group
commit). Only 200s count as issued; any other status is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from scratch import scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "/auth/v2/oauth/token"
CLIENTS = "/auth/v2/oauth/clients"
SCOPE = "platform:gateway:read"


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def load(make_client, *, client_id: str, secret: str, seconds: float, concurrency: int) -> dict:
    """``concurrency`` workers request client credentials tokens back to back for ``seconds``."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    clients = [make_client(w) for w in range(concurrency)]
    body = {"grant_type": "client_credentials", "scope": SCOPE}

    async def worker(c) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await c.post(TOKEN, data=body, auth=(client_id, secret))
            latencies.append(time.perf_counter() - t0)
            statuses[r.status_code] += 1

    # Warm up (key load, connection pools), then measure.
    stop = time.monotonic() + 2
    await asyncio.gather(*(worker(c) for c in clients))
    statuses.clear()
    latencies.clear()
    started = time.monotonic()
    stop = started + seconds
    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "issued_per_s": round(statuses[200] / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


async def in_process(args) -> dict:
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.auth.oauth import service
    from nexus_ray.edge.security import Principal

    get_settings.cache_clear()
    app = build_app("auth")
    async with app.router.lifespan_context(app):
        admin = Principal("bench-admin", frozenset({"*"}), "user")
        client = await service.register_client(
            name="bench", client_type="confidential", redirect_uris=[], allowed_scopes=[SCOPE],
            grant_types=["client_credentials"], grantor=admin,
        )

        def make_client(w: int) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, root_path="/auth", client=(f"10.9.{w // 250}.{w % 250 + 1}", 1))
            return httpx.AsyncClient(transport=transport, base_url="http://bench")

        return await load(make_client, client_id=client["client_id"], secret=client["client_secret"],
                          seconds=args.duration, concurrency=args.concurrency)


async def over_http(args, admin: str) -> dict:
    """Against a running platform; ``admin`` is a token with auth:oauth:admin and the scope to allow."""
    import httpx

    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.api, timeout=30) as c:
        r = await c.post(CLIENTS, headers={"Authorization": f"Bearer {admin}"}, json={
            "name": f"bench-{uuid.uuid4().hex[:6]}", "client_type": "confidential", "allowed_scopes": [SCOPE],
            "grant_types": ["client_credentials"]})
        r.raise_for_status()
        client = r.json()
    shared = httpx.AsyncClient(base_url=args.api, timeout=30, limits=limits)
    try:
        result = await load(lambda _w: _Borrowed(shared), client_id=client["client_id"],
                            secret=client["client_secret"], seconds=args.duration, concurrency=args.concurrency)
    finally:
        await shared.aclose()
        async with httpx.AsyncClient(base_url=args.api, timeout=30) as c:
            await c.delete(f"{CLIENTS}/{client['client_id']}", headers={"Authorization": f"Bearer {admin}"})
    return result


class _Borrowed:
    """A worker's handle on the shared connection pool (closing it leaves the pool open)."""

    def __init__(self, client) -> None:
        self.post = client.post

    async def aclose(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured (after 2 s of warm-up)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent requests in flight")
    parser.add_argument("--api", default="", help="base URL of a running platform; default: in-process")
    args = parser.parse_args()

    if args.api:
        admin = subprocess.run(
            [str(ROOT / ".venv/bin/nexus"), "token", "bench-admin", "-s", "auth:oauth:admin", "-s", SCOPE],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        results = asyncio.run(over_http(args, admin))
        results["mode"] = f"http {args.api}"
    else:
        # The limiter still runs (a Redis round trip per request); it just never refuses.
        with scratch_stores("nexus-bench-oauth-", NEXUS_RATE_LIMIT_PER_ADDRESS=str(10**9),
                            NEXUS_RATE_LIMIT_PER_PRINCIPAL=str(10**9)):
            results = asyncio.run(in_process(args))
        results["mode"] = "in-process (auth app + load generator in one process, embedded stores)"
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
