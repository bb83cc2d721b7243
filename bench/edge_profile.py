"""Where a request's time goes inside one ingress: the platform app driven in-process.

    python bench/edge_profile.py [--requests 5000] [--profile]

Starts embedded stores in a temporary directory, builds the ``platform`` namespace app,
and sends authenticated ``GET /v1/gateway/notice`` requests straight into its ASGI
callable (no sockets, no Serve), sequentially: the result is the edge + route cost per
request in microseconds of one core. With ``--profile``, the top functions by
cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import time

from scratch import scratch_stores  # bench/ is on sys.path when a bench runs


async def drive(n: int, profile: bool) -> None:
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import tokens

    wire_edge()

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
        prof = cProfile.Profile() if profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        for _ in range(n):
            await app(dict(scope), receive, send)
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{n} requests: {wall / n * 1e6:.0f} us wall, {cpu / n * 1e6:.0f} us CPU per request "
              f"(limits {get_settings().rate_limit_per_principal}/min per principal)")
        if prof:
            pstats.Stats(prof).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    with scratch_stores("nexus-edge-profile-", NEXUS_RATE_LIMIT_PER_PRINCIPAL="100000000",
                        NEXUS_RATE_LIMIT_PER_ADDRESS="100000000", NEXUS_ENVIRONMENT="test",
                        NEXUS_MASTER_KEY=secrets.token_urlsafe(48)):
        asyncio.run(drive(args.requests, args.profile))


if __name__ == "__main__":
    main()
