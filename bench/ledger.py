"""Throughput of ledger-mgr: transfers per second, batched and one per request, spread out and through one hot account.

    .venv/bin/python bench/ledger.py [--duration 10] [--batch 1000] [--batch-concurrency 4] [--concurrency 32]

In-process: starts the embedded stores in a temporary data directory and builds the ``commerce``
namespace app in this process (the edge and ledger-mgr exactly as deployed, without Serve); the load
generator (httpx over the ASGI transport) shares the process and its cores, so the figures are a
floor for one replica. The rate limiter still runs (a Redis round trip per request) with its limits
raised so that it never refuses.

Four runs, each on fresh accounts:

* ``batch spread``   -- POST /transfers/batch, ``--batch`` transfers per call, among 200 customer wallets
  (liabilities that forbid negatives, so every debit is checked) paying each other;
* ``batch hot``      -- the same, but every transfer pays the platform's one fee account;
* ``single spread``  -- POST /transfers, one transfer per request, ``--concurrency`` in flight;
* ``single hot``     -- the same, every transfer into the fee account.

With ``--minimal`` the batches ask for ``Prefer: return=minimal``: each item answered with its entry's id.

With ``--core`` the same four runs call :mod:`nexus_ray.deployments.commerce.ledger.service` directly
(``post_batch_json``, the function the route calls, and ``post_one``; no HTTP, no edge, no outbox relay publishing
in the same process): what the ledger itself costs.

Every transfer carries its own idempotency key and an outbox event is written per entry, as in
production. Only posted transfers count. At the end the reconciliation report must be clean.

Each run also reports ``cpu_per_1000``: the CPU milliseconds this process (app and load generator) and PostgreSQL
(all its processes) spent per 1,000 posted transfers, and how busy both cores were. This host's speed drifts by a
third from one minute to the next, so compare code by those figures as well as by the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

# bench/ is on sys.path when a bench runs
from scratch import NO_RATE_LIMIT, CpuMeter, asgi_client, machine, scratch_stores

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API = "/commerce/v1/ledger"


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _accounts(c: Any, headers: dict[str, str], wallets: int) -> tuple[list[str], str]:
    async def open_(body: dict[str, Any]) -> str:
        r = await c.post(f"{API}/accounts", json={"currency": "USD", "owner": "platform", **body}, headers=headers)
        r.raise_for_status()
        return r.json()["id"]

    bank = await open_({"name": "bank", "type": "asset", "allow_negative": True, "shards": 16})
    fee = await open_({"name": "fees", "type": "revenue", "shards": 16})
    ids = [await open_({"name": f"wallet {i}", "type": "liability"}) for i in range(wallets)]
    items = [{"debit_account_id": bank, "credit_account_id": w, "amount": 10**12, "currency": "USD",
              "idempotency_key": uuid.uuid4().hex} for w in ids]
    r = await c.post(f"{API}/transfers/batch", json={"items": items}, headers=headers)
    r.raise_for_status()
    assert r.json()["posted"] == len(ids)
    return ids, fee


def _transfer(rng: random.Random, wallets: list[str], fee: str, hot: bool, key: str | None = None) -> dict[str, Any]:
    debit, credit = (rng.choice(wallets), fee) if hot else rng.sample(wallets, 2)
    return {"debit_account_id": debit, "credit_account_id": credit, "amount": rng.randint(1, 10_000),
            "currency": "USD", "idempotency_key": key or uuid.uuid4().hex}


def _batch_body(rng: random.Random, wallets: list[str], fee: str, hot: bool, n: int) -> bytes:
    """A batch's JSON body, made as a lean client would (one read of the random source for its keys, orjson): the
    load generator shares the process with the app, and what it spends is taken from the app."""
    keys = os.urandom(16 * n).hex()
    return orjson.dumps({"items": [_transfer(rng, wallets, fee, hot, keys[32 * i:32 * i + 32]) for i in range(n)]})


def _cpu_per_1000(cpu: dict[str, float], transfers: int) -> dict[str, float]:
    """CPU milliseconds per 1,000 posted transfers (this process, PostgreSQL) and how busy the machine was."""
    per = 1e6 / max(transfers, 1)
    return {"process_ms": round(cpu["process"] * per, 1), "postgres_ms": round(cpu["postgres"] * per, 1),
            "machine_busy_pct": round(cpu["machine_busy"] * 100, 1)}


async def _run(c: Any, headers: dict[str, str], *, batch: int, concurrency: int, seconds: float, hot: bool,
               minimal: bool = False) -> dict[str, Any]:
    wallets, fee = await _accounts(c, headers, 200)
    batch_headers = {**headers, "Content-Type": "application/json"}
    if minimal:
        batch_headers["Prefer"] = "return=minimal"
    rng = random.Random(1)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    posted = 0

    async def worker() -> None:
        nonlocal posted
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            if batch > 1:
                r = await c.post(f"{API}/transfers/batch", content=_batch_body(rng, wallets, fee, hot, batch),
                                 headers=batch_headers, timeout=120)
                if r.status_code == 200:
                    body = orjson.loads(r.content)
                    posted += body["posted"]
                    statuses.update({"posted": body["posted"], "refused": body["refused"]})
                else:
                    statuses[str(r.status_code)] += 1
            else:
                r = await c.post(f"{API}/transfers", json=_transfer(rng, wallets, fee, hot), headers=headers)
                statuses[str(r.status_code)] += 1
                posted += r.status_code == 201
            latencies.append(time.perf_counter() - t0)

    stop = time.monotonic() + 2  # warm up: connections, caches
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    statuses.clear()
    latencies.clear()
    posted = 0
    meter = CpuMeter()
    meter.start()
    started = time.monotonic()
    stop = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "seconds": round(elapsed, 1), "batch": batch, "in_flight": concurrency, "requests": len(latencies),
        "outcomes": dict(statuses), "transfers_per_s": round(posted / elapsed, 1),
        "request_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "request_p99_ms": round(_percentile(latencies, 99) * 1000, 1),
        "cpu_per_1000": _cpu_per_1000(meter.stop(), posted),
    }


async def funded_accounts(wallets: int = 200) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """(the platform's fee account, ``wallets`` customer wallets funded from a bank account), opened and funded
    through the service functions, as the runs over HTTP open theirs: for the runs that call the service."""
    from nexus_ray.deployments.commerce.ledger import service

    async def open_(**kw: Any) -> uuid.UUID:
        acct = await service.create_account(caller="bench", privileged=True, name="x", currency="USD",
                                            owner="platform", metadata={}, **kw)
        return acct.id

    bank = await open_(type="asset", allow_negative=True, shards=16)
    fee = await open_(type="revenue", allow_negative=False, shards=16)
    ids = [await open_(type="liability", allow_negative=False, shards=None) for _ in range(wallets)]
    answer = orjson.loads(await service.post_batch_json(caller="bench", privileged=True, requests=[
        service.transfer_request(debit_account_id=bank, credit_account_id=w, amount=10**12, currency="USD",
                                 idempotency_key=uuid.uuid4().hex) for w in ids]))
    assert answer["posted"] == len(ids)
    return fee, ids


async def _core_run(*, batch: int, concurrency: int, seconds: float, hot: bool) -> dict[str, Any]:
    from nexus_ray.deployments.commerce.ledger import service

    fee, wallets = await funded_accounts()
    rng = random.Random(1)
    posted = 0
    latencies: list[float] = []

    def one() -> Any:
        debit, credit = (rng.choice(wallets), fee) if hot else rng.sample(wallets, 2)
        return service.transfer_request(debit_account_id=debit, credit_account_id=credit,
                                        amount=rng.randint(1, 10_000), currency="USD",
                                        idempotency_key=uuid.uuid4().hex)

    async def worker() -> None:
        nonlocal posted
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            out = await service.post_batch_json(caller="bench", privileged=True,
                                                requests=[one() for _ in range(batch)])
            latencies.append(time.perf_counter() - t0)
            posted += orjson.loads(out)["posted"]

    stop = time.monotonic() + 2
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    posted = 0
    latencies.clear()
    meter = CpuMeter()
    meter.start()
    started = time.monotonic()
    stop = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"seconds": round(elapsed, 1), "batch": batch, "in_flight": concurrency, "calls": len(latencies),
            "transfers_per_s": round(posted / elapsed, 1),
            "call_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "call_p99_ms": round(_percentile(latencies, 99) * 1000, 1),
            "cpu_per_1000": _cpu_per_1000(meter.stop(), posted)}


def _runs(args: argparse.Namespace) -> list[tuple[str, int, int, bool]]:
    """(name, transfers per call, calls in flight, hot) of the runs ``--only`` leaves."""
    runs = [("batch spread", args.batch, args.batch_concurrency, False),
            ("batch hot", args.batch, args.batch_concurrency, True),
            ("single spread", 1, args.concurrency, False),
            ("single hot", 1, args.concurrency, True)]
    return [r for r in runs if not args.only or args.only in r[0]]


def _hot_ratios(results: dict[str, Any]) -> None:
    for kind in ("batch", "single"):
        if f"{kind} hot" in results and f"{kind} spread" in results:
            results[f"{kind} hot / spread"] = round(
                results[f"{kind} hot"]["transfers_per_s"] / max(results[f"{kind} spread"]["transfers_per_s"], 1), 2)


async def core(args: argparse.Namespace) -> dict[str, Any]:
    """The four runs against the service functions, in this process, without the app."""
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.commerce.ledger import service

    get_settings.cache_clear()
    results: dict[str, Any] = {}
    for name, batch, conc, hot in _runs(args):
        results[name] = await _core_run(batch=batch, concurrency=conc, seconds=args.duration, hot=hot)
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    results["reconciliation_clean"] = (await service.reconcile()).clean
    _hot_ratios(results)
    return results


async def in_process(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with asgi_client("commerce", ["commerce:ledger:*"]) as (c, headers):
        for name, batch, conc, hot in _runs(args):
            results[name] = await _run(c, headers, batch=batch, concurrency=conc, seconds=args.duration, hot=hot,
                                       minimal=args.minimal)
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        report = (await c.get(f"{API}/reconciliation", headers=headers)).json()
    results["reconciliation_clean"] = report["clean"]
    _hot_ratios(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run (after 2 s warm-up)")
    parser.add_argument("--batch", type=int, default=1000, help="transfers per batch call")
    parser.add_argument("--batch-concurrency", type=int, default=4, help="batch calls in flight")
    parser.add_argument("--concurrency", type=int, default=32, help="single-transfer requests in flight")
    parser.add_argument("--only", default="", help="run only the runs whose name contains this")
    parser.add_argument("--core", action="store_true", help="call the service functions, not the HTTP app")
    parser.add_argument("--minimal", action="store_true",
                        help="batches sent with Prefer: return=minimal (each item answered with its entry's id)")
    args = parser.parse_args()
    with scratch_stores("nexus-bench-ledger-", **NO_RATE_LIMIT):
        results = asyncio.run(core(args) if args.core else in_process(args))
    results["mode"] = ("service functions, no HTTP (--core)" if args.core else
                       "in-process (commerce app + load generator in one process, embedded stores)")
    results["machine"] = machine()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
