"""A broker restart under a running stack: does every event consumer go on?

    flock /tmp/nexus-ray.lock timeout 900 bash bench/with_stack.sh python bench/broker_restart.py \
        [--orders 3] [--wait 90]

Against a running stack (bench/with_stack.sh starts a private one; NEXUS_DATA_DIR names its data). Places one order
through the entrypoint (as bench/orders.py does) and waits until each consumer group of the order flow has
processed an event of it: shipping (``order.paid``), notification-service (the order's events) and logistics'
deliveries (``shipment.created``). Then restarts the embedded Kafka-wire broker (``embedded.restart_kafka``: it
keeps no log, so its topics, groups and committed offsets are gone, as after a broker that lost its disk), places
``--orders`` more orders and reports, for each group and order, how many seconds after the order's answer the group
had processed one of its events (``processed_events``, the consumers' own record), or that it had not within
``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orders as bench_orders

GROUPS = bench_orders.ORDER_FLOW_GROUPS

# The events of an order: the saga's own (keyed by the order) and shipping's (the order id in the payload).
PROCESSED = (
    "SELECT p.consumer, min(p.processed_at) AS at FROM processed_events p JOIN outbox o ON o.event_id = p.event_id "
    "WHERE (o.key = $1 OR o.payload->>'order_id' = $1) AND p.consumer = ANY($2::text[]) GROUP BY p.consumer")


async def order_and_wait(http: httpx.AsyncClient, pg: Any, headers: dict[str, str], skus: list[str],
                         wait_s: float) -> dict[str, float | None]:
    """Place one order; seconds from its answer until each group processed one of its events (None: not within)."""
    r = await http.post(f"{bench_orders.API}/orders", json=bench_orders.order_body(skus),
                        headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
    r.raise_for_status()
    order_id = r.json()["id"]
    answered = time.time()
    seen: dict[str, float | None] = dict.fromkeys(GROUPS)
    while time.time() - answered < wait_s and any(v is None for v in seen.values()):
        for row in await pg.fetch(PROCESSED, order_id, list(GROUPS)):
            if seen[row["consumer"]] is None:
                seen[row["consumer"]] = round(max(0.0, row["at"].timestamp() - answered), 2)
        await asyncio.sleep(0.2)
    return seen


async def run(args: argparse.Namespace) -> None:
    import asyncpg

    from nexus_ray.runtime import embedded

    data_dir = Path(os.environ["NEXUS_DATA_DIR"])
    pg = await asyncpg.connect(embedded.status(data_dir)["postgres"]["url"])
    base = f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        pairs, _ops = await bench_orders.set_up(http)
        buyer = bench_orders.bearer("bench-buyer", "commerce:order-processor:write", "commerce:order-processor:read")
        before = await order_and_wait(http, pg, buyer, pairs[0], args.wait)
        print(json.dumps({"before the restart": before}), flush=True)
        t0 = time.time()
        await asyncio.to_thread(embedded.restart_kafka, data_dir)
        print(json.dumps({"broker restarted in s": round(time.time() - t0, 1)}), flush=True)
        for i in range(args.orders):
            after = await order_and_wait(http, pg, buyer, pairs[0], args.wait)
            print(json.dumps({f"order {i + 1} after the restart": after}), flush=True)
    await pg.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=3, help="orders placed after the restart, one after another")
    ap.add_argument("--wait", type=float, default=90.0, help="seconds to wait for each order's events")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
