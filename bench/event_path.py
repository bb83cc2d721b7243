"""What the order flow's events cost at the rate 200 orders/s would make them: the event path alone, measured.

    flock /tmp/nexus-ray.lock timeout 900 bash bench/with_stack.sh python bench/event_path.py \
        [--orders-per-s 200] [--duration 20] [--seed-s 10]

Against a running stack (bench/with_stack.sh starts a private one). First ``--seed-s`` seconds of real orders
through the entrypoint (``bench/orders.py``'s set-up and client), so the outbox holds the events real checkouts
write: ``order.created``, ``payment_intent.succeeded``, ``shipment.created`` and the others, 12 an order. Then those
events are written again, with new event ids, straight into the outbox as the services write them
(:func:`nexus_ray.stores.events.emit_many`, one statement a topic every 50 ms), at the rate that
``--orders-per-s`` orders would make, for ``--duration`` seconds, with no order behind them. The relay carries
them to the broker, and the consumers of the order flow (shipping, notifications, logistics' deliveries) handle
them as they come.

It prints the CPU of every process of the stack over the middle of the run, by kind, in ms per order's worth of
events (12); the outbox's backlog (events written and not yet published), sampled each second; and how long after
the last write each consumer group had handled every copy it subscribes to.

The copies cost the consumers less than first events: shipping finds the order's shipment made, deliveries the
delivery made. So the figures are a floor of what the event path costs, not its whole cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orders as bench_orders

from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit_many


async def seed(seconds: float) -> list[dict[str, Any]]:
    """Real orders for ``seconds``: the events their checkouts wrote to the outbox, in order."""
    api = f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}"
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        pairs, _ = await bench_orders.set_up(http, 10)
        buyer = bench_orders.bearer("bench-buyer", "commerce:order-processor:read", "commerce:order-processor:write")
        began = time.time()
        result, _ = await bench_orders.closed_loop(http, buyer, pairs, concurrency=8, seconds=seconds)
    print("seed orders:", json.dumps(result), flush=True)
    conn = await bench_orders._stack_pg()
    try:
        rows = await conn.fetch("SELECT topic, key, payload::text AS payload FROM outbox "
                                "WHERE created_at >= to_timestamp($1) ORDER BY id", began)
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def write(events: list[dict[str, Any]], per_s: float, seconds: float) -> list[str]:
    """``events`` written again into the outbox, with new ids, at ``per_s`` for ``seconds``: the new ids."""
    conn = await bench_orders._stack_pg()
    await postgres._init_connection(conn)  # JSON parameters as the services' connections take them
    ids: list[str] = []
    tick = 0.05
    began = time.perf_counter()
    sent = 0
    try:
        for step in range(round(seconds / tick)):
            due = round((step + 1) * tick * per_s)
            batch = [events[(sent + i) % len(events)] for i in range(due - sent)]
            sent = due
            by_topic: dict[str, list[tuple[str | None, str]]] = {}
            for e in batch:
                by_topic.setdefault(e["topic"], []).append((e["key"], e["payload"]))
            async with conn.transaction():
                for topic, items in by_topic.items():
                    ids += [str(i) for i in await emit_many(conn, topic, items)]
            wait = began + (step + 1) * tick - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
    finally:
        await conn.close()
    return ids


async def backlog(samples: list[int], stop: asyncio.Event) -> None:
    """The outbox's unpublished events, each second until ``stop``."""
    conn = await bench_orders._stack_pg()
    try:
        while not stop.is_set():
            samples.append(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    finally:
        await conn.close()


async def drained(ids: list[str], timeout_s: float = 120.0) -> dict[str, Any]:
    """Seconds until each consumer group had handled every copy of a topic it handles (its count stops short of
    ``len(ids)`` when it subscribes to some topics only): polled until no group's count grows for 3 s."""
    conn = await bench_orders._stack_pg()
    began = time.perf_counter()
    last: Counter[str] = Counter()
    settled_at: dict[str, float] = {}
    still_since = time.perf_counter()
    try:
        while time.perf_counter() - began < timeout_s:
            rows = await conn.fetch("SELECT consumer, count(*) AS n FROM processed_events "
                                    "WHERE event_id = ANY($1::uuid[]) GROUP BY consumer", ids)
            now = Counter({r["consumer"]: r["n"] for r in rows})
            for group, n in now.items():
                if n != last[group]:
                    settled_at[group] = time.perf_counter() - began
                    still_since = time.perf_counter()
            last = now
            if time.perf_counter() - still_since > 3.0:
                break
            await asyncio.sleep(0.25)
    finally:
        await conn.close()
    return {g: {"handled": last[g], "last_one_after_s": round(settled_at.get(g, 0.0), 1)} for g in sorted(last)}


async def run(args: argparse.Namespace) -> None:
    events = await seed(args.seed_s)
    per_order = len(events) / max(1, len({e["key"] for e in events if e["topic"] == "order.created"}))
    print(f"seeded: {len(events)} events, {per_order:.1f} an order", flush=True)
    per_s = args.orders_per_s * round(per_order)
    from rate_cpu import print_cpu, print_kinds, watch

    cpu: dict[str, float] = {}
    watchers = watch(cpu, wait_s=min(5.0, args.duration / 4), span_s=max(1.0, args.duration / 2))
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(backlog(samples, stop))
    began = time.perf_counter()
    ids = await write(events, per_s, args.duration)
    wrote_s = time.perf_counter() - began
    print(f"written: {len(ids)} events in {wrote_s:.1f} s, {len(ids) / wrote_s:.0f}/s "
          f"({args.orders_per_s} orders/s of events)", flush=True)
    for t in watchers:
        t.join()
    groups = await drained(ids)
    stop.set()
    await sampler
    print("outbox backlog each second:", json.dumps(samples))
    print("consumer groups after the last write:", json.dumps(groups))
    print("over the middle of the run:", end=" ")
    print_cpu(cpu, top=10)
    print_kinds(cpu, args.orders_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders-per-s", type=float, default=200)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--seed-s", type=float, default=10)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
