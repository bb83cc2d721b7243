"""PostgreSQL's CPU for the outbox's three statements, per 1,000 events: the insert (as ``emit_many`` writes it),
the relay's read of unpublished events, and the relay's mark of the published ones.

    .venv/bin/python bench/outbox_statements.py [--batches 30] [--rounds 3]

On throwaway embedded stores, a table shaped like ``outbox`` (the same columns and indexes) is written in
statements of 1,000 ledger-sized payloads (about 350 bytes of JSON each), then read and marked as the relay does,
one statement at a time. Each round measures three variants in turn, so that the host's drift touches all of
them alike:

* ``jsonb``            -- the payload as jsonb, with the index by broker offset (the schema before 0004);
* ``json``             -- the payload as json (kept as its text), with the index by broker offset;
* ``json, no offsets`` -- json, without the index by broker offset (the schema since 0004).

PostgreSQL's CPU comes from /proc (``scratch.CpuMeter``: its postmaster and backends), whose ticks are 10 ms:
the figures are means over ``--batches`` statements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

# bench/ is on sys.path when a bench runs
from scratch import CpuMeter, machine, scratch_stores

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_TABLE = """
DROP TABLE IF EXISTS outbox_bench;
CREATE TABLE outbox_bench (
    id bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE, topic text NOT NULL, key text,
    payload {payload} NOT NULL, headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz, partition integer, "offset" bigint);
CREATE INDEX outbox_bench_unpublished ON outbox_bench (id) WHERE published_at IS NULL;
"""
_OFFSETS = ('CREATE INDEX outbox_bench_offsets ON outbox_bench (topic, partition, "offset") '
            "WHERE published_at IS NOT NULL")
VARIANTS = (("jsonb", "jsonb", True), ("json", "json", True), ("json, no offsets", "json", False))


def _payload() -> str:
    """A posted transfer's entry, as the ledger writes its event."""
    def line(side: str) -> dict[str, Any]:
        return {"account_id": str(uuid.uuid4()), "side": side, "amount": 1234, "currency": "USD"}

    return orjson.dumps({"id": str(uuid.uuid4()), "kind": "transfer", "reverses": None, "hold_id": None,
                         "description": "", "metadata": {}, "created_by": "bench",
                         "created_at": "2026-12-02T05:00:00.123456+00:00",
                         "lines": [line("debit"), line("credit")]}).decode()


async def _variant(conn: Any, meter: CpuMeter, payload: str, offsets: bool, batches: int) -> dict[str, float]:
    await conn.execute(_TABLE.format(payload=payload))
    if offsets:
        await conn.execute(_OFFSETS)
    spent = {"insert": 0.0, "relay read": 0.0, "relay mark": 0.0}

    async def timed(name: str, statement: Any) -> Any:
        meter.start()
        out = await statement
        spent[name] += meter.stop()["postgres"]
        return out

    for _ in range(batches):
        payloads = [_payload() for _ in range(1000)]
        ids = [uuid.uuid4() for _ in payloads]
        async with conn.transaction():
            await timed("insert", conn.execute(
                f"INSERT INTO outbox_bench (event_id, topic, key, payload, headers) SELECT e, $2, k, p::{payload}, "
                "$4 FROM unnest($1::uuid[], $3::text[], $5::text[]) WITH ORDINALITY AS u(e, k, p, n) ORDER BY n",
                ids, "ledger.entry.posted", [str(i) for i in ids], "{}", payloads))
        rows = await timed("relay read", conn.fetch(
            "SELECT id, event_id, topic, key, payload::text AS payload, headers, created_at FROM outbox_bench "
            "WHERE published_at IS NULL ORDER BY id LIMIT 1000"))
        await timed("relay mark", conn.execute(
            'UPDATE outbox_bench o SET published_at = now(), partition = u.p, "offset" = u.o '
            "FROM unnest($1::bigint[], $2::int4[], $3::int8[]) AS u(id, p, o) WHERE o.id = u.id",
            [r["id"] for r in rows], [0] * len(rows), list(range(len(rows)))))
    return {k: round(v / batches * 1000, 1) for k, v in spent.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from nexus_ray.config import get_settings

    conn = await asyncpg.connect(get_settings().postgres_url)
    try:
        meter = CpuMeter()
        rounds = []
        for _ in range(args.rounds):
            rounds.append({name: await _variant(conn, meter, payload, offsets, args.batches)
                           for name, payload, offsets in VARIANTS})
        return {"postgres_cpu_ms_per_1000_events": rounds, "machine": machine()}
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with scratch_stores("nexus-bench-outbox-"):
        print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
