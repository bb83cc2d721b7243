"""Orders per second end to end: the full saga through the public entrypoint, closed loop and at a fixed rate.

    flock /tmp/nexus-ray.lock timeout 1500 bash bench/with_stack.sh python bench/orders.py \
        [--concurrency 16] [--duration 30] [--rates 25,50,100 | auto | half] [--rate-duration 30] [--products 1]

Against a running stack (bench/with_stack.sh starts a private one). Set-up over HTTP: a merchant
lists ``--products`` products (one unless given) with two variants each in the catalog, operations stock
every SKU in a warehouse; the orders take the products in turn.
Every order is ``POST /commerce/v1/order-processor/orders`` with its own ``Idempotency-Key``: two
lines, the billing sandbox's approving card, a German address. Its saga runs inside the request:
the catalog prices the cart, inventory-mgr reserves the stock, invoice-gen quotes the tax,
billing authorises and captures (posting to ledger-mgr), inventory commits the stock,
invoice-gen issues the invoice (number, PDF) and puabo-nuki-shipping-service books the shipment.
An order answered 201 is ``completed``; 202 means a step did not answer in time and recovery
finishes it.

* closed loop: ``--concurrency`` clients, each sending its next order when the last is answered, for
  ``--duration`` seconds: orders per second;
* open loop: each rate of ``--rates`` (``auto``: 25, 50 and 90 % of the closed loop's completed orders
  per second) for ``--rate-duration`` seconds; an order's latency counts from
  when it was due (not when it was sent), so a stall is not hidden by fewer orders being sent
  (the correction wrk2 makes).

``--wrk`` sends the closed loop's orders with ``wrk -c<concurrency>`` and each fixed rate's with ``wrk2 -R``
instead, through ``bench/orders.lua`` (each request its own idempotency key): a load generator in C, which
takes less of the two cores than this process's client, and wrk2's own latency correction. Which orders
completed is then read from the stack's database, for the orders per second and the stock check. wrk2 opens
its connections together and paces each at rate / connections, so they send in step: with 16 connections at
10 orders/s, 16 orders arrive at once every 1.6 s and queue behind each other (measured: the saga's own p50,
from the orders' rows, 236 ms against 51 ms with 2 connections and 39 ms from this process's evenly spaced
client). So the fixed rates use few connections (``--rate-connections``; unless given, 2 for every 20 orders/s
begun: 2 at 19/s, 4 at 35/s). A late answer delays the next send on its connection, which wrk2 counts against
the latency, from when the request was due; too few connections for the rate show as seconds of latency.
``WRK2=wrk2-spread`` (built by bench/build_wrk2_eof.sh) sends a fixed rate's requests evenly spaced whatever the
number of connections: one every 1/rate seconds, as a fixed rate means. Each fixed rate also prints the mean time of
each saga step of its own orders (from the saga log) and, with ``--cpu``, the CPU of every stack process.

The load generator runs on the same two cores as the platform: the figures are a floor. ``--cpu`` and
``--py-spy PATH`` sample every stack process's CPU, or profile one (``--spy-match``), during the closed loop.
``--waits`` says what the closed loop waited on, over the same span: the machine's time split (/proc/stat:
user, system, softirq, idle), what PostgreSQL's client backends were doing, sampled every 20 ms (running, in a
transaction waiting for the platform's next statement, or waiting on a lock or on the WAL, the statement
named), and afterwards, from the saga log, the mean time from one saga write to the next for each step of the
closed loop's orders.
At the end each SKU's stock left must equal the stock put in minus the units of its completed orders.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

API = "/commerce/v1/order-processor"
INV = "/commerce/v1/inventory"
STOCK = 10_000_000
#: The consumer groups that record an event of every completed order (bench/saga_faults.py and
#: bench/broker_restart.py read their records). Shipping is not among them: since 839459f it passes over, with no
#: record, the events such an order brings it (``order.paid`` of an order it ships already, a delivery's creation).
ORDER_FLOW_GROUPS = ("notification-service", "puabo-nexus")


def token(subject: str, *scopes: str) -> str:
    args = [sys.executable, "-m", "nexus_ray.cli", "token", subject, "--ttl", "3600"]
    for scope in scopes:
        args += ["-s", scope]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def bearer(subject: str, *scopes: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject, *scopes)}"}


async def set_up(http: httpx.AsyncClient, products: int = 1) -> tuple[list[list[str]], dict[str, str]]:
    """``products`` products of two variants each, all stocked in one new warehouse: their SKU pairs."""
    merchant = bearer("bench-merchant", "commerce:catalog:read", "commerce:catalog:write")
    ops = bearer("bench-ops", "commerce:inventory:*")
    wid = f"wh-{uuid.uuid4().hex[:8]}"
    (await http.post(f"{INV}/warehouses", json={"id": wid, "name": wid}, headers=ops)).raise_for_status()
    gate = asyncio.Semaphore(8)

    async def one() -> list[str]:
        skus = [f"BENCH-{uuid.uuid4().hex[:10]}" for _ in range(2)]
        product = {"title": "Bench mug", "description": "", "brand": "Acme", "category": "kitchen", "attributes": {},
                   "status": "active", "variants": [
                       {"sku": skus[0], "prices": {"EUR": 1250}, "tax_category": "standard", "weight_g": 300},
                       {"sku": skus[1], "prices": {"EUR": 333}, "tax_category": "reduced", "weight_g": 100}]}
        async with gate:
            (await http.post("/commerce/v1/catalog/products", json=product, headers=merchant)).raise_for_status()
            for sku in skus:
                r = await http.post(f"{INV}/stock/restock", json={"sku": sku, "warehouse_id": wid, "quantity": STOCK},
                                    headers=ops)
                r.raise_for_status()
        return skus

    return list(await asyncio.gather(*(one() for _ in range(products)))), ops


def order_body(skus: list[str]) -> dict[str, Any]:
    return {"lines": [{"sku": skus[0], "quantity": 1}, {"sku": skus[1], "quantity": 2}], "currency": "EUR",
            "payment_method": "pm_card_visa",
            "shipping_address": {"name": "Ada", "line1": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115",
                                 "country": "DE"}}


class Tally:
    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.completed = 0
        self.by_product: Counter[int] = Counter()  # completed orders per product (index into the pairs)
        self.sent = 0

    async def next_order(self, http: httpx.AsyncClient, headers: dict[str, str], bodies: list[dict[str, Any]],
                         due: float | None = None) -> None:
        """The next order, the products taken in turn."""
        k = self.sent % len(bodies)
        self.sent += 1
        done = await self.order(http, headers, bodies[k], due)  # awaited first: `x[k] += await` reads x[k] before
        self.by_product[k] += done

    async def order(self, http: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any],
                    due: float | None = None) -> bool:
        """Send one order: whether it completed."""
        began = due if due is not None else time.perf_counter()
        done = False
        try:
            r = await http.post(f"{API}/orders", json=body, headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
            status = r.json().get("status", "?") if r.status_code < 300 else r.json().get("code", "")
            self.codes[f"{r.status_code} {status}"] += 1
            done = r.status_code == 201 and status == "completed"
            self.completed += done
        except httpx.HTTPError as exc:
            self.codes[type(exc).__name__] += 1
        self.latencies.append(time.perf_counter() - began)
        return done

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        n = len(ordered)

        def pct(p: float) -> float:
            return round(ordered[min(n - 1, int(p * n))] * 1000, 1) if n else 0.0

        return {"orders": n, "per_s": round(n / seconds, 1), "completed_per_s": round(self.completed / seconds, 1),
                "codes": dict(self.codes), "p50_ms": round(statistics.median(ordered) * 1000, 1) if n else 0.0,
                "p99_ms": pct(0.99), "max_ms": round(ordered[-1] * 1000, 1) if n else 0.0}


async def closed_loop(http: httpx.AsyncClient, headers: dict[str, str], pairs: list[list[str]], *, concurrency: int,
                      seconds: float) -> tuple[dict[str, Any], Counter[int]]:
    tally = Tally()
    bodies = [order_body(skus) for skus in pairs]
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            await tally.next_order(http, headers, bodies)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally.summary(time.perf_counter() - began), tally.by_product


async def open_loop(http: httpx.AsyncClient, headers: dict[str, str], pairs: list[list[str]], *, rate: float,
                    seconds: float) -> tuple[dict[str, Any], Counter[int]]:
    tally = Tally()
    bodies = [order_body(skus) for skus in pairs]
    start = time.perf_counter() + 0.2
    tasks = []
    for k in range(int(rate * seconds)):
        due = start + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(tally.next_order(http, headers, bodies, due)))
    await asyncio.gather(*tasks)
    return {"rate": rate, **tally.summary(seconds)}, tally.by_product


def _proc_stat() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


async def _stack_pg() -> Any:
    """A connection of its own to the PostgreSQL of the stack of ``NEXUS_DATA_DIR`` (bench/with_stack.sh sets it)."""
    import asyncpg

    from nexus_ray.runtime import embedded

    return await asyncpg.connect(embedded.status(os.environ["NEXUS_DATA_DIR"])["postgres"]["url"])


async def waits(seconds: float, out: dict[str, Any]) -> None:
    """Sample the machine's time split and PostgreSQL's client backends for ``seconds``, into ``out``."""
    conn = await _stack_pg()
    try:
        states: Counter[str] = Counter()
        on_lock: Counter[str] = Counter()
        samples = 0
        cpu0 = _proc_stat()
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            for r in await conn.fetch(
                    "SELECT state, wait_event_type AS wt, wait_event AS we, left(query, 60) AS q FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() "
                    "AND state IN ('active', 'idle in transaction')"):
                if r["state"] == "idle in transaction":
                    states["in a transaction, waiting for the platform's next statement"] += 1
                elif r["wt"] is None:
                    states["running a statement"] += 1
                else:
                    states[f"waiting: {r['wt']}/{r['we']}"] += 1
                    if r["wt"] == "Lock":
                        on_lock[" ".join(r["q"].split())] += 1
            samples += 1
            await asyncio.sleep(0.02)
        cpu1 = _proc_stat()
        spent = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        out["machine_%"] = {n: round(100 * v / sum(spent), 1) for n, v in zip(names, spent, strict=True) if v}
        out["postgres_backends_on_average"] = {k: round(v / samples, 2) for k, v in states.most_common()}
        out["lock_waits_by_statement"] = {k: round(v / samples, 2) for k, v in on_lock.most_common(5)}
    finally:
        await conn.close()


async def step_spans(since: float) -> dict[str, float]:
    """Mean ms from the saga write before to each forward step's ``done``, for orders created after ``since``
    (a wall-clock time), from the saga log; and p50/p99 of the whole saga, its order's first write to its last."""
    conn = await _stack_pg()
    try:
        rows = await conn.fetch(
            "SELECT step, avg(ms) AS ms FROM (SELECT l.step, l.phase, l.outcome, extract(epoch FROM l.created_at - "
            "lag(l.created_at) OVER (PARTITION BY l.order_id ORDER BY l.id)) * 1000 AS ms FROM order_saga_log l "
            "JOIN orders o ON o.id = l.order_id WHERE o.created_at >= to_timestamp($1)) x "
            "WHERE phase = 'forward' AND outcome = 'done' GROUP BY step ORDER BY ms DESC", since)
        whole = await conn.fetchrow(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99 FROM (SELECT extract(epoch FROM "
            "max(l.created_at) - o.created_at) * 1000 AS ms FROM orders o JOIN order_saga_log l ON l.order_id = o.id "
            "WHERE o.created_at >= to_timestamp($1) GROUP BY o.id, o.created_at) x", since)
        spans = {r["step"]: round(float(r["ms"]), 1) for r in rows}
        if whole["p50"] is not None:  # the order's first write to its last: what of the answer's wait the saga is
            spans |= {"saga_p50": round(float(whole["p50"]), 1), "saga_p99": round(float(whole["p99"]), 1)}
        return spans
    finally:
        await conn.close()


async def stock_left(http: httpx.AsyncClient, ops: dict[str, str], sku: str) -> int:
    r = await http.get(f"{INV}/stock", params={"sku": sku}, headers=ops)
    return int(r.json()[0]["on_hand"])


async def orders_by_status() -> dict[str, Counter[str]]:
    """Every order of the stack so far, counted by status and by its first line's SKU (which names its product)."""
    conn = await _stack_pg()
    try:
        rows = await conn.fetch("SELECT status, request->'lines'->0->>'sku' AS sku, count(*) AS n FROM orders "
                                "GROUP BY 1, 2")
    finally:
        await conn.close()
    out: dict[str, Counter[str]] = {}
    for r in rows:
        out.setdefault(r["status"], Counter())[r["sku"]] += r["n"]
    return out


def wrk_orders(binary: str, api: str, headers: dict[str, str], pairs: list[list[str]], *, connections: int,
               seconds: float, rate: float | None = None) -> dict[str, Any]:
    """Orders sent by ``wrk`` (closed loop) or by ``wrk2`` at ``rate`` (open loop: latency from each request's
    intended send time) through bench/orders.lua, each with its own idempotency key, the products in turn: the
    tool's summary (requests/s, p50 and p99, non-2xx answers)."""
    from replica_kill import parse_wrk2
    from throughput import wrk_summary

    argv = [binary, "-t2", f"-c{connections}", f"-d{round(seconds)}s", "--latency",
            "-s", os.path.join(os.path.dirname(__file__), "orders.lua")]
    if rate is not None:
        argv.append(f"-R{max(1, round(rate))}")  # wrk2 takes whole requests per second
    # The token reaches the script through the environment, not the command line, which `ps` shows everyone.
    env = {**os.environ, "NEXUS_BENCH_AUTHORIZATION": headers["Authorization"]}
    out = subprocess.run([*argv, f"{api}{API}/orders", "--", *(json.dumps(order_body(skus)) for skus in pairs)],
                         capture_output=True, text=True, check=True, env=env).stdout
    # wrk prints its percentiles as "50%  12.3ms"; wrk2 prints HdrHistogram's table.
    return wrk_summary(out) if rate is None else parse_wrk2(out)


async def all_settled(timeout_s: float = 90.0) -> dict[str, Any]:
    """Wait until no order is unsettled. wrk and wrk2 close their connections at the end with orders in flight, and
    Serve cancels those requests: their orders' changes run on (``saga.run_on``), and recovery would finish any that
    stopped once its lease ran out (``order_lease_s``, 30 s). How long that took, and how many orders were unsettled
    when the wait began."""
    from nexus_ray.deployments.commerce.orders.models import UNSETTLED

    began = time.perf_counter()
    first = None
    while True:
        counted = await orders_by_status()
        unsettled = sum(sum(counted.get(s, Counter()).values()) for s in UNSETTLED)
        first = unsettled if first is None else first
        if unsettled == 0 or time.perf_counter() - began > timeout_s:
            return {"unsettled_at_first": first, "unsettled_now": unsettled,
                    "waited_s": round(time.perf_counter() - began, 1)}
        await asyncio.sleep(0.5)


async def caught_up(timeout_s: float = 180.0) -> dict[str, Any]:
    """Wait until the stack has caught up with the load before: every order settled, every event of the outbox
    published, and the consumer groups' records of processed events no longer growing (two reads 2 s apart
    agree). How long each took: a closed loop that outran the event path leaves a backlog, and an open loop that
    began on it would measure the backlog's drain, not the rate's latency."""
    from nexus_ray.deployments.commerce.orders.models import UNSETTLED

    began = time.perf_counter()
    out: dict[str, Any] = {"unsettled_at_first": None}
    conn = await _stack_pg()
    try:
        last = None
        while time.perf_counter() - began < timeout_s:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM orders WHERE status = ANY($1::text[])) AS unsettled, "
                "(SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished, "
                "(SELECT count(*) FROM processed_events) AS processed", list(UNSETTLED))
            if out["unsettled_at_first"] is None:
                out.update(unsettled_at_first=row["unsettled"], unpublished_at_first=row["unpublished"])
            now = round(time.perf_counter() - began, 1)
            if row["unsettled"] == 0:
                out.setdefault("settled_after_s", now)
            if row["unpublished"] == 0:
                out.setdefault("published_after_s", now)
            if row["unsettled"] == 0 and row["unpublished"] == 0 and row["processed"] == last:
                out["consumed_after_s"] = round(now - 2.0, 1)
                return out
            last = row["processed"]
            await asyncio.sleep(2.0)
    finally:
        await conn.close()
    return {**out, "timed_out_after_s": timeout_s}


async def completed_orders() -> int:
    """How many orders of the stack have completed so far."""
    return sum((await orders_by_status()).get("completed", Counter()).values())


def rates_of(spec: str, closed_per_s: float) -> list[float]:
    """The fixed rates of ``--rates``: ``auto`` is a quarter, half and nine tenths of what the closed loop completed,
    ``half`` half of it."""
    if spec in ("auto", "half"):
        return [round(closed_per_s * f, 1) for f in ((0.25, 0.5, 0.9) if spec == "auto" else (0.5,))]
    return [r for r in (float(x) for x in spec.split(",") if x) if r > 0]


async def stock_check(http: httpx.AsyncClient, ops: dict[str, str], pairs: list[list[str]],
                      completed: Counter[int]) -> dict[str, Any]:
    """Each completed order took 1 of its product's first SKU and 2 of the second: the products whose stock says
    otherwise."""
    wrong = []
    for k, skus in enumerate(pairs):
        left = [await stock_left(http, ops, sku) for sku in skus]
        if left != [STOCK - completed[k], STOCK - 2 * completed[k]]:
            wrong.append({"skus": skus, "on_hand": left, "completed": completed[k]})
    return {"products": len(pairs), "completed_orders": sum(completed.values()),
            "products_whose_stock_is_not_what_their_orders_took": wrong}


async def run(args: argparse.Namespace) -> None:
    limits = httpx.Limits(max_connections=max(args.concurrency, 256), max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=args.api, timeout=60, limits=limits) as http:
        pairs, ops = await set_up(http, args.products)
        buyer = bearer("bench-buyer", "commerce:order-processor:read", "commerce:order-processor:write")
        completed: Counter[int] = Counter()

        async def by_wrk(binary: str, seconds: float, rate: float | None = None) -> dict[str, Any]:
            before = await completed_orders()
            began = time.perf_counter()
            connections = (args.concurrency if rate is None
                           else args.rate_connections or 2 * max(1, math.ceil(rate / 20)))
            summary = await asyncio.to_thread(wrk_orders, binary, args.api, buyer, pairs, connections=connections,
                                              seconds=seconds, rate=rate)
            per_s = round((await completed_orders() - before) / (time.perf_counter() - began), 1)
            return {**({"rate": max(1, round(rate))} if rate is not None else {}), "completed_per_s": per_s, **summary}

        warm, done = await closed_loop(http, buyer, pairs, concurrency=4, seconds=5)
        completed += done
        print("warm-up:", json.dumps(warm), flush=True)
        cpu: dict[str, float] = {}
        watchers = []
        if args.cpu or args.py_spy:
            from rate_cpu import print_cpu, print_kinds, watch

            watchers = watch(cpu, wait_s=5, span_s=max(1.0, args.duration - 10), spy_out=args.py_spy,
                             spy_match=args.spy_match, me=True)
        waited: dict[str, Any] = {}
        sampler = None
        if args.waits:
            async def sample_later() -> None:
                await asyncio.sleep(5)
                await waits(max(1.0, args.duration - 10), waited)

            sampler = asyncio.create_task(sample_later())
        loop_began = time.time()
        if args.wrk:
            result = await by_wrk("wrk", args.duration)
            print(f"closed loop (wrk), {args.concurrency} connections:", json.dumps(result), flush=True)
        else:
            result, done = await closed_loop(http, buyer, pairs, concurrency=args.concurrency, seconds=args.duration)
            completed += done
            print(f"closed loop, {args.concurrency} clients:", json.dumps(result), flush=True)
        if sampler is not None:
            await sampler
            print("closed loop, 5th second to 5 s before the end, what it waited on:", json.dumps(waited))
            print("closed loop, mean ms from the saga write before to each step's end:",
                  json.dumps(await step_spans(loop_began)), flush=True)
        for t in watchers:
            t.join()
        if cpu:
            print(f"closed loop, 5th second to 5 s before the end, {result['completed_per_s']} orders/s:", end=" ")
            print_cpu(cpu, top=12)
            print_kinds(cpu, result["completed_per_s"])
        for rate in rates_of(args.rates, result["completed_per_s"]):
            print("caught up before the fixed rate:", json.dumps(await caught_up()), flush=True)
            rate_began = time.time()
            rate_cpu: dict[str, float] = {}
            if args.cpu:
                watchers = watch(rate_cpu, wait_s=5, span_s=max(1.0, args.rate_duration - 10), me=True,
                                 spy_out=args.rate_py_spy and f"{args.rate_py_spy}.{rate:g}", spy_match=args.spy_match)
            if args.wrk:
                print("open loop (wrk2):", json.dumps(await by_wrk(os.environ.get("WRK2", "wrk2"),
                                                                   args.rate_duration, rate)), flush=True)
            else:
                result, done = await open_loop(http, buyer, pairs, rate=rate, seconds=args.rate_duration)
                completed += done
                print("open loop:", json.dumps(result), flush=True)
            print("fixed rate, mean ms from the saga write before to each step's end:",
                  json.dumps(await step_spans(rate_began)), flush=True)
            if args.cpu:
                for t in watchers:
                    t.join()
                print(f"fixed rate {rate}/s, 5th second to 5 s before the end:", end=" ")
                print_cpu(rate_cpu, top=6)
                print_kinds(rate_cpu, rate)
        if args.wrk:  # wrk does not tell which orders completed: the stack's database does, once all have settled
            print("orders settled:", json.dumps(await all_settled()))
            counted = await orders_by_status()
            print("orders by status:", json.dumps({k: sum(v.values()) for k, v in counted.items()}))
            firsts = counted.get("completed", Counter())
            completed = Counter({k: firsts[skus[0]] for k, skus in enumerate(pairs)})
        print("stock check:", json.dumps(await stock_check(http, ops, pairs, completed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--rates", default="25,50,100")
    parser.add_argument("--rate-duration", type=float, default=30)
    parser.add_argument("--products", type=int, default=1, help="Products (two SKUs each) the orders take in turn: "
                        "1 puts every order on the same two stock rows.")
    parser.add_argument("--cpu", action="store_true", help="The CPU of every stack process during the closed loop.")
    parser.add_argument("--waits", action="store_true", help="What the closed loop waited on: the machine's time "
                        "split, PostgreSQL's backends sampled, and the saga's step times.")
    parser.add_argument("--py-spy", help="Write a raw py-spy profile of one stack process during the closed loop here.")
    parser.add_argument("--rate-py-spy", help="With --cpu: write a raw py-spy profile of one stack process during "
                        "each fixed rate here (PATH.RATE).")
    parser.add_argument("--spy-match", default="ServeReplica:commerce")
    parser.add_argument("--wrk", action="store_true", help="Send the closed loop's orders with wrk and the fixed "
                        "rates' with wrk2 -R (bench/orders.lua), instead of this process's own client.")
    parser.add_argument("--rate-connections", type=int, default=0, help="wrk2's connections at the fixed rates (at "
                        "least 2: one per thread); 0: 2 for every 20 orders/s begun. See the module's docstring.")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
