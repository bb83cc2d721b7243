"""The ledger's invariants under load and faults: 10,000 concurrent transfers, some cut off midway and retried.

    .venv/bin/python bench/ledger_storm.py [--transfers 10000] [--in-flight 128] [--kill-every-ms 100] [--seed 1]

In-process, like ``bench/ledger.py``: the embedded stores in a temporary data directory and the ``commerce``
app (the edge and ledger-mgr as deployed, without Serve) driven over ASGI. Among 40 customer wallets (no
negatives, funded so that some transfers are refused for want of funds) and one platform fee account:

* ``--transfers`` transfers, most one per request, a tenth of them in batch requests of 50; every one with
  its own idempotency key;
* faults while they run: a tenth of the requests sent twice at once with the same key; a twentieth given up
  by their client after a random 0-50 ms (the request task cancelled, which cancels the ledger's transaction
  wherever it is) and sent again; and a killer that every ``--kill-every-ms`` terminates one PostgreSQL backend
  that is running or holding open a ledger transaction (``pg_terminate_backend``), so that the request on it
  fails midway with a 500 and its client sends it again with the same key;
* holds beside them: placed, then captured, voided, or left to expire (2 s) and swept.

Every request is repeated until it gets an answer that is not a fault (a 5xx, a cut connection, or the key's
own request still in progress). At the end it checks, and prints, what must hold: total debits equal total
credits per currency; every account's stored balance equals its postings and its open holds (the
reconciliation report); every account's posted balance is its start plus the distinct posted entries and
captured holds that the clients were told of; one entry per idempotency key; no pending hold left. The exit
status is 1 if any of these fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from scratch import (  # bench/ is on sys.path when a bench runs
    NO_RATE_LIMIT,
    asgi_client,
    machine,
    scratch_stores,
    terminate_backends,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API = "/commerce/v1/ledger"


def _effect(account_type: str, side: str, amount: int) -> int:
    """What a posting does to an account's posted balance on its normal side."""
    return amount if (side == "debit") == (account_type in ("asset", "expense")) else -amount


class Storm:
    def __init__(self, client: Any, headers: dict[str, str], args: argparse.Namespace) -> None:
        self.c, self.h, self.args = client, headers, args
        self.rng = random.Random(args.seed)
        self.faults: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.entries: dict[str, dict[str, Any]] = {}  # entry id -> entry, as answered
        self.entry_of_key: dict[str, set[str]] = {}
        self.holds: dict[str, dict[str, Any]] = {}  # hold id -> its last state as answered
        self.gate = asyncio.Semaphore(args.in_flight)
        self.kills = 0

    async def _open(self, **body: Any) -> str:
        r = await self.c.post(f"{API}/accounts", json={"currency": "USD", "owner": "platform", "name": "x", **body},
                              headers=self.h)
        r.raise_for_status()
        return str(r.json()["id"])

    async def setup(self) -> None:
        self.bank = await self._open(type="asset", allow_negative=True, shards=16)
        self.fee = await self._open(type="revenue", shards=16)
        self.wallets = [await self._open(type="liability") for _ in range(40)]
        self.types = {self.bank: "asset", self.fee: "revenue", **{w: "liability" for w in self.wallets}}
        self.start = {a: 0 for a in self.types}
        # About 40 transfers of at most 400 leave each wallet (10,000 over 40 wallets, 3/5 of them debits of a
        # wallet): funds of 6,000 make some of the later ones come up short.
        for w in self.wallets:
            r = await self.send("POST", "/transfers", self._transfer(self.bank, w, 6_000))
            assert r.status_code == 201, r.text
            self.start[w] += 6_000
            self.start[self.bank] += 6_000
            self.entries.pop(r.json()["id"])  # in the start balances already

    def _transfer(self, debit: str, credit: str, amount: int) -> dict[str, Any]:
        return {"debit_account_id": debit, "credit_account_id": credit, "amount": amount, "currency": "USD",
                "idempotency_key": uuid.uuid4().hex}

    def _spec(self) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.6:  # wallet to wallet
            debit, credit = self.rng.sample(self.wallets, 2)
        elif roll < 0.9:  # a fee into the hot account
            debit, credit = self.rng.choice(self.wallets), self.fee
        else:  # a refund out of it
            debit, credit = self.fee, self.rng.choice(self.wallets)
        return self._transfer(debit, credit, self.rng.randint(1, 400))

    def _note(self, r: Any) -> None:
        """Remember the entries (and holds) an answer tells of."""
        body = r.json()
        if "results" in body:
            items = body["results"]
        elif "lines" in body:  # one transfer's entry
            items = [{"status": "posted", "entry": body}]
        else:  # a hold
            return
        for item in items:
            entry = item.get("entry")
            if entry is not None and item["status"] in ("posted", "replayed"):
                self.entries[entry["id"]] = entry

    async def send(self, method: str, path: str, body: dict[str, Any] | None = None, *, cut: bool = False) -> Any:
        """The request until it gets an answer that is not a fault (retried with the same body and key)."""
        for attempt in range(50):
            try:
                async with self.gate:
                    if cut and attempt == 0:  # a client that gives up mid-request, then sends it again
                        task = asyncio.ensure_future(self.c.request(method, f"{API}{path}", json=body, headers=self.h))
                        await asyncio.sleep(self.rng.uniform(0, 0.05))
                        task.cancel()
                        try:
                            await task
                        except asyncio.CancelledError:
                            self.faults["given up by the client, sent again"] += 1
                            continue
                        r = task.result()
                    else:
                        r = await self.c.request(method, f"{API}{path}", json=body, headers=self.h)
            except Exception as exc:  # the connection cut under the request
                self.faults[f"request failed ({type(exc).__name__}), sent again"] += 1
                continue
            if r.status_code >= 500:
                code = r.json().get("code", "") if r.headers.get("content-type", "").endswith("json") else ""
                self.faults[f"{r.status_code} {code} (backend terminated midway), sent again"] += 1
                continue
            if r.status_code == 409 and r.json().get("code") == "idempotency_key_in_progress":
                self.faults["409 key in progress (its twin still running), sent again"] += 1
                await asyncio.sleep(0.01)
                continue
            if r.status_code in (200, 201):
                self._note(r)
            return r
        raise RuntimeError(f"{method} {path}: no answer after 50 attempts")

    async def one(self, spec: dict[str, Any], *, twice: bool, cut: bool) -> None:
        sends = [self.send("POST", "/transfers", spec, cut=cut)] + ([self.send("POST", "/transfers", spec)]
                                                                    if twice else [])
        answers = await asyncio.gather(*sends)
        ids = set()
        for r in answers:
            assert r.status_code in (201, 409), r.text
            if r.status_code == 201:
                ids.add(r.json()["id"])
                self.outcomes["posted (or replayed) one by one"] += 1
            else:
                assert r.json()["code"] == "insufficient_funds", r.text
                self.outcomes["refused for want of funds"] += 1
        self.entry_of_key.setdefault(spec["idempotency_key"], set()).update(ids)

    async def batch(self, specs: list[dict[str, Any]], *, twice: bool) -> None:
        body = {"items": specs}
        answers = await asyncio.gather(*(self.send("POST", "/transfers/batch", body) for _ in range(1 + twice)))
        for r in answers:
            assert r.status_code == 200, r.text
            for spec, item in zip(specs, r.json()["results"], strict=True):
                self.outcomes[f"batch item {item['status']}"] += 1
                if item["status"] in ("posted", "replayed"):
                    self.entry_of_key.setdefault(spec["idempotency_key"], set()).add(item["entry"]["id"])
                else:
                    assert item["error"]["code"] == "insufficient_funds", item

    async def hold(self, n: int) -> None:
        w = self.rng.choice(self.wallets)
        fate = ("capture", "void", "expire")[n % 3]
        r = await self.send("POST", "/holds", {
            "debit_account_id": w, "credit_account_id": self.fee, "amount": self.rng.randint(1, 300),
            "currency": "USD", "expires_in_s": 2 if fate == "expire" else 600,
            "idempotency_key": uuid.uuid4().hex})
        if r.status_code != 201:
            assert r.json()["code"] == "insufficient_funds", r.text
            self.outcomes["hold refused for want of funds"] += 1
            return
        h = r.json()
        self.holds[h["id"]] = h
        if fate == "capture":
            r = await self.send("POST", f"/holds/{h['id']}/capture", {"idempotency_key": uuid.uuid4().hex})
        elif fate == "void":
            r = await self.send("POST", f"/holds/{h['id']}/void")
        else:
            self.outcomes["hold left to expire"] += 1
            return
        assert r.status_code == 200, r.text
        self.holds[h["id"]] = r.json()
        self.outcomes[f"hold {r.json()['status']}"] += 1

    async def run(self) -> dict[str, Any]:
        await self.setup()
        n = self.args.transfers
        singles = [self._spec() for _ in range(n - n // 10)]
        batched = [self._spec() for _ in range(n // 10)]
        jobs = []
        for spec in singles:
            roll = self.rng.random()
            jobs.append(self.one(spec, twice=roll < 0.1, cut=0.1 <= roll < 0.15))
        for i in range(0, len(batched), 50):
            jobs.append(self.batch(batched[i:i + 50], twice=self.rng.random() < 0.1))
        jobs += [self.hold(k) for k in range(n // 50)]
        self.rng.shuffle(jobs)
        stop = asyncio.Event()
        killer = asyncio.create_task(terminate_backends(stop, every_ms=self.args.kill_every_ms, rng=self.rng,
                                                        where="query ILIKE '%ledger_%'"))
        t0 = time.monotonic()
        await asyncio.gather(*jobs)
        elapsed = time.monotonic() - t0
        stop.set()
        self.kills = await killer
        return await self.check(elapsed, len(jobs))

    async def check(self, elapsed: float, requests: int) -> dict[str, Any]:
        from nexus_ray.deployments.commerce.ledger import service
        from nexus_ray.stores import postgres

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the holds left to expire: swept (the sweep also runs in the app)
            await service.expire_holds()
            r = await self.c.get(f"{API}/reconciliation", headers=self.h)
            if r.json()["open_holds"] == 0:
                break
            await asyncio.sleep(0.5)
        report = r.json()
        expected = dict(self.start)
        for e in self.entries.values():
            for ln in e["lines"]:
                expected[ln["account_id"]] += _effect(self.types[ln["account_id"]], ln["side"], ln["amount"])
        for h in self.holds.values():
            if h["status"] == "captured":
                for side in ("debit", "credit"):
                    account = h[f"{side}_account_id"]
                    expected[account] += _effect(self.types[account], side, h["captured_amount"])
        balances_match = True
        for account, value in expected.items():
            b = (await self.c.get(f"{API}/accounts/{account}", headers=self.h)).json()["balance"]
            if (b["posted"], b["pending_out"], b["pending_in"]) != (value, 0, 0):
                balances_match = False
                print("balance differs:", account, b, "expected posted", value, file=sys.stderr)
        pg = await postgres.pool()
        keys_with_two_entries = sum(1 for ids in self.entry_of_key.values() if len(ids) > 1)
        stored = await pg.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'transfer'")
        told = sum(1 for e in self.entries.values() if e["kind"] == "transfer") + len(self.wallets)
        checks = {
            "debits equal credits per currency": all(c["balanced"] for c in report["currencies"]),
            "every stored balance equals its postings and open holds": not report["balance_mismatches"],
            "every entry balanced": not report["unbalanced_entries"],
            "no account that forbids negatives below zero": not report["negative_accounts"],
            "every posted balance = start + the entries and captures the clients were told of": balances_match,
            "one entry per idempotency key (answers)": keys_with_two_entries == 0,
            "transfers stored = transfers the clients were told of": stored == told,
            "no hold left pending": report["open_holds"] == 0 and not report["dangling_holds"],
            "reconciliation report clean": report["clean"],
        }
        return {
            "transfers": self.args.transfers, "requests (first sends)": requests,
            "seconds": round(elapsed, 1), "transfers per second (all outcomes)": round(self.args.transfers / elapsed),
            "backends terminated midway": self.kills, "faults met and retried": dict(self.faults),
            "outcomes": dict(self.outcomes), "entries told of": len(self.entries), "transfer entries stored": stored,
            "holds": len(self.holds), "invariants": checks, "all hold": all(checks.values()),
        }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with asgi_client("commerce", ["commerce:ledger:*"], timeout=120) as (c, headers):
        return await Storm(c, headers, args).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=128, help="requests in flight at most")
    parser.add_argument("--kill-every-ms", type=float, default=100.0, help="0: no backend is terminated")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with scratch_stores("nexus-bench-storm-", **NO_RATE_LIMIT):
        results = asyncio.run(main_async(args))
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    sys.exit(0 if results["all hold"] else 1)


if __name__ == "__main__":
    main()
