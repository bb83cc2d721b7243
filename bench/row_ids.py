"""Random (version 4) against time-ordered (version 7, ``stores.postgres.new_ids``) ids as the key of a large
table: PostgreSQL's CPU and the WAL written per 1,000 rows inserted.

    .venv/bin/python bench/row_ids.py [--rows 1000000] [--statements 50] [--rounds 2]

On throwaway embedded stores, for each kind of id in turn: a table keyed by a uuid is filled with ``--rows`` rows
of that kind, a checkpoint is taken (so the WAL holds a full-page image of each page first touched after it,
as it does after every checkpoint of a running database), then ``--statements`` statements of 1,000 rows are
inserted and measured. PostgreSQL's CPU comes from /proc (``scratch.CpuMeter``), the WAL from its positions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

# bench/ is on sys.path when a bench runs
from scratch import CpuMeter, machine, scratch_stores

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _random_ids(n: int) -> list[uuid.UUID]:
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[i:i + 16], version=4) for i in range(0, 16 * n, 16)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from nexus_ray.config import get_settings
    from nexus_ray.stores.postgres import new_ids

    conn = await asyncpg.connect(get_settings().postgres_url)
    meter = CpuMeter()
    insert = "INSERT INTO ids_bench SELECT i, '' FROM unnest($1::uuid[]) AS i"
    rounds = []
    try:
        for _ in range(args.rounds):
            found = {}
            for name, make in (("random (v4)", _random_ids), ("time-ordered (v7)", new_ids)):
                await conn.execute("DROP TABLE IF EXISTS ids_bench; "
                                   "CREATE TABLE ids_bench (id uuid PRIMARY KEY, note text NOT NULL)")
                for start in range(0, args.rows, 5000):
                    await conn.execute(insert, make(min(5000, args.rows - start)))
                await conn.execute("CHECKPOINT")
                lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
                meter.start()
                for _ in range(args.statements):
                    await conn.execute(insert, make(1000))
                cpu = meter.stop()["postgres"]
                wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn)
                found[name] = {"postgres_cpu_ms_per_1000": round(cpu / args.statements * 1000, 1),
                               "wal_kib_per_1000": round(float(wal) / args.statements / 1024, 1)}
            rounds.append(found)
    finally:
        await conn.close()
    return {"rows_before": args.rows, "rounds": rounds, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--statements", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with scratch_stores("nexus-bench-ids-"):
        print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
