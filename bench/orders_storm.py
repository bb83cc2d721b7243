"""Checkout sagas while PostgreSQL backends are terminated under them: no order stuck, no unit or cent lost.

    .venv/bin/python bench/orders_storm.py [--orders 300] [--concurrency 16] [--kill-every-ms 200] [--seed 1]

In-process, like ``bench/orders_profile.py``: the embedded stores in a temporary data directory and the
``commerce`` app (its seven services, the edge, the outbox relay and the saga's recovery loop, as deployed,
without Serve) driven over ASGI. Set-up as ``bench/orders.py`` (one product of two SKUs, stocked); then
``--orders`` orders, ``--concurrency`` at a time, each ``POST /orders`` with its own idempotency key, while a
killer terminates one PostgreSQL backend that is running a statement or holding a transaction open every
``--kill-every-ms`` (``pg_terminate_backend``): the saga's own writes, the inventory's, billing's, the ledger's,
the invoices', the relay's. A client repeats its request with the same key until the answer is not a fault
(a 5xx or a failed request). The recovery loop runs with a short lease (3 s) so that orders whose runner gave up
are taken over within seconds. ``--max-attempts 1`` makes the saga compensate an order at its first step that did
not answer, instead of trying again: then compensations run under the same faults.

When every order has been answered, the killer stops and the bench waits until no order is unsettled, then
checks, and prints, what must hold:

* every order settled (completed or failed: none pending, paid, compensating ...), one order per key;
* stock: each SKU's on-hand is what was put in minus the units of the completed orders, nothing reserved, no
  reservation left held;
* money: what billing captured minus what it refunded equals the totals of the completed orders;
* the ledger's reconciliation report is clean.

The exit status is 1 if any of these fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from typing import Any

import orders as bench_orders  # bench/orders.py: the set-up and the order body (bench/ is on sys.path)
from scratch import NO_RATE_LIMIT, asgi_client, machine, scratch_stores, terminate_backends

API = bench_orders.API
SCOPES = ["commerce:order-processor:*", "commerce:catalog:*", "commerce:inventory:*", "commerce:ledger:*",
          "commerce:billing-service:*"]


class Storm:
    def __init__(self, client: Any, headers: dict[str, str], args: argparse.Namespace) -> None:
        self.c, self.h, self.args = client, headers, args
        self.rng = random.Random(args.seed)
        self.faults: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.kills = 0

    async def order(self, body: dict[str, Any]) -> str:
        """One order, sent again with its key until answered without a fault: its id."""
        key = uuid.uuid4().hex
        for _ in range(100):
            try:
                r = await self.c.post(f"{API}/orders", json=body, headers={**self.h, "Idempotency-Key": key})
            except Exception as exc:  # the app raised: its connection was cut in a way the edge answers with a 500
                self.faults[f"request failed ({type(exc).__name__}), sent again"] += 1
                continue
            if r.status_code >= 500:
                self.faults[f"{r.status_code} {r.json().get('code', '')}, sent again".replace(" ,", ",")] += 1
                await asyncio.sleep(0.05)
                continue
            if r.status_code == 409 and "progress" in r.json().get("code", ""):
                self.faults["409 key in progress, sent again"] += 1
                await asyncio.sleep(0.05)
                continue
            assert r.status_code in (200, 201, 202), r.text
            self.answers[f"{r.status_code} {r.json()['status']}"] += 1
            return str(r.json()["id"])
        raise RuntimeError("an order got no answer in 100 attempts")

    async def run(self) -> dict[str, Any]:
        from nexus_ray.stores import postgres

        pairs, _ = await bench_orders.set_up(self.c)
        skus = pairs[0]
        body = bench_orders.order_body(skus)
        gate = asyncio.Semaphore(self.args.concurrency)

        async def one() -> str:
            async with gate:
                return await self.order(body)

        stop = asyncio.Event()
        killer = asyncio.create_task(terminate_backends(stop, every_ms=self.args.kill_every_ms, rng=self.rng))
        t0 = time.monotonic()
        ids = await asyncio.gather(*(one() for _ in range(self.args.orders)))
        answered = time.monotonic() - t0
        stop.set()
        self.kills = await killer
        pg = await postgres.pool()
        unsettled_after = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            left = await pg.fetchval("SELECT count(*) FROM orders WHERE status = ANY($1::text[])",
                                     ["pending", "paid", "compensating", "cancelling", "refunding"])
            if left == 0:
                unsettled_after = round(time.monotonic() - t0 - answered, 1)
                break
            await asyncio.sleep(0.5)
        statuses = {r["status"]: r["n"] for r in await pg.fetch(
            "SELECT status, count(*) AS n FROM orders GROUP BY status")}
        completed = await pg.fetch("SELECT id, total FROM orders WHERE status = 'completed'")
        stock = {r["sku"]: (int(r["on_hand"]), int(r["reserved"])) for r in await pg.fetch(
            "SELECT sku, sum(on_hand) AS on_hand, sum(reserved) AS reserved FROM inventory_stock "
            "WHERE sku = ANY($1::text[]) GROUP BY sku", skus)}
        held = await pg.fetchval("SELECT count(*) FROM inventory_reservations WHERE status = 'held'")
        kept = await pg.fetchval(
            "SELECT coalesce(sum(amount_captured - amount_refunded), 0) FROM billing_payment_intents")
        report = (await self.c.get("/commerce/v1/ledger/reconciliation", headers=self.h)).json()
        n_done = len(completed)
        checks = {
            "every order settled": unsettled_after is not None,
            "one order per key": sum(statuses.values()) == self.args.orders == len(set(ids)),
            "stock on hand = put in - units of completed orders": stock == {
                skus[0]: (bench_orders.STOCK - n_done, 0), skus[1]: (bench_orders.STOCK - 2 * n_done, 0)},
            "no reservation left held": held == 0,
            "captured - refunded = totals of completed orders": int(kept) == sum(int(r["total"]) for r in completed),
            "ledger reconciliation clean": report["clean"],
        }
        # Where money and orders disagree: each intent whose kept amount is not its order's completed total.
        disagree = await pg.fetch(
            "SELECT i.id, i.status AS intent, i.amount_captured - i.amount_refunded AS kept, o.id AS order_id, "
            "o.status, o.failure, o.undone, array(SELECT step || ' ' || phase || ' ' || outcome FROM order_saga_log "
            "WHERE order_id = o.id ORDER BY id) AS log FROM billing_payment_intents i "
            "LEFT JOIN orders o ON o.id::text = i.metadata->>'order_id' "
            "WHERE i.amount_captured - i.amount_refunded <> CASE WHEN o.status = 'completed' THEN o.total ELSE 0 END")
        for r in disagree:
            print("money and order disagree:", dict(r), file=sys.stderr)
        return {
            "orders": self.args.orders, "concurrency": self.args.concurrency,
            "seconds until every order was answered": round(answered, 1),
            "orders answered per second": round(self.args.orders / answered, 1),
            "seconds after that until none was unsettled": unsettled_after,
            "backends terminated": self.kills, "faults met and retried": dict(self.faults),
            "first answers": dict(self.answers), "orders by status at the end": statuses,
            "stock (on hand, reserved)": stock, "money kept by billing": int(kept),
            "invariants": checks, "all hold": all(checks.values()),
        }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with asgi_client("commerce", SCOPES, timeout=120) as (c, headers):
        bench_orders.bearer = lambda subject, *scopes: headers  # the set-up's merchant and operations: this token
        return await Storm(c, headers, args).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-every-ms", type=float, default=200.0, help="0: no backend is terminated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-attempts", type=int, default=5,
                        help="NEXUS_ORDER_MAX_ATTEMPTS: 1 compensates an order at its first unanswered step")
    args = parser.parse_args()
    with scratch_stores("nexus-bench-orders-storm-", **NO_RATE_LIMIT, NEXUS_ORDER_LEASE_S="3",
                        NEXUS_ORDER_RECOVERY_INTERVAL_S="0.5",
                        NEXUS_ORDER_MAX_ATTEMPTS=str(args.max_attempts)):
        results = asyncio.run(main_async(args))
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    sys.exit(0 if results["all hold"] else 1)


if __name__ == "__main__":
    main()
