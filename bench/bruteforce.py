"""Brute force against password login: how many password guesses per second an attacker gets.

    .venv/bin/python bench/bruteforce.py [--duration 20] [--concurrency 16]

Starts the embedded stores in a temporary data directory, builds the ``auth`` namespace app
in this process (the edge and auth-service exactly as deployed, without Serve) and attacks
``POST /auth/v1/auth/login`` from many concurrent connections:

* ``unprotected``: lockout and address throttling switched off. The server's own bound:
  argon2id verifications per second on this machine.
* ``one_account_one_address``: one account, wrong passwords, one address; default settings.
* ``one_account_many_addresses``: one account, every request from a new address (a botnet),
  so only the account lockout stands in the way; lockout shortened to ``--lockout-s``
  to observe several lockout cycles in the run.
* ``one_address_many_accounts``: password spraying from one address, a new username each
  request, so only the per-address throttle stands in the way; its window shortened to
  ``--address-window-s``.

A *guess* is a password the server actually verified (argon2id), counted by wrapping the
verifier; refused requests (423/429) cost a Redis round trip and guess nothing. For the
shortened runs the sustained rate at the default settings is extrapolated from the
measured one: guesses per cycle / cycle length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from scratch import scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOGIN = "/auth/v1/auth/login"


async def attack(app, *, seconds: float, concurrency: int, target) -> dict:
    """``concurrency`` workers post logins for ``seconds``; ``target(worker, i)`` -> (username, address)."""
    import httpx

    from nexus_ray.deployments.auth.auth import passwords

    clients: dict[str, httpx.AsyncClient] = {}

    def client_for(address: str) -> httpx.AsyncClient:
        if address not in clients:
            transport = httpx.ASGITransport(app=app, root_path="/auth", client=(address, 40000))
            clients[address] = httpx.AsyncClient(transport=transport, base_url="http://bench")
        return clients[address]

    real_verify = passwords.verify_password
    guesses = 0

    async def counting_verify(stored, password):
        nonlocal guesses
        guesses += 1
        return await real_verify(stored, password)

    passwords.verify_password = counting_verify
    statuses: Counter[int] = Counter()
    latencies: dict[int, list[float]] = {}
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            username, address = target(w, i)
            t0 = time.perf_counter()
            r = await client_for(address).post(LOGIN, json={"username": username, "password": f"guess {w}-{i}"})
            latencies.setdefault(r.status_code, []).append(time.perf_counter() - t0)
            statuses[r.status_code] += 1
            i += 1
            if len(clients) > 256:  # one-shot addresses: do not keep a client per address
                for c in list(clients.values())[:128]:
                    await c.aclose()
                for a in list(clients)[:128]:
                    del clients[a]

    started = time.monotonic()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        passwords.verify_password = real_verify
        for c in clients.values():
            await c.aclose()
    elapsed = time.monotonic() - started
    requests = sum(statuses.values())
    return {
        "seconds": round(elapsed, 1),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "p50_ms": {str(k): round(statistics.median(v) * 1000, 1) for k, v in sorted(latencies.items())},
        "guesses": guesses,
        "guesses_per_s": round(guesses / elapsed, 3),
    }


async def run(args) -> dict:
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.auth.auth.settings import settings as auth_settings

    get_settings.cache_clear()
    s = auth_settings()
    defaults = {k: getattr(s, k) for k in ("auth_lockout_threshold", "auth_lockout_window_s",
                                           "auth_lockout_duration_s", "auth_address_max_failures",
                                           "auth_address_window_s", "password_time_cost", "password_memory_kib",
                                           "password_parallelism")}

    import httpx

    from nexus_ray.deployments.app import build_app

    app = build_app("auth")
    results: dict = {"settings": defaults, "concurrency": args.concurrency}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, root_path="/auth", client=("192.0.2.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
            victim = f"victim{uuid.uuid4().hex[:8]}"
            r = await c.post("/auth/v1/users", json={"username": victim, "email": f"{victim}@example.org",
                                                     "password": f"the real one {uuid.uuid4().hex}"})
            assert r.status_code == 201, r.text

        def reset(**overrides):
            for k, v in {**defaults, **overrides}.items():
                setattr(s, k, v)

        def fresh_address() -> str:
            n = uuid.uuid4().int
            return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"

        reset(auth_lockout_threshold=10**9, auth_address_max_failures=10**9)
        one = fresh_address()
        results["unprotected"] = await attack(
            app, seconds=min(args.duration, 10), concurrency=args.concurrency, target=lambda w, i: (victim, one)
        )

        reset()
        await _release(victim)
        one = fresh_address()
        results["one_account_one_address"] = await attack(
            app, seconds=args.duration, concurrency=args.concurrency, target=lambda w, i: (victim, one)
        )

        reset(auth_lockout_duration_s=args.lockout_s)
        await _release(victim)
        measured = await attack(
            app, seconds=args.duration, concurrency=args.concurrency, target=lambda w, i: (victim, fresh_address())
        )
        measured["lockout_duration_s"] = args.lockout_s
        measured["sustained_guesses_per_s_at_defaults"] = round(
            defaults["auth_lockout_threshold"] / defaults["auth_lockout_duration_s"], 4
        )
        measured["guesses_per_hour_at_defaults"] = round(
            3600 * defaults["auth_lockout_threshold"] / defaults["auth_lockout_duration_s"], 1
        )
        results["one_account_many_addresses"] = measured

        reset(auth_address_window_s=args.address_window_s)
        sprayer = fresh_address()
        measured = await attack(
            app, seconds=args.duration, concurrency=args.concurrency,
            target=lambda w, i: (f"spray{w}x{i}x{uuid.uuid4().hex[:6]}", sprayer),
        )
        measured["address_window_s"] = args.address_window_s
        measured["sustained_guesses_per_s_at_defaults"] = round(
            defaults["auth_address_max_failures"] / defaults["auth_address_window_s"], 4
        )
        measured["guesses_per_hour_at_defaults"] = round(
            3600 * defaults["auth_address_max_failures"] / defaults["auth_address_window_s"], 1
        )
        results["one_address_many_accounts"] = measured
        reset()
    return results


async def _release(username: str) -> None:
    from nexus_ray.deployments.auth.auth import lockout

    await lockout.release(username=username)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent attacker connections")
    parser.add_argument("--lockout-s", type=int, default=5, help="lockout duration in the botnet scenario")
    parser.add_argument("--address-window-s", type=int, default=10, help="address window in the spraying scenario")
    args = parser.parse_args()

    with scratch_stores("nexus-bench-bruteforce-"):
        results = asyncio.run(run(args))
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
