"""Where a request's time goes inside one ingress: the platform app driven in-process.

    python bench/edge_profile.py [--requests 5000] [--concurrency 1] [--profile]

Starts embedded stores in a temporary directory, builds the ``platform`` namespace app,
and sends authenticated ``GET /v1/gateway/notice`` requests straight into its ASGI
callable (no sockets, no Serve), ``--concurrency`` at a time (1: one after another): the result
is the edge + route cost per request in microseconds of one core, this process's and Redis's (the
edge's one store call a request: its rate limits and the token's revocation keys). With
``--profile``, the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import time

import psutil
from scratch import scratch_stores  # bench/ is on sys.path when a bench runs


async def drive(n: int, concurrency: int, profile: bool) -> None:
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import tokens

    wire_edge()
    # The store's redis-server renames itself "redis-server HOST:PORT".
    port = os.environ["NEXUS_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    redis = [p for p in psutil.process_iter() if p.name() == "redis-server" and f":{port}" in " ".join(p.cmdline())]

    app = build_app("platform")
    async with app.router.lifespan_context(app):
        await tokens.prepare()
        token = tokens.issue("bench", ["platform:gateway:read"], ttl_s=3600)
        headers = [(b"authorization", f"Bearer {token}".encode()), (b"host", b"bench")]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/v1/gateway/notice", "raw_path": b"/v1/gateway/notice",
                 "root_path": "", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
                 "server": ("127.0.0.1", 8000)}
        statuses: list[int] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        for _ in range(200):  # warm caches (JWKS, scripts, pools)
            await app(dict(scope), receive, send)
        assert set(statuses) == {200}, set(statuses)
        async def one_by_one(count: int) -> None:
            for _ in range(count):
                await app(dict(scope), receive, send)

        def redis_cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in redis)

        prof = cProfile.Profile() if profile else None
        t0, c0, r0 = time.perf_counter(), time.process_time(), redis_cpu()
        if prof:
            prof.enable()
        await asyncio.gather(*(one_by_one(n // concurrency) for _ in range(concurrency)))
        if prof:
            prof.disable()
        wall, cpu, rcpu = time.perf_counter() - t0, time.process_time() - c0, redis_cpu() - r0
        n = n // concurrency * concurrency
        assert set(statuses) == {200}, set(statuses)
        print(f"{n} requests, {concurrency} at a time: {wall / n * 1e6:.0f} us wall, {cpu / n * 1e6:.0f} us CPU per "
              f"request, Redis {rcpu / n * 1e6:.0f} us (limits {get_settings().rate_limit_per_principal}/min per "
              "principal)")
        if prof:
            pstats.Stats(prof).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    with scratch_stores("nexus-edge-profile-", NEXUS_RATE_LIMIT_PER_PRINCIPAL="100000000",
                        NEXUS_RATE_LIMIT_PER_ADDRESS="100000000", NEXUS_ENVIRONMENT="test",
                        NEXUS_MASTER_KEY=secrets.token_urlsafe(48)):
        asyncio.run(drive(args.requests, args.concurrency, args.profile))


if __name__ == "__main__":
    main()
