"""Whose statements keep PostgreSQL busy at a fixed order rate: its CPU split by the stack process on each connection.

    WRK2=wrk2-spread flock /tmp/nexus-ray.lock timeout 600 bash bench/with_stack.sh python bench/pg_owners.py \
        [--rate 50] [--seconds 30]

Against a running stack (bench/with_stack.sh starts a private one). Sets up 50 products as bench/orders.py does and
sends its checkouts with wrk2 (``WRK2`` picks the binary) at ``--rate`` with 32 connections. From the 8th second,
for 15 s: the CPU of each PostgreSQL process, credited to the stack process at the other end of its connection
(found from the connection's client port), and every 20 ms the statements that are not idle, by that process
(``active``: PostgreSQL runs it; ``idle in transaction``: PostgreSQL waits for the process's next statement).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections import Counter, defaultdict

import httpx
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import orders as bench_orders


def _name(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:50]
    except psutil.Error:
        return str(pid)


async def run(args: argparse.Namespace) -> None:
    api = f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}"
    async with httpx.AsyncClient(base_url=api, timeout=60) as http:
        pairs, _ = await bench_orders.set_up(http, 50)
    buyer = bench_orders.bearer("bench-buyer", "commerce:order-processor:read", "commerce:order-processor:write")
    load = threading.Thread(target=bench_orders.wrk_orders, args=(os.environ.get("WRK2", "wrk2"), api, buyer, pairs),
                            kwargs={"connections": 32, "seconds": args.seconds, "rate": args.rate})
    load.start()
    await asyncio.sleep(8)
    conn = await bench_orders._stack_pg()
    try:
        port = await conn.fetchval("SELECT inet_server_port()")
        owners = {c.laddr.port: c.pid for c in psutil.net_connections(kind="tcp")
                  if c.raddr and c.raddr.port == port and c.pid}
        owner_of = {}
        for a in await conn.fetch("SELECT pid, client_port, backend_type FROM pg_stat_activity "
                                  "WHERE pid <> pg_backend_pid()"):
            pid = owners.get(a["client_port"])
            owner_of[a["pid"]] = f"{pid} {_name(pid)}" if pid else f"({a['backend_type']})"
        began_cpu = {}
        for pid in owner_of:
            try:
                began_cpu[pid] = sum(psutil.Process(pid).cpu_times()[:2])
            except psutil.Error:
                pass
        busy: dict[str, Counter[str]] = defaultdict(Counter)
        began, samples = time.monotonic(), 0
        while time.monotonic() - began < 15:
            for r in await conn.fetch("SELECT pid, state, left(query, 90) AS q FROM pg_stat_activity WHERE state <> "
                                      "'idle' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"):
                busy[owner_of.get(r["pid"], "?")][f"{r['state'][:19]:<19} | {r['q']}"] += 1
            samples += 1
            await asyncio.sleep(0.02)
        span = time.monotonic() - began
        cpu: Counter[str] = Counter()
        for pid, before in began_cpu.items():
            try:
                cpu[owner_of[pid]] += (sum(psutil.Process(pid).cpu_times()[:2]) - before) / span * 100
            except psutil.Error:
                pass
    finally:
        await conn.close()
    load.join()
    print(f"{args.rate}/s: PostgreSQL's CPU, % of one core, by the process at the other end of each connection:")
    for owner, pct in cpu.most_common():
        if pct >= 0.5:
            print(f"  {pct:5.1f}  {owner}  ({pct * 10 / args.rate:.2f} ms an order)")
    print(f"statements not idle, mean number at a time ({samples} samples), by process:")
    for owner, seen in sorted(busy.items(), key=lambda kv: -sum(kv[1].values())):
        print(f"  {sum(seen.values()) / samples:5.2f}  {owner}")
        for statement, n in seen.most_common(6):
            print(f"      {n / samples:5.2f}  {statement}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
