"""Gap-free invoice numbering under load: N concurrent invoices in one series, and invoices per second.

    .venv/bin/python bench/invoices.py [--invoices 1000] [--lines 3] [--series 1] [--http [--in-flight 100]]

In-process: starts the embedded stores in a temporary data directory, builds the ``commerce``
namespace app in this process (its lifespan runs the outbox relay, as deployed) and fires all
``--invoices`` issues at once (``asyncio.gather``), spread over ``--series`` series, through
invoice-gen's export ``issue_invoice`` (what the order saga calls) or, with ``--http``, through
``POST /commerce/v1/invoices/invoices`` with the edge in front, ``--in-flight`` requests at a time
(a thousand at once would open a thousand Redis connections for the rate limiter). Every issue writes the invoice, its
lines and an ``invoice.issued`` outbox event in the transaction that takes the series' number.

Checked at the end, from the database: each series holds exactly the numbers 1..n (no gap, no
duplicate) and its counter row says n. The load generator shares the process and its cores, so
the rate is a floor for one replica.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from scratch import NO_RATE_LIMIT, machine, scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API = "/commerce/v1/invoices"


def _body(series: str, i: int, lines: int) -> dict[str, Any]:
    return {"series": series, "customer": {"id": f"cust-{i % 50}", "name": f"Customer {i}"}, "country": "DE",
            "currency": "EUR",
            "lines": [{"description": f"Item {j}", "quantity": 1 + j, "unit_price": 999 + i + j,
                       "tax_category": ("standard", "reduced")[j % 2]} for j in range(lines)]}


async def _check(series: list[str], per_series: list[int]) -> dict[str, Any]:
    from nexus_ray.stores import postgres

    pg = await postgres.pool()
    out = {}
    for name, n in zip(series, per_series, strict=True):
        numbers = [r["number"] for r in await pg.fetch(
            "SELECT number FROM invoices WHERE series = $1 ORDER BY number", name)]
        counter = await pg.fetchval(
            "SELECT last_number FROM invoice_counters WHERE kind = 'invoice' AND series = $1", name)
        out[name] = {"invoices": len(numbers), "numbers_are_1_to_n": numbers == list(range(1, n + 1)),
                     "distinct": len(set(numbers)), "counter": counter}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.kit.calls import call
    from nexus_ray.edge import tokens

    get_settings.cache_clear()
    app = build_app("commerce")
    tag = uuid.uuid4().hex[:6].upper()
    series = [f"B{tag}-{s}" for s in range(args.series)]
    per_series = [len(range(s, args.invoices, args.series)) for s in range(args.series)]
    async with app.router.lifespan_context(app):
        await tokens.prepare()
        headers = {"Authorization": f"Bearer {tokens.issue('bench', ['commerce:invoices:*'], ttl_s=3600)}"}
        transport = httpx.ASGITransport(app=app, root_path="/commerce", client=("10.9.0.2", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=300) as c:
            # Warm-up: the pool, the rate table, the code paths (its own series, not counted).
            await call("invoice-gen", "issue_invoice", caller="bench", order_id="warm-up", idempotency_key="warm-up",
                       **_body(f"W{tag}", 0, args.lines))

            gate = asyncio.Semaphore(args.in_flight if args.http else args.invoices)

            async def one(i: int) -> int:
                body = _body(series[i % args.series], i, args.lines)
                key = f"bench-{tag}-{i}"
                if args.http:
                    async with gate:
                        r = await c.post(f"{API}/invoices", headers=headers,
                                         json={**body, "source_id": f"ord-{i}", "idempotency_key": key})
                    r.raise_for_status()
                    return int(r.json()["number"])
                invoice = await call("invoice-gen", "issue_invoice", caller="bench", order_id=f"ord-{i}",
                                     idempotency_key=key, **body)
                return int(invoice.number)

            started = time.monotonic()
            numbers = await asyncio.gather(*[one(i) for i in range(args.invoices)])
            elapsed = time.monotonic() - started
        checks = await _check(series, per_series)
    return {
        "path": "HTTP (edge + route)" if args.http else "export issue_invoice (in-process call)",
        "invoices": args.invoices, "series": args.series, "lines_per_invoice": args.lines,
        "in_flight": args.in_flight if args.http else args.invoices, "seconds": round(elapsed, 2),
        "invoices_per_s": round(args.invoices / elapsed, 1),
        "returned_numbers_distinct_per_series": len(set(zip(
            [i % args.series for i in range(args.invoices)], numbers, strict=True))) == args.invoices,
        "series_checks": checks,
        "gap_free": all(v["numbers_are_1_to_n"] and v["counter"] == n
                        for v, n in zip(checks.values(), per_series, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=1000, help="invoices issued, all at once")
    parser.add_argument("--lines", type=int, default=3, help="lines per invoice")
    parser.add_argument("--series", type=int, default=1, help="series the invoices are spread over")
    parser.add_argument("--http", action="store_true", help="through the HTTP route (edge included)")
    parser.add_argument("--in-flight", type=int, default=100, help="with --http: requests in flight at once")
    args = parser.parse_args()
    with scratch_stores("nexus-bench-invoices-", **NO_RATE_LIMIT):
        results = asyncio.run(run(args))
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
