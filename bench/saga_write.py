"""What the saga's write costs when it returns the whole order, against the order without its bulk.

    .venv/bin/python bench/saga_write.py [--writes 3000] [--rounds 3]

Starts the embedded stores in a fresh temporary directory (stopped at the end) and migrates the schema through the
platform's pool. For each round and statement it creates fresh orders leased to one runner, each with
``bench/data/order_results.json`` as its ``results`` (one order's every step's result, about 4 KB of JSON: what the
saga's later writes carry). Then it sends the saga's own batch writer (``saga._write_together``, one write a batch,
as at a low rate) ``--writes`` writes, the orders in turn (five writes an order, as a checkout makes), each adding a
log line and a small step result, as the saga's writes do. The two
statements differ only in what they return:

* ``whole row``: every column of the order, as the statement did before (``saga.COLUMNS``);
* ``without bulk``: the statement as it is (``saga._WRITTEN``: all but the request, the results and the undone
  steps), with the runner's merge of those (what ``saga.write`` does after it) counted in.

Prints, per write, the wall time and the CPU of this process (asyncpg, the pool's JSON codec, the merge) and of
PostgreSQL's processes, for each statement, alternated ``--rounds`` times. Every write is checked to have been
applied (its fence held).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from on_stores import on_stores, private_stores

DIR = private_stores("nexus-bench-saga-write-")

from rate_cpu import per_call  # noqa: E402

RUNNER = "bench-runner:1"
WRITES_AN_ORDER = 5


async def run(args: argparse.Namespace, store_pids: list[int]) -> None:
    from nexus_ray.deployments.commerce.orders import saga
    from nexus_ray.stores import postgres

    results = json.loads((Path(__file__).parent / "data" / "order_results.json").read_text())
    request = {"lines": [{"sku": "SKU-1", "quantity": 1}], "payment_method": "pm_card_visa",
               "shipping_address": {"name": "A Shopper", "line1": "1 Main St", "city": "Springfield",
                                    "postal_code": "12345", "country": "US"}, "service_level": "standard"}
    pg = await postgres.pool()
    rows: dict[uuid.UUID, dict[str, object]] = {}

    async def new_orders() -> list[uuid.UUID]:
        """Fresh orders for a round, so that each is written as often as a checkout writes its order (5 times)."""
        ids = [uuid.uuid4() for _ in range(max(1, args.writes // WRITES_AN_ORDER))]
        await pg.execute(
            "INSERT INTO orders (id, customer, status, capture_method, currency, total, request, idempotency_key, "
            "request_hash, results, lease_owner, lease_until) SELECT i, 'bench', 'pending', 'automatic', 'USD', 2201, "
            "$2, i::text, 'h', $3, $4, now() + interval '1 hour' FROM unnest($1::uuid[]) AS i", ids, request, results,
            RUNNER)
        rows.update((r["id"], dict(r)) for r in await pg.fetch(f"SELECT {saga.COLUMNS} FROM orders WHERE id = ANY($1)",
                                                               ids))
        return ids

    slim = saga._WRITES
    whole = slim.replace(postgres.qualified("o", saga._WRITTEN), postgres.qualified("o", saga.COLUMNS)).replace(
        f"SELECT {saga._WRITTEN}, n,", f"SELECT {saga.COLUMNS}, n,")
    assert whole.count("o.results") == slim.count("o.results") + 1 and "SELECT id, customer, status, capture_method, " \
        "currency, total, request," in whole

    async def one(ids: list[uuid.UUID], i: int, merge: bool) -> None:
        row = rows[ids[i % len(ids)]]
        change = saga._Write(row["id"], "pending", {"probe": {"id": f"p-{i}"}}, {}, None, None, None, None, RUNNER,
                             "pending", [("probe", "forward", "done", {"id": f"p-{i}"})], None)
        new = (await saga._write_together(None, [change]))[0]
        assert new is not None, "a fence held a bench write back"
        if merge:  # what saga.write does with the slim answer
            saga._merged(row, change, new)

    print(f"{args.writes} writes a statement and round, one a batch, to fresh orders ({WRITES_AN_ORDER} writes each) "
          f"with {len(json.dumps(results))} characters of results:")
    for rnd in range(args.rounds):
        for label, statement, merge in (("whole row", whole, False), ("without bulk", slim, True)):
            saga._WRITES = statement
            warm = await new_orders()
            for i in range(100):  # warm: the statement prepared
                await one(warm, i, merge)
            ids = await new_orders()
            wall, me, pg_us = await per_call(lambda i, ids=ids, merge=merge: one(ids, i, merge), args.writes,
                                          store_pids)
            print(f"  round {rnd + 1}, {label:<13} wall {wall:6.0f} us   this process {me:5.0f} us   "
                  f"PostgreSQL {pg_us:5.0f} us", flush=True)
    saga._WRITES = slim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import uvloop

    uvloop.run(on_stores(DIR, lambda pids: run(args, pids)))


if __name__ == "__main__":
    main()
