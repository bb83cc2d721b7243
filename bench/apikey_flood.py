"""A flood of made-up API keys against the edge: what it costs the database pool and the legitimate traffic.

    .venv/bin/python bench/apikey_flood.py [--duration 10] [--concurrency 64] [--max-lookups 4]

Starts the embedded stores in a temporary data directory and builds the ``auth`` namespace app in
this process (the edge exactly as deployed, without Serve). ``--concurrency`` workers send
``GET /auth/v1/users/me`` with a new made-up key each (``nxk_<random id>_<random secret>``) while
four workers send the same request as a real user (a bearer token: the route reads PostgreSQL).
Reported: the flood's statuses, the most pool connections busy at once (sampled every 5 ms),
the API-key cache size, and the legitimate requests' statuses and p50/p99 latency. Run it
with ``--max-lookups 1000`` to see the edge without the bound on look-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from scratch import scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def run(args) -> dict:
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import apikeys, tokens

    wire_edge()
    from nexus_ray.stores import postgres

    get_settings.cache_clear()
    s = get_settings()
    s.api_key_max_lookups = args.max_lookups
    s.rate_limit_per_address = 10**9
    app = build_app("auth")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/auth", client=("192.0.2.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as c:
            user = f"bench{secrets.token_hex(4)}"
            r = await c.post("/auth/v1/users", json={"username": user, "email": f"{user}@example.org",
                                                     "password": f"a real one {secrets.token_hex(8)}"})
            await tokens.prepare()
            real = {"Authorization": f"Bearer {tokens.issue(r.json()['user_id'], ['auth:users:read'])}"}
            pool = await postgres.pool()
            flood, legit, latencies, busy = Counter(), Counter(), [], [0]
            deadline = time.monotonic() + args.duration

            async def attacker() -> None:
                while time.monotonic() < deadline:
                    key = f"nxk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
                    flood[(await c.get("/auth/v1/users/me", headers={"X-API-Key": key})).status_code] += 1

            async def user_() -> None:
                while time.monotonic() < deadline:
                    t = time.perf_counter()
                    status = (await c.get("/auth/v1/users/me", headers=real)).status_code
                    latencies.append(time.perf_counter() - t)
                    legit[status] += 1

            async def sample() -> None:
                while time.monotonic() < deadline:
                    busy[0] = max(busy[0], pool.get_size() - pool.get_idle_size())
                    await asyncio.sleep(0.005)

            await asyncio.gather(*(attacker() for _ in range(args.concurrency)), *(user_() for _ in range(4)),
                                 sample())
            latencies.sort()
            return {
                "max_lookups": args.max_lookups, "pool_max": s.postgres_pool_max, "concurrency": args.concurrency,
                "flood_statuses": dict(sorted(flood.items())),
                "flood_per_s": round(sum(flood.values()) / args.duration),
                "pool_busy_max": busy[0], "api_key_cache_entries": len(apikeys._cache),
                "legit_statuses": dict(sorted(legit.items())),
                "legit_p50_ms": round(statistics.median(latencies) * 1000, 1),
                "legit_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-lookups", type=int, default=4)
    args = parser.parse_args()
    with scratch_stores("nexus-apikey-flood-"):
        print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
