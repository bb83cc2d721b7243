"""Throughput of inventory-mgr: concurrent reservations per second on one hot SKU and spread over many, 0 oversold.

    .venv/bin/python bench/inventory.py [--duration 10] [--concurrency 32] [--skus 1000] [--core]

In-process, as bench/ledger.py: starts the embedded stores in a temporary data directory and builds the
``commerce`` namespace app in this process (edge and inventory-mgr as deployed, without Serve); the load
generator (httpx over the ASGI transport) shares the process and its cores, so the figures are a floor for
one replica. With ``--core`` the runs call :mod:`nexus_ray.deployments.commerce.inventory.service` directly.

Runs, each on fresh SKUs in two warehouses:

* ``hot``    -- every reservation is 1 unit of the same SKU (``--concurrency`` in flight): they queue on that
  SKU's row lock, which is what makes overselling impossible;
* ``spread`` -- each reservation is 1 unit of one of ``--skus`` SKUs, at random;
* ``oversell`` -- 50 units, 200 reservations at once, then 500 units and 1,000 reservations (200 at a time).

Every reservation carries its own idempotency key and writes its movements and outbox event. After each
run the bench checks, and fails loudly otherwise: units held by the successful reservations == the
``reserved`` column; no stock row with ``reserved > on_hand``; every stock row equal to the sum of its
movements; for ``oversell``: exactly as many successes as units.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from scratch import asgi_client, scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API = "/commerce/v1/inventory"
Reserve = Callable[[str], Awaitable[bool]]  # reserve 1 unit of a SKU: True when held, False when refused (409)


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _stock_up(skus: list[str], units: int) -> None:
    from nexus_ray.deployments.commerce.inventory import service

    for wid, priority in (("bench-near", 1), ("bench-far", 2)):
        try:
            await service.create_warehouse(id=wid, name=wid, priority=priority)
        except Exception:  # exists from the previous run
            pass
    for sku in skus:
        await service.restock(caller="bench", sku=sku, warehouse_id="bench-near", quantity=units // 2)
        await service.restock(caller="bench", sku=sku, warehouse_id="bench-far", quantity=units - units // 2)


async def _verify(skus: list[str], held: int, *, exactly: int | None = None) -> dict[str, Any]:
    """The invariants after a run; raises if any is broken."""
    from nexus_ray.stores import postgres

    pg = await postgres.pool()
    reserved = await pg.fetchval("SELECT coalesce(sum(reserved), 0) FROM inventory_stock WHERE sku = ANY($1)", skus)
    over = await pg.fetchval("SELECT count(*) FROM inventory_stock WHERE sku = ANY($1) AND reserved > on_hand", skus)
    unexplained = await pg.fetchval("""
        SELECT count(*) FROM inventory_stock s LEFT JOIN (
            SELECT sku, warehouse_id, sum(on_hand_delta) AS o, sum(reserved_delta) AS r FROM inventory_movements
            WHERE sku = ANY($1) GROUP BY 1, 2) m USING (sku, warehouse_id)
        WHERE s.sku = ANY($1) AND (s.on_hand <> coalesce(m.o, 0) OR s.reserved <> coalesce(m.r, 0))""", skus)
    ok = reserved == held and over == 0 and unexplained == 0 and (exactly is None or held == exactly)
    out = {"held": held, "reserved_column": int(reserved), "rows_over_on_hand": int(over),
           "rows_not_explained_by_movements": int(unexplained), "oversold": max(0, held - (exactly or held)),
           "invariants_hold": ok}
    if not ok:
        raise SystemExit(f"INVARIANT BROKEN: {out}")
    return out


async def _load(reserve: Reserve, skus: list[str], *, concurrency: int, seconds: float) -> dict[str, Any]:
    rng = random.Random(7)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async def worker() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            outcomes["held" if await reserve(rng.choice(skus)) else "refused"] += 1
            latencies.append(time.perf_counter() - t0)

    stop = time.monotonic() + 2  # warm up: connections, caches, prepared statements
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    warm = outcomes["held"]
    outcomes.clear()
    latencies.clear()
    started = time.monotonic()
    stop = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    result = {"seconds": round(elapsed, 1), "in_flight": concurrency, "skus": len(skus),
              "outcomes": dict(outcomes), "reservations_per_s": round(outcomes["held"] / elapsed, 1),
              "p50_ms": round(statistics.median(latencies) * 1000, 1),
              "p99_ms": round(_percentile(latencies, 99) * 1000, 1)}
    result["check"] = await _verify(skus, warm + outcomes["held"])
    return result


async def _burst(reserve: Reserve, units: int, attempts: int) -> dict[str, Any]:
    sku = f"burst-{uuid.uuid4().hex[:8]}"
    await _stock_up([sku], units)
    gate = asyncio.Semaphore(200)  # at most 200 at once: the edge's Redis pool is the limit past that, not stock

    async def one() -> bool:
        async with gate:
            return await reserve(sku)

    t0 = time.perf_counter()
    held = sum(await asyncio.gather(*(one() for _ in range(attempts))))
    elapsed = time.perf_counter() - t0
    return {"units": units, "attempts": attempts, "succeeded": held, "seconds": round(elapsed, 2),
            "check": await _verify([sku], held, exactly=units)}


async def _runs(reserve: Reserve, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hot = [f"hot-{uuid.uuid4().hex[:8]}"]
    await _stock_up(hot, 10**9)
    out["hot"] = await _load(reserve, hot, concurrency=args.concurrency, seconds=args.duration)
    print("hot", json.dumps(out["hot"]), file=sys.stderr, flush=True)
    spread = [f"sp-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.skus)]
    await _stock_up(spread, 10**6)
    out["spread"] = await _load(reserve, spread, concurrency=args.concurrency, seconds=args.duration)
    print("spread", json.dumps(out["spread"]), file=sys.stderr, flush=True)
    out["hot / spread"] = round(out["hot"]["reservations_per_s"] / max(out["spread"]["reservations_per_s"], 1), 2)
    out["oversell"] = [await _burst(reserve, 50, 200), await _burst(reserve, 500, 1000)]
    print("oversell", json.dumps(out["oversell"]), file=sys.stderr, flush=True)
    return out


async def core(args: argparse.Namespace) -> dict[str, Any]:
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.commerce.inventory import service
    from nexus_ray.exceptions import Conflict

    get_settings.cache_clear()

    async def reserve(sku: str) -> bool:
        try:
            await service.reserve(caller="bench", reference="bench", lines=[{"sku": sku, "quantity": 1}],
                                  ttl_s=3600, idempotency_key=uuid.uuid4().hex)
        except Conflict:
            return False
        return True

    return await _runs(reserve, args)


async def in_process(args: argparse.Namespace) -> dict[str, Any]:
    async with asgi_client("commerce", ["commerce:inventory:*"], timeout=120) as (c, headers):

        async def reserve(sku: str) -> bool:
            r = await c.post(f"{API}/reservations", headers=headers, json={
                "reference": "bench", "lines": [{"sku": sku, "quantity": 1}], "ttl_s": 3600,
                "idempotency_key": uuid.uuid4().hex})
            if r.status_code not in (201, 409):
                raise SystemExit(f"unexpected {r.status_code}: {r.text[:300]}")
            return r.status_code == 201

        return await _runs(reserve, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured run (after 2 s of warm-up)")
    ap.add_argument("--concurrency", type=int, default=32, help="reservations in flight")
    ap.add_argument("--skus", type=int, default=1000, help="SKUs of the spread run")
    ap.add_argument("--core", action="store_true", help="call the service functions, not HTTP")
    args = ap.parse_args()
    with scratch_stores("nexus-bench-inventory-",
                        NEXUS_RATE_LIMIT_PER_PRINCIPAL="100000000", NEXUS_RATE_LIMIT_PER_ADDRESS="100000000",
                        NEXUS_POSTGRES_POOL_MAX="16"):
        results = asyncio.run(core(args) if args.core else in_process(args))
    print(json.dumps({"mode": "core" if args.core else "http", **vars(args), **results}, indent=1))


if __name__ == "__main__":
    main()
