"""One ledger batch at a time: each statement's time, and the CPU of this process and of PostgreSQL per batch.

    .venv/bin/python bench/ledger_statements.py [--batches 30] [--size 1000] [--hot] [--foreign-keys]

Calls :mod:`nexus_ray.deployments.commerce.ledger.service` directly (no HTTP) on throwaway embedded stores:
200 funded wallets, then ``--batches`` batches of 1,000 transfers, each awaited before the next, so that a
statement's time is PostgreSQL's work on it and nothing waits on another batch. ``--hot``: every transfer pays
the platform's fee account instead of another wallet. ``--size 1``: one transfer per call (the path of
``POST /transfers``, which locks before it writes), the figures then per transfer.

``--foreign-keys`` first puts back the schema before ``1101_ledger_postings_refer.sql``: the postings' two
foreign keys instead of the statement-level check (to compare the two on the same code, in alternate runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

# bench/ is on sys.path when a bench runs
from ledger import funded_accounts
from scratch import NO_RATE_LIMIT, CpuMeter, machine, scratch_stores

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_FOREIGN_KEYS = """
DROP TRIGGER ledger_postings_refer ON ledger_postings;
ALTER TABLE ledger_postings
    ADD CONSTRAINT ledger_postings_entry_id_fkey FOREIGN KEY (entry_id) REFERENCES ledger_entries (id),
    ADD CONSTRAINT ledger_postings_account_id_fkey FOREIGN KEY (account_id) REFERENCES ledger_accounts (id);
"""

_spent: defaultdict[str, list[float]] = defaultdict(list)


def _time_statements() -> None:
    """Time every statement this process sends, by its first words (a bench's wrapper of asyncpg's executor)."""
    execute = asyncpg.connection.Connection._execute

    async def timed(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return await execute(self, query, *args, **kwargs)
        finally:
            _spent[" ".join(query.split()[:3])[:60]].append(time.perf_counter() - t)

    asyncpg.connection.Connection._execute = timed  # type: ignore[method-assign]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.commerce.ledger import service
    from nexus_ray.runtime import heap
    from nexus_ray.stores import postgres

    heap.settle(get_settings())  # as a serving process does

    fee, wallets = await funded_accounts()
    if args.foreign_keys:
        await (await postgres.pool()).execute(_FOREIGN_KEYS)
    rng = random.Random(1)
    _spent.clear()
    meter = CpuMeter()
    meter.start()
    began = time.perf_counter()
    for _ in range(args.batches):
        requests = []
        for _ in range(args.size):
            debit, credit = (rng.choice(wallets), fee) if args.hot else rng.sample(wallets, 2)
            requests.append(service.transfer_request(debit_account_id=debit, credit_account_id=credit,
                                                     amount=rng.randint(1, 10_000), currency="USD",
                                                     idempotency_key=uuid.uuid4().hex))
        if args.size == 1:
            await service.post_one(caller="bench", privileged=True, request=requests[0])
        else:
            await service.post_batch_json(caller="bench", privileged=True, requests=requests, minimal=True)
    wall = time.perf_counter() - began
    cpu = meter.stop()
    per = 1000 / args.batches
    return {
        "schema": "foreign keys" if args.foreign_keys else "statement check", "hot": args.hot,
        "batches": args.batches, "size": args.size, "wall_ms_per_batch": round(wall * per, 1),
        "process_cpu_ms_per_batch": round(cpu["process"] * per, 1),
        "postgres_cpu_ms_per_batch": round(cpu["postgres"] * per, 1),
        "statements_ms_per_batch": {q: round(sum(v) * per, 1)
                                    for q, v in sorted(_spent.items(), key=lambda kv: -sum(kv[1]))},
        "reconciliation_clean": (await service.reconcile()).clean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="batches of 1,000 transfers, one after another")
    parser.add_argument("--size", type=int, default=1000, help="transfers per batch; 1: one per call, post_one")
    parser.add_argument("--hot", action="store_true", help="every transfer pays the fee account")
    parser.add_argument("--foreign-keys", action="store_true",
                        help="the postings' foreign keys instead of the statement-level check (the schema before)")
    args = parser.parse_args()
    _time_statements()
    with scratch_stores("nexus-bench-ledger-statements-", **NO_RATE_LIMIT):
        results = asyncio.run(run(args))
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
