"""Throughput of billing-service: authorize + capture pairs per second, through the service layer and over HTTP.

    .venv/bin/python bench/billing.py [--duration 10] [--concurrency 16] [--rate 50] [--only service|http|rate]

In-process: starts the embedded stores in a temporary data directory. Every pair is one
``authorize`` (sandbox card pm_card_visa, its own idempotency key) followed by one ``capture``
of the whole amount (another key), so each pair writes two idempotency records, an intent, two
sandbox charge updates, three outbox events and one ledger posting, and posts one transfer to
ledger-mgr (in-process ``call``) after the capture commits -- as in production.

* ``service`` -- :mod:`nexus_ray.deployments.commerce.billing.service` called directly (no HTTP, no edge,
  no background loops): what billing itself costs, ``--concurrency`` pairs in flight (closed loop);
* ``http``    -- the ``commerce`` namespace app built in this process (edge, guards, rate limiter, and its
  background loops: outbox relay, webhook deliverer...), driven by httpx over the ASGI transport, closed loop;
* ``rate``    -- the same app at a fixed rate of ``--rate`` pairs per second (open loop): each pair's latency
  is measured from the moment it was due, so a stall is not hidden by fewer requests being sent.

The load generator shares the process and its cores with the app, so the figures are a floor for one
replica. At the end the ledger's reconciliation report must be clean and the billing accounts must hold
exactly the captured total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scratch import NO_RATE_LIMIT, machine, scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API = "/commerce/v1/billing"
AMOUNT = 1_250


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _summary(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    return {"p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(_percentile(latencies, 99) * 1000, 1)}


async def _closed_loop(pair: Callable[[], Awaitable[bool]], *, concurrency: int, seconds: float) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async def worker() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            ok = await pair()
            latencies.append(time.perf_counter() - t0)
            outcomes["captured" if ok else "failed"] += 1

    stop = time.monotonic() + 2  # warm up: connections, caches, the ledger accounts of the currency
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcomes.clear()
    latencies.clear()
    started = time.monotonic()
    stop = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"seconds": round(elapsed, 1), "in_flight": concurrency, "outcomes": dict(outcomes),
            "pairs_per_s": round(outcomes["captured"] / elapsed, 1), "pair": _summary(latencies)}


async def _open_loop(pair: Callable[[], Awaitable[bool]], *, rate: float, seconds: float) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async def one(due: float) -> None:
        ok = await pair()
        latencies.append(time.monotonic() - due)  # from when it was due, not when it was sent
        outcomes["captured" if ok else "failed"] += 1

    started = time.monotonic()
    tasks = []
    n = int(rate * seconds)
    for i in range(n):
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    return {"rate": rate, "pairs": n, "seconds": round(elapsed, 1), "outcomes": dict(outcomes),
            "answered_per_s": round(outcomes["captured"] / elapsed, 1), "pair": _summary(latencies)}


async def _ledger_check(currency: str, expected: int) -> dict[str, Any]:
    from nexus_ray.deployments.commerce.billing import postings
    from nexus_ray.deployments.commerce.ledger import service as ledger

    accounts = await postings.accounts(currency)
    clearing = (await ledger.balance(account_id=accounts["clearing"])).posted
    payable = (await ledger.balance(account_id=accounts["merchant_payable"])).posted
    return {"reconciliation_clean": (await ledger.reconcile()).clean,
            "ledger_matches_captures": clearing == payable == expected}


async def service_layer(args: argparse.Namespace) -> dict[str, Any]:
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.commerce.billing import service

    get_settings.cache_clear()
    captured = 0

    async def pair() -> bool:
        nonlocal captured
        a = await service.authorize(caller="bench-shop", customer="bench-customer", amount=AMOUNT, currency="USD",
                                    payment_method="pm_card_visa", metadata={}, idempotency_key=uuid.uuid4().hex)
        if a.status != 201:
            return False
        c = await service.capture(caller="bench-shop", privileged=False, intent_id=uuid.UUID(a.body["id"]),
                                  amount=None, idempotency_key=uuid.uuid4().hex)
        captured += AMOUNT if c.ok else 0
        return c.ok

    result = await _closed_loop(pair, concurrency=args.concurrency, seconds=args.duration)
    result.update(await _ledger_check("USD", captured))
    from nexus_ray.deployments.commerce.billing.provider import SandboxProvider, provider
    from nexus_ray.stores import postgres

    sandbox = provider()
    if isinstance(sandbox, SandboxProvider):
        await sandbox.close()
    await postgres.close_pool()
    return result


async def over_http(args: argparse.Namespace, *, rate: float | None) -> dict[str, Any]:
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.edge import tokens

    get_settings.cache_clear()
    app = build_app("commerce")
    captured = 0
    async with app.router.lifespan_context(app):
        await tokens.prepare()
        headers = {"Authorization": f"Bearer {tokens.issue('bench-shop', ['commerce:billing:*'], ttl_s=3600)}"}
        transport = httpx.ASGITransport(app=app, root_path="/commerce", client=("10.9.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as c:

            async def pair() -> bool:
                nonlocal captured
                r = await c.post(f"{API}/payment_intents", json={
                    "amount": AMOUNT, "currency": "USD", "payment_method": "pm_card_visa"},
                    headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
                if r.status_code != 201:
                    return False
                r = await c.post(f"{API}/payment_intents/{r.json()['id']}/capture",
                                 headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
                captured += AMOUNT if r.status_code == 200 else 0
                return r.status_code == 200

            if rate is None:
                result = await _closed_loop(pair, concurrency=args.concurrency, seconds=args.duration)
            else:
                await _closed_loop(pair, concurrency=4, seconds=0)  # the warm-up alone
                result = await _open_loop(pair, rate=rate, seconds=args.duration)
        return {**result, **await _ledger_check("USD", captured)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run (after 2 s warm-up)")
    parser.add_argument("--concurrency", type=int, default=16, help="pairs in flight (closed loop)")
    parser.add_argument("--rate", type=float, default=50.0, help="pairs per second of the open-loop run")
    parser.add_argument("--only", choices=("service", "http", "rate"), help="one run only")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.only is None:
        # Each run in a process of its own, on stores of its own: module state (the provider's pool, cached
        # ledger account ids) belongs to one event loop and one database, and the ledger check is exact.
        for name in ("service", "http", "rate"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name], check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
            results[name] = json.loads(out)[name]
    else:
        run = {"service": lambda: service_layer(args), "http": lambda: over_http(args, rate=None),
               "rate": lambda: over_http(args, rate=args.rate)}[args.only]
        with scratch_stores(f"nexus-bench-billing-{args.only}-", **NO_RATE_LIMIT):
            results[args.only] = asyncio.run(run())
        print(args.only, json.dumps(results[args.only]), file=sys.stderr, flush=True)
    results["machine"] = machine(note="shared machine: other sessions' tests and benches ran at the same time")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
