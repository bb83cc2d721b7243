"""What a round trip to PostgreSQL and a transaction's BEGIN and COMMIT cost, in the client and in the server.

    .venv/bin/python bench/round_trips.py [--number 3000]

Starts the embedded stores in a fresh temporary directory (stopped at the end) and, over one asyncpg connection on
uvloop, as the platform's services talk to PostgreSQL, times four ways of doing small work, one after another,
alternated twice:

* ``BEGIN + 3 + COMMIT``: a transaction of two inserts and a read, each its own round trip (five in all);
* ``one statement``: the same two inserts and read as one statement (CTEs), which commits on its own;
* ``one read``: the read alone;
* ``BEGIN + read + COMMIT``: the read inside a transaction (what ``BEGIN`` and ``COMMIT`` add).

Prints, per call, the wall time and the CPU of this process and of PostgreSQL's processes. What it answers: how much
of an order's cost the number of round trips explains (an order makes about 55).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from on_stores import on_stores, private_stores

DIR = private_stores("nexus-bench-round-trips-")

from rate_cpu import per_call  # noqa: E402


async def run(args: argparse.Namespace, store_pids: list[int]) -> None:
    import asyncpg

    conn = await asyncpg.connect(os.environ["NEXUS_POSTGRES_URL"])
    try:
        await conn.execute("CREATE TABLE rt_a (id bigserial PRIMARY KEY, a int, b text); "
                           "CREATE TABLE rt_b (id bigserial PRIMARY KEY, a int)")

        async def transaction() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO rt_a (a, b) VALUES ($1, $2)", 1, "x")
                await conn.execute("INSERT INTO rt_b (a) VALUES ($1)", 1)
                await conn.fetchval("SELECT count(*) FROM rt_b WHERE id = $1", 5)

        async def one_statement() -> None:
            await conn.fetchval("WITH x AS (INSERT INTO rt_a (a, b) VALUES ($1, $2)), y AS (INSERT INTO rt_b (a) "
                                "VALUES ($1)) SELECT count(*) FROM rt_b WHERE id = $3", 1, "x", 5)

        async def read() -> None:
            await conn.fetchval("SELECT count(*) FROM rt_b WHERE id = $1", 5)

        async def read_in_transaction() -> None:
            async with conn.transaction():
                await conn.fetchval("SELECT count(*) FROM rt_b WHERE id = $1", 5)

        ways = (("BEGIN + 3 + COMMIT", transaction), ("one statement", one_statement), ("one read", read),
                ("BEGIN + read + COMMIT", read_in_transaction))
        print(f"{args.number} calls each, microseconds a call:")
        for _ in range(2):
            for label, way in ways:
                for _ in range(200):  # warm: statements prepared
                    await way()
                wall, me, pg = await per_call(lambda _, w=way: w(), args.number, store_pids)
                print(f"  {label:<22} wall {wall:5.0f}   this process {me:4.0f}   PostgreSQL {pg:4.0f}", flush=True)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=3000)
    args = parser.parse_args()
    import uvloop

    uvloop.run(on_stores(DIR, lambda pids: run(args, pids)))


if __name__ == "__main__":
    main()
