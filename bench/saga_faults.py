"""Faults in the middle of checkouts: does every order still end completed or compensated? (issue 7)

    flock /tmp/nexus-ray.lock timeout 900 bash bench/with_stack.sh python bench/saga_faults.py \
        --fault postgres|redis|mongo|kafka|replica|none [--rate 6] [--duration 30] [--at 10] [--down 0] [--wait 180]

Against a running stack (bench/with_stack.sh starts a private one; NEXUS_DATA_DIR names its data). Places orders
through the entrypoint, open loop at ``--rate`` a second for ``--duration`` seconds, each with an idempotency key of
its own, as ``bench/orders.py`` does (its set-up: one product, two SKUs, stocked). ``--at`` seconds in, the fault:

* ``postgres``: SIGKILL of PostgreSQL's postmaster (every saga step's store), then, ``--down`` seconds later,
  ``embedded.start`` starts it again on the same port (crash recovery replays its log);
* ``redis``, ``mongo``, ``kafka``: the same for that store (the document store holds the catalog that prices the
  cart, Redis the edge's rate limits and revocations, the broker the order events);
* ``replica``: SIGKILL of one ``commerce`` ingress replica, the process that runs the sagas it was asked for (Serve
  starts another).

An order answered 5xx, or not answered, is sent again with the same key after a second, as a client would, up to
five times. Then the bench waits until every order of its buyer is in a final state (or ``--wait`` passes) and
checks, from the stores, that nothing is stuck or half-done:

* every order is ``completed`` or ``failed`` (none pending, compensating or otherwise in between);
* one order per idempotency key;
* the stock left is what the completed orders took, and no reservation of these orders is still held;
* each completed order has one payment captured for its total, and no failed order has money kept (captured and
  not refunded) or a payment still authorised;
* billing's ledger postings for these payments are all posted, and ledger-mgr's reconciliation report is clean;
* each consumer group of the order flow that records these orders' events (notification-service, logistics'
  deliveries) processed an event of every completed order (read from its own record of processed events, as
  ``bench/broker_restart.py`` does; shipping passes over them with no record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orders as bench_orders

FINAL = ("completed", "failed")
STORES = ("postgres", "redis", "mongo", "kafka")


async def place(http: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any], key: str,
                answers: Counter[str]) -> None:
    """One order, sent again with its key after a 5xx or no answer (at most five times)."""
    for attempt in range(5):
        try:
            r = await http.post(f"{bench_orders.API}/orders", json=body, headers={**headers, "Idempotency-Key": key})
        except httpx.HTTPError as exc:
            code, r = type(exc).__name__, None
        else:
            try:
                answer = r.json()
                code = f"{r.status_code} {answer.get('code') if r.status_code >= 400 else answer.get('status')}"
            except ValueError:  # not JSON: say what it was
                code = f"{r.status_code} {r.headers.get('content-type')}: {r.text[:80]!r}"
        answers[("retry " if attempt else "") + code] += 1
        if r is not None and r.status_code < 500:
            return
        await asyncio.sleep(1.0)


def commerce_replicas() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "ServeReplica:commerce" in " ".join(p.info["cmdline"] or [])]


def fault(kind: str, data_dir: Path, down_s: float) -> dict[str, Any]:
    from nexus_ray.runtime import embedded

    began = time.time()
    if kind in STORES:
        pid = embedded.status(data_dir)[kind]["pid"]
        os.kill(pid, signal.SIGKILL)
        while embedded.status(data_dir)[kind]["alive"]:
            time.sleep(0.05)
        time.sleep(down_s)
        embedded.start(data_dir)
        back = round(time.time() - began, 1)
        return {"fault": f"{kind} SIGKILLed and started again", "pid": pid, "back_after_s": back}
    if kind == "replica":
        pids = commerce_replicas()
        os.kill(pids[0], signal.SIGKILL)
        return {"fault": "commerce replica SIGKILLed", "pid": pids[0], "replicas_before": len(pids)}
    return {"fault": "none"}


CHECKS = {
    "orders_by_status": "SELECT status, count(*) AS n FROM orders WHERE customer = $1 GROUP BY status ORDER BY status",
    "keys_with_more_than_one_order": (
        "SELECT count(*) FROM (SELECT idempotency_key FROM orders WHERE customer = $1 "
        "GROUP BY idempotency_key HAVING count(*) > 1) k"),
    "reservations_by_status": (
        "SELECT r.status, count(*) AS n FROM inventory_reservations r JOIN orders o ON r.reference = o.id::text "
        "WHERE o.customer = $1 GROUP BY r.status ORDER BY r.status"),
    "completed_orders_without_one_capture_of_their_total": (
        "SELECT count(*) FROM orders o WHERE o.customer = $1 AND o.status = 'completed' AND (SELECT count(*) "
        "FROM billing_payment_intents p WHERE p.metadata->>'order_id' = o.id::text AND p.status = 'captured' "
        "AND p.amount_captured = o.total AND p.amount_refunded = 0) <> 1"),
    "failed_orders_with_money_kept_or_held": (
        "SELECT count(*) FROM orders o JOIN billing_payment_intents p ON p.metadata->>'order_id' = o.id::text "
        "WHERE o.customer = $1 AND o.status = 'failed' "
        "AND (p.amount_captured > p.amount_refunded OR p.status = 'authorized')"),
    "payments_of_completed_orders_beyond_one": (
        "SELECT count(*) FROM orders o JOIN billing_payment_intents p ON p.metadata->>'order_id' = o.id::text "
        "WHERE o.customer = $1 AND o.status = 'completed' AND p.status <> 'captured'"),
    "ledger_postings_not_posted": (
        "SELECT count(*) FROM billing_ledger_postings l JOIN billing_payment_intents p ON p.id = l.payment_intent_id "
        "JOIN orders o ON p.metadata->>'order_id' = o.id::text WHERE o.customer = $1 AND l.status <> 'posted'"),
}


GROUPS = bench_orders.ORDER_FLOW_GROUPS

# Per consumer group: the completed orders of which it has processed no event (the saga's own events are keyed by
# the order; shipping's name it in their payload), as bench/broker_restart.py reads them.
UNPROCESSED = """
    WITH mine AS (SELECT id::text AS oid FROM orders WHERE customer = $1 AND status = 'completed'),
    ev AS (SELECT e.event_id, m.oid FROM outbox e JOIN mine m ON e.key = m.oid OR e.payload->>'order_id' = m.oid)
    SELECT g.name, count(*) FILTER (WHERE NOT EXISTS (
        SELECT 1 FROM ev JOIN processed_events p ON p.event_id = ev.event_id AND p.consumer = g.name
        WHERE ev.oid = m.oid)) AS n
    FROM unnest($2::text[]) AS g(name) CROSS JOIN mine m GROUP BY g.name ORDER BY g.name"""


async def consumed(pg: Any, customer: str, wait_s: float) -> tuple[float | None, dict[str, int]]:
    """Seconds until each consumer group of the order flow had processed an event of every completed order (None:
    not within ``wait_s``), and how many orders each group still missed then."""
    began = time.time()
    while True:
        missing = {r["name"]: r["n"] for r in await pg.fetch(UNPROCESSED, customer, list(GROUPS))}
        if not any(missing.values()):
            return round(time.time() - began, 1), missing
        if time.time() - began > wait_s:
            return None, missing
        await asyncio.sleep(1.0)


async def settle(pg: Any, customer: str, wait_s: float) -> float | None:
    """Seconds until every order of ``customer`` is final (None: not within ``wait_s``)."""
    began = time.time()
    while time.time() - began < wait_s:
        left = await pg.fetchval("SELECT count(*) FROM orders WHERE customer = $1 AND status <> ALL($2::text[])",
                                 customer, list(FINAL))
        if left == 0:
            return round(time.time() - began, 1)
        await asyncio.sleep(1.0)
    return None


async def run(args: argparse.Namespace) -> None:
    import asyncpg

    from nexus_ray.runtime import embedded

    data_dir = Path(os.environ["NEXUS_DATA_DIR"])
    base = f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}"
    customer = f"bench-faults-{uuid.uuid4().hex[:8]}"
    buyer = bench_orders.bearer(customer, "commerce:order-processor:write", "commerce:order-processor:read")
    admin = bench_orders.bearer("bench-admin", "commerce:ledger:admin")
    answers: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        (pair,), ops = await bench_orders.set_up(http)
        body = bench_orders.order_body(pair)
        start = time.perf_counter() + 0.2
        tasks = []
        fault_task = None
        for k in range(int(args.rate * args.duration)):
            due = start + k / args.rate
            if fault_task is None and due - start >= args.at:
                fault_task = asyncio.create_task(asyncio.to_thread(fault, args.fault, data_dir, args.down))
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(place(http, buyer, body, uuid.uuid4().hex, answers)))
        await asyncio.gather(*tasks)
        print(json.dumps(await fault_task if fault_task else {"fault": "none"}), flush=True)
        print(json.dumps({"orders sent": len(tasks), "answers": dict(sorted(answers.items()))}), flush=True)

        pg = await asyncpg.connect(embedded.status(data_dir)["postgres"]["url"])
        try:
            settled = await settle(pg, customer, args.wait)
            result: dict[str, Any] = {"every order final after the load, s": settled}
            (result["every completed order's events consumed by every group after that, s"],
             result["completed orders with no event processed, by group"]) = await consumed(pg, customer, args.wait)
            for name, sql in CHECKS.items():
                rows = await pg.fetch(sql, customer)
                result[name] = ({r["status"]: r["n"] for r in rows} if "status" in rows[0].keys() else rows[0][0]) \
                    if rows else {}
            completed = result["orders_by_status"].get("completed", 0)
            left = [await bench_orders.stock_left(http, ops, sku) for sku in pair]
            result["stock_taken_vs_completed_orders"] = {
                "taken": [bench_orders.STOCK - n for n in left], "completed_orders_take": [completed, 2 * completed]}
            r = await http.get("/commerce/v1/ledger/reconciliation", headers=admin)
            result["ledger_reconciliation"] = r.json()
        finally:
            await pg.close()
    print(json.dumps(result, default=str), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault", choices=(*STORES, "replica", "none"), default="postgres")
    parser.add_argument("--rate", type=float, default=6.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--at", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=180.0)
    parser.add_argument("--down", type=float, default=0.0, help="seconds a killed store stays down before its start")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
