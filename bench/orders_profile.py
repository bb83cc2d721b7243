"""Where an order's time goes: the whole saga in one process, on the real embedded stores, profiled.

    .venv/bin/python bench/orders_profile.py [--orders 200] [--concurrency 1] [--profile out.pstats] [--trace]

Starts the embedded stores in a fresh temporary directory (stopped at the end), builds the
``commerce`` application in this process and sends ``--orders`` orders through it over ASGI (no
sockets, no Serve, no HAProxy: the saga, the edge's checks and the stores only), each with its own
idempotency key, the same order as bench/orders.py. It prints

* the CPU seconds per order of this process and of every store server process (from /proc), so
  the split between Python and PostgreSQL/Mongo/Redis is measured, not guessed;
* the mean wall time of each saga step, from the saga log's own timestamps;
* with ``--profile``, the functions that took this process's time (cProfile, sorted by own time);
* with ``--queries N``, the statements per order and the N most frequent; with ``--trace``, every statement of one
  more order in the order it was sent, numbered by connection (which ones share a transaction, which read again
  what was just read);
* with ``--statement-times N``, the time PostgreSQL spent on the statements, from its own log
  (``log_min_duration_statement = 0`` for the measured orders only): per order by protocol phase (bind is where a
  statement is planned for its parameters) and the N statements that took the most.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from on_stores import on_stores, private_stores

DIR = private_stores("nexus-bench-orders-")

import httpx  # noqa: E402
import orders as bench_orders  # noqa: E402
from rate_cpu import cpu_of  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    await on_stores(DIR, lambda store_pids: run(args, store_pids))


async def run(args: argparse.Namespace, store_pids: list[int]) -> None:
    from nexus_ray.deployments.app import build_app
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import tokens
    from nexus_ray.stores import postgres

    wire_edge()
    app = build_app("commerce")
    async with app.router.lifespan_context(app):
        await tokens.prepare()

        def bearer(subject: str, *scopes: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {tokens.issue(subject, list(scopes), ttl_s=3600, actor='bench')}"}

        bench_orders.bearer = bearer  # the same set-up as bench/orders.py, with in-process tokens
        transport = httpx.ASGITransport(app=_Prefixed(app), client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://nexus.test", timeout=60) as http:
            pairs, _ = await bench_orders.set_up(http)
            buyer = bearer("bench-buyer", "commerce:order-processor:read", "commerce:order-processor:write")
            body = bench_orders.order_body(pairs[0])
            warm = bench_orders.Tally()
            for _ in range(10):
                await warm.order(http, buyer, body)
            tally = bench_orders.Tally()
            queue = list(range(args.orders))

            async def worker() -> None:
                while queue:
                    queue.pop()
                    await tally.order(http, buyer, body)

            trace: list[tuple[int, str]] = []
            counts = _count_queries(trace) if args.queries or args.trace else None
            profiler = cProfile.Profile() if args.profile else None
            pg_log = await _log_statements(True) if args.statement_times else None
            pool = await postgres.pool()
            wal0 = await pool.fetchrow(_WAL)
            before_me, before_stores = time.process_time(), cpu_of(store_pids)
            began = time.perf_counter()
            if profiler:
                profiler.enable()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            if profiler:
                profiler.disable()
            wall = time.perf_counter() - began
            me = time.process_time() - before_me
            after_stores = cpu_of(store_pids)
            if pg_log is not None:
                await _log_statements(False)
            n = args.orders
            print(f"{n} orders, concurrency {args.concurrency}: {wall:.1f} s wall, {n / wall:.1f} orders/s, "
                  f"codes {dict(tally.codes)}")
            print(f"  this process (app + client): {1000 * me / n:.1f} ms CPU per order")
            for name, t in sorted(after_stores.items(), key=lambda kv: -(kv[1] - before_stores.get(kv[0], 0.0))):
                spent = t - before_stores.get(name, 0.0)
                if spent > 0.0001 * n:  # every store process that spent 0.1 ms an order or more
                    print(f"  {name}: {1000 * spent / n:.1f} ms CPU per order")
            summary = tally.summary(wall)
            if pg_log is not None:
                _print_statement_times(pg_log, args.orders, args.statement_times)
            print(f"  latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms")
            wal1 = await pool.fetchrow(_WAL)
            print("  WAL per order: " + ", ".join(f"{k} {(wal1[k] - wal0[k]) / n:,.1f}" for k in wal1.keys()))
            if counts is not None:
                print(f"  statements per order: {sum(counts.values()) / n:.1f}")
                for text, k in counts.most_common(args.queries):
                    print(f"    {k / n:6.2f}  {text[:150]}")
            if args.trace:  # one more order, its statements in the order sent, numbered by connection
                trace.clear()
                trace.append((0, ""))  # on: _count_queries appends while the list is not empty
                await tally.order(http, buyer, body)
                conns: dict[int, int] = {}
                print(f"  the statements of one more order ({len(trace) - 1}, the relay's among them), "
                      f"by connection:")
                for conn, text in trace[1:]:
                    print(f"    {conns.setdefault(conn, len(conns)):2d}  {text[:140]}")
                trace.clear()
            rows = await pool.fetch(
                "WITH l AS (SELECT order_id, step, phase, outcome, created_at AS at, "
                "lag(created_at) OVER (PARTITION BY order_id ORDER BY id) AS prev FROM order_saga_log) "
                "SELECT step, phase, count(*) AS n, avg(extract(epoch FROM at - prev)) * 1000 AS ms FROM l "
                "WHERE outcome IN ('done', 'failed') AND prev IS NOT NULL GROUP BY step, phase ORDER BY ms DESC")
            print("  saga log, mean ms from the line before to each step's end:")
            for r in rows:
                print(f"    {r['step']:<10} {r['phase']:<8} n={r['n']:<5} {r['ms']:.1f} ms")
            if profiler:
                profiler.dump_stats(args.profile)
                stats = pstats.Stats(profiler)
                stats.sort_stats("tottime").print_stats(35)
                stats.sort_stats("cumulative").print_stats(45)


#: What PostgreSQL wrote to its WAL so far (the server's counters, and the insert position in bytes).
_WAL = ("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8 AS bytes, wal_records::float8 AS records, "
        "wal_fpi::float8 AS full_page_images FROM pg_stat_wal")


async def _log_statements(on: bool) -> tuple[Path, int]:
    """Turn PostgreSQL's logging of every statement's duration on or off (the server's setting, reloaded): the
    log's path and its size at that moment (the measured part starts there)."""
    from nexus_ray.stores import postgres

    pg = await postgres.pool()
    await pg.execute(f"ALTER SYSTEM SET log_min_duration_statement = {0 if on else -1}")
    await pg.execute("SELECT pg_reload_conf()")
    # The reload is asynchronous: a statement logged from now on shows the new setting took.
    marker = f"statement-times-{'on' if on else 'off'}-{time.monotonic_ns()}"
    await pg.execute(f"SELECT '{marker}'")
    log = DIR / "logs" / "postgres.log"
    while on and marker not in log.read_text(errors="replace"):
        await asyncio.sleep(0.05)
        await pg.execute(f"SELECT '{marker}'")
    return log, log.stat().st_size


_DURATION = re.compile(r"duration: ([\d.]+) ms\s+(parse|bind|execute|statement)[^:]*: (.*)")


def _print_statement_times(pg_log: tuple[Path, int], orders: int, top: int) -> None:
    """The statement times PostgreSQL logged from ``pg_log``'s offset on, per order (see the module's docstring)."""
    path, offset = pg_log
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    by_phase: Counter[str] = Counter()
    by_statement: dict[str, Counter[str]] = {}
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if (m := _DURATION.search(line)) is None:
            continue
        ms, phase, statement = float(m.group(1)), m.group(2), " ".join(m.group(3).split())
        if not statement and n + 1 < len(lines):  # a statement that starts with a line break: its next line
            statement = " ".join(lines[n + 1].split())
        if "log_min_duration_statement" in statement or "statement-times-" in statement:
            continue
        by_phase[phase] += ms
        by_statement.setdefault(statement, Counter())[phase] += ms
    print(f"  PostgreSQL's statement time per order: {sum(by_phase.values()) / orders:.2f} ms; by phase: "
          + ", ".join(f"{k} {v / orders:.2f}" for k, v in by_phase.most_common()))
    print("  the statements that took the most, ms per order (bind / execute / simple protocol):")
    ranked = sorted(by_statement.items(), key=lambda kv: -sum(kv[1].values()))
    for statement, phases in ranked[:top]:
        print(f"    {sum(phases.values()) / orders:6.3f}  ({phases['bind'] / orders:.3f} / "
              f"{phases['execute'] / orders:.3f} / {phases['statement'] / orders:.3f})  {statement[:110]}")


def _count_queries(trace: list[tuple[int, str]]) -> Counter[str]:
    """Counts every statement sent to PostgreSQL from now on, by its text (BEGIN, COMMIT and resets too); while
    ``trace`` is not empty, each is also appended to it with its connection's id."""
    import asyncpg

    counts: Counter[str] = Counter()
    plain = asyncpg.Connection.execute
    extended = asyncpg.Connection._execute

    def seen(conn: object, query: str) -> None:
        text = " ".join(query.split())
        counts[text] += 1
        if trace:
            trace.append((id(conn), text))

    async def execute(self, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not args:
            seen(self, query)
        return await plain(self, query, *args, **kwargs)

    async def _execute(self, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen(self, query)
        return await extended(self, query, *args, **kwargs)

    asyncpg.Connection.execute = execute  # type: ignore[method-assign]
    asyncpg.Connection._execute = _execute  # type: ignore[method-assign]
    return counts


class _Prefixed:
    """Strips the ``/commerce`` prefix as the entrypoint's routing does."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app = app

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/commerce"):
            scope = {**scope, "root_path": "/commerce"}
        await self.app(scope, receive, send)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--profile", default="")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--queries", type=int, default=0, help="count statements and print the N most frequent")
    parser.add_argument("--statement-times", type=int, default=0,
                        help="PostgreSQL's time on the statements (from its log), and the N that took the most")
    parser.add_argument("--trace", action="store_true", help="print the statements of one more order, in order")
    _args = parser.parse_args()

    if _args.loop == "uvloop":  # what Ray's workers, Serve's replicas among them, run on
        import uvloop

        uvloop.run(main(_args))
    else:
        asyncio.run(main(_args))
