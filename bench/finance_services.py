"""token-mgr, puabomusicchain and loan-processor on the real stores: the cap under concurrent mints, a chain of a
million records verified out of PostgreSQL, proofs, and a royalty run over thousands of works on the ledger.

    PYTHONPATH=. .venv/bin/python bench/finance_services.py [--mints 1000 --cap 500] [--records 1000000]
        [--works 10000] [--only mints|chain|royalties] [--seed 8]

In-process: starts the embedded stores in a temporary data directory and builds the ``finance``
namespace app in this process (the edge and the services as deployed, without Serve; the
ledger is reached through its exports in the same process, as ``call`` does outside Serve).

* ``mints``     -- ``--mints`` mints of one unit each against a token whose cap is ``--cap``: all at once
  against the service functions (the cap's own concurrency: the edge, with a Redis connection per request in
  flight, is not what is measured), then through POST /tokens/{id}/mint with ``--in-flight`` requests at a
  time; how many succeed (must be exactly the cap), the token's supply and the units in the ledger wallets.
* ``royalties`` -- ``--works`` works, each with a split of 2 to 7 holders in uneven basis points, appended
  to the chain through the service; then one royalty run (the service function; its HTTP route takes the
  same) paying every work an uneven amount: seconds, ledger entries, and the sum check (paid in = split
  lines = credited to the holders' ledger wallets).
* ``chain``     -- the chain grown to ``--records`` records (COPY of records made by the compute module,
  continuing the head), a root published over it, then the service's verification (streamed out of
  PostgreSQL in storage order) timed; then one record altered with the trigger disabled and verified again
  (it must be named); proofs: first one (builds the tree of the root), next ones, their size, and the
  client-side check.

Prints one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from scratch import NO_RATE_LIMIT, machine, scratch_stores  # bench/ is on sys.path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Timer:
    """Wall and CPU seconds of a block: on a shared machine the CPU time is the steadier figure."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def figures(self, name: str) -> dict[str, float]:
        return {f"{name}_wall_s": round(self.wall, 3), f"{name}_cpu_s": round(self.cpu, 3)}


async def bench_mints(c: Any, admin: dict[str, str], mints: int, cap: int, in_flight: int) -> dict[str, Any]:
    """All ``mints`` at once against the service (the cap's own concurrency), then again over HTTP."""
    from nexus_ray.deployments.finance.tokens import service
    from nexus_ray.exceptions import Conflict

    out: dict[str, Any] = {}
    for mode, code in (("service_all_at_once", "QMB"), (f"http_{in_flight}_in_flight", "QMC")):
        token = (await service.create_token(caller="bench", code=code, name=mode, decimals=0, supply_cap=cap)).id
        gate = asyncio.Semaphore(in_flight)

        async def one(n: int, token: Any = token, mode: str = mode, gate: asyncio.Semaphore = gate) -> int:
            if mode.startswith("service"):
                try:
                    await service.mint(token_id=token, caller="bench", to_holder=f"holder-{n % 50}", amount=1,
                                       idempotency_key=f"mint-{n}")
                except Conflict:
                    return 409
                return 201
            async with gate:
                resp = await c.post(f"/finance/v1/tokens/tokens/{token}/mint",
                                    json={"to_holder": f"holder-{n % 50}", "amount": 1, "idempotency_key": f"m-{n}"},
                                    headers=admin)
                return resp.status_code

        with Timer() as t:
            codes = await asyncio.gather(*(one(n) for n in range(mints)))
        got = await service.get_token(token_id=token)
        held = 0
        for h in range(50):
            held += (await service.balance(token_id=token, holder=f"holder-{h}")).balance
        out[mode] = {"mints_sent": mints, "cap": cap, "succeeded": codes.count(201), "refused_409": codes.count(409),
                     "other": len(codes) - codes.count(201) - codes.count(409), "minted_on_token": got.minted,
                     "units_in_ledger_wallets": held,
                     "exactly_cap": codes.count(201) == cap == got.minted == held,
                     **t.figures("all_mints"), "mints_per_s_wall": round(mints / t.wall, 1)}
    return out


def uneven_split(rng: random.Random, holders: int, pool: int) -> dict[str, int]:
    cuts = sorted(rng.sample(range(1, 10_000), holders - 1))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, 10_000], strict=True)]
    names = rng.sample(range(pool), holders)
    return {f"holder-{n:05d}": p for n, p in zip(names, parts, strict=True)}


async def bench_royalties(works: int, seed: int) -> dict[str, Any]:
    from nexus_ray.deployments.finance.music_chain import service
    from nexus_ray.deployments.finance.music_chain.models import Payment, SplitBody
    from nexus_ray.stores import postgres

    rng = random.Random(seed)
    splits = {f"work-{w:06d}": uneven_split(rng, rng.randint(2, 7), max(100, works // 4)) for w in range(works)}
    with Timer() as append:
        items = [SplitBody(work=w, shares=s) for w, s in splits.items()]
        for start in range(0, len(items), 1000):
            await service.append(caller="bench", records=items[start:start + 1000])
    payments = [Payment(work=w, amount=rng.randint(1, 5_000_000)) for w in splits]
    with Timer() as run_t:
        run, _ = await service.royalty_run(caller="bench", currency="USD", payments=payments,
                                           idempotency_key="bench-run")
    pg = await postgres.pool()
    lines = await pg.fetchval("SELECT sum(amount) FROM music_royalty_lines WHERE run_id = $1", run.id)
    credited = await pg.fetchval(
        "SELECT sum(CASE p.side WHEN 'C' THEN p.amount ELSE -p.amount END) FROM ledger_postings p "
        "JOIN music_ledger_accounts a ON a.account_id = p.account_id WHERE a.key LIKE 'royalties:%'")
    uneven = sum(1 for p in payments for w in splits[p.work].values() if (p.amount * w) % 10_000)
    paid_in = sum(p.amount for p in payments)
    return {"works": works, "holders": run.holders, "split_lines": int(await pg.fetchval(
        "SELECT count(*) FROM music_royalty_lines WHERE run_id = $1", run.id)),
        "lines_with_a_fraction_of_a_cent": uneven, **append.figures("append_splits"),
        **run_t.figures("royalty_run"), "ledger_entries": run.entries, "paid_in": paid_in,
        "paid_out": run.paid_out, "sum_of_lines": int(lines), "credited_on_ledger": int(credited),
        "cents_lost_or_created": int(credited) - paid_in}


async def grow_chain(records: int, seed: int) -> int:
    """COPY records continuing the head until the chain holds ``records``; returns how many were added."""
    from nexus_ray.compute.musicchain import make_record
    from nexus_ray.stores import postgres

    pg = await postgres.pool()
    head = await pg.fetchrow("SELECT seq, hash FROM music_records ORDER BY pos DESC LIMIT 1")
    prev: dict[str, Any] | None = None if head is None else {"seq": head["seq"], "hash": head["hash"]}
    start = 0 if prev is None else prev["seq"] + 1
    rng = random.Random(seed)
    batch: list[tuple[Any, ...]] = []
    for k in range(start, records):
        work = f"chain-{rng.randrange(records // 4 + 1):07d}"
        if rng.random() < 0.5:
            prev = make_record(prev, "rights", {"work": work, "holder": f"label-{rng.randrange(5000)}",
                                                "right": "master", "territory": "WW"})
        else:
            prev = make_record(prev, "split", {"work": work, "shares": uneven_split(rng, rng.randint(2, 6), 100_000)})
        batch.append((k, k, prev["prev"], prev["kind"], json.dumps(prev["body"]), prev["hash"], "bench"))
        if len(batch) == 50_000 or k == records - 1:
            async with pg.acquire() as conn:
                # asyncpg's own jsonb codec (text in, binary COPY) instead of the pool's JSON one, for the COPY.
                await conn.reset_type_codec("jsonb", schema="pg_catalog")
                await conn.copy_records_to_table("music_records", records=batch, columns=[
                    "pos", "seq", "prev", "kind", "body", "hash", "created_by"])
                await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            batch = []
    return records - start


async def bench_chain(c: Any, admin: dict[str, str], records: int, seed: int) -> dict[str, Any]:
    from nexus_ray.compute.musicchain import MerkleProof, verify_proof
    from nexus_ray.deployments.finance.music_chain import service
    from nexus_ray.stores import postgres

    out: dict[str, Any] = {}
    with Timer() as grow:
        added = await grow_chain(records, seed)
    out |= {"records": records, "copied": added, **grow.figures("build_and_copy")}
    with Timer() as publish:
        root = await service.publish_root(caller="bench")
    out |= publish.figures("publish_root_streamed")
    with Timer() as verify:
        report = await service.verify()
    assert report.ok and report.records == records, report.damages[:3]
    out |= {**verify.figures("verify_from_postgres"), "verified_records_per_s_wall": round(records / verify.wall)}

    middle = records // 2
    pg = await postgres.pool()
    async with postgres.transaction() as conn:
        await conn.execute("ALTER TABLE music_records DISABLE TRIGGER music_records_append_only")
        await conn.execute("UPDATE music_records SET body = body || '{\"tampered\": true}' WHERE seq = $1", middle)
        await conn.execute("ALTER TABLE music_records ENABLE TRIGGER music_records_append_only")
    damaged = await service.verify()
    out["tampered_record_found"] = [f"{d.kind} seq {d.seq} at position {d.position}" for d in damaged.damages]
    assert [(d.kind, d.seq) for d in damaged.damages] == [("altered", middle)]
    del pg

    rng = random.Random(seed)
    with Timer() as first:
        p = await service.proof(seq=rng.randrange(records))
    out |= first.figures("first_proof_builds_tree")
    seqs = [rng.randrange(records) for _ in range(200)]
    with Timer() as later:
        proofs = [await service.proof(seq=s) for s in seqs]
    out["proof_from_service_ms_wall"] = round(later.wall / len(seqs) * 1000, 2)
    r = await c.get("/finance/v1/music-chain/proofs", params={"seq": seqs[0]}, headers=admin)
    out["proof_http_response_bytes"] = len(r.content)
    checks = [(x.record.hash, MerkleProof(x.index, x.size, tuple(x.path))) for x in proofs]
    with Timer() as check:
        for h, proof in checks * 50:
            assert verify_proof(h, proof, root.root)
    out |= {"proof_hashes": len(p.path), "proof_bytes_binary": p.bytes,
            "proof_bytes_json": len(json.dumps({"index": p.index, "size": p.size, "path": p.path},
                                               separators=(",", ":"))),
            "proof_verify_us_wall": round(check.wall / (len(checks) * 50) * 1e6, 1),
            "all_proofs_verified": all(x.verified for x in proofs)}
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.edge import tokens

    get_settings.cache_clear()
    app = build_app("finance")
    results: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        await tokens.prepare()
        admin = {"Authorization": f"Bearer {tokens.issue('bench', ['finance:*'], ttl_s=3600)}"}
        transport = httpx.ASGITransport(app=app, root_path="/finance", client=("10.9.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as c:
            if args.only in ("", "mints"):
                results["mints"] = await bench_mints(c, admin, args.mints, args.cap, args.in_flight)
                print("mints", json.dumps(results["mints"]), file=sys.stderr, flush=True)
            if args.only in ("", "royalties"):
                results["royalties"] = await bench_royalties(args.works, args.seed)
                print("royalties", json.dumps(results["royalties"]), file=sys.stderr, flush=True)
            if args.only in ("", "chain"):
                results["chain"] = await bench_chain(c, admin, args.records, args.seed)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mints", type=int, default=1000, help="concurrent mints of one unit")
    parser.add_argument("--cap", type=int, default=500, help="the token's supply cap")
    parser.add_argument("--in-flight", type=int, default=64, help="HTTP mints in flight at once")
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the chain verified")
    parser.add_argument("--works", type=int, default=10_000, help="works in the royalty run")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--only", default="", choices=["", "mints", "chain", "royalties"])
    args = parser.parse_args()
    with scratch_stores("nexus-bench-finance-", **NO_RATE_LIMIT, NEXUS_POSTGRES_POOL_MAX="16"):
        results = asyncio.run(main_async(args))
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
