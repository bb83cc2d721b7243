"""puabomusicchain's logic: the append-only chain in PostgreSQL, Merkle roots and proofs, verification, royalties.

The chain
---------
Records are :mod:`nexus_ray.compute.musicchain` records (``seq``, ``prev``, ``kind``,
``body``, ``hash``) kept one row each in ``music_records``, in storage order ``pos``. An
append takes a transaction-scoped advisory lock (one writer at a time: a chain has one
head), reads the head and inserts the records that follow it. The table refuses UPDATE,
DELETE and TRUNCATE (a trigger): a right or split is changed by appending a new record,
and the latest split of a work is the one in force.

Roots, proofs, verification
---------------------------
Publishing a root computes the Merkle root over every record so far (streamed, one hash
per tree level held) and stores it with the count and the head hash: the anchor that later
verifications check the chain's end against. A proof is the path from a record's hash to
the latest published root that covers it (the tree over that root's records is built once
and kept for the next proofs of the same root). Verification reads the whole chain in
storage order, streamed in batches (constant memory), and reports every altered, removed,
reordered or duplicated record by its seq and position (:func:`~nexus_ray.compute.musicchain.verify_chain`).

Royalties
---------
A royalty run takes payments to works (one payment is a run of one), splits each by the
work's split in force with the largest-remainder method
(:func:`~nexus_ray.compute.musicchain.distribute`: no cent lost or created), stores the lines
(work, holder, cents) with the run in one transaction, then posts to the ledger: per 500
holders one balanced entry debiting the royalty clearing account (platform liability for
royalties collected and not yet distributed; it may run negative until the streaming
platforms' money is booked into it) and crediting each holder's royalty wallet with their
total. Keys ``royalty-run:<run>:<chunk>``: a retried run posts nothing twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.compute.musicchain import (
    Anchor,
    MerkleTree,
    distribute,
    make_record,
    merkle_root,
    verify_chain,
    verify_proof,
)
from nexus_ray.deployments.finance.accounts import ledger_account
from nexus_ray.deployments.kit.calls import call
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.exceptions import Conflict, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit, emit_many

from .models import (
    DamageRead,
    Payment,
    ProofRead,
    RecordRead,
    RightsBody,
    RootRead,
    RoyaltyLine,
    RoyaltyRunRead,
    SplitBody,
    VerificationRead,
    WorkRead,
)

SERVICE = "puabomusicchain"
LEDGER = "ledger-mgr"
PLATFORM = "platform"
APPENDED = "music.record.appended"
ROOT_PUBLISHED = "music.root.published"
RUN_POSTED = "music.royalty.run.posted"
_ACCOUNTS = "music_ledger_accounts"
_CHAIN_LOCK = 0x6E65787573_24
_BATCH = 20_000
_HOLDERS_PER_ENTRY = 500


# -- records -------------------------------------------------------------------------------------


def _record_read(row: asyncpg.Record) -> RecordRead:
    return RecordRead(seq=row["seq"], prev=row["prev"], kind=row["kind"], body=row["body"], hash=row["hash"],
                      created_at=row["created_at"])


async def append(*, caller: str, records: list[RightsBody | SplitBody]) -> list[RecordRead]:
    """Append ``records`` after the head, in order, as one transaction."""
    async with postgres.transaction() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
        head = await conn.fetchrow("SELECT seq, hash FROM music_records ORDER BY pos DESC LIMIT 1")
        prev: dict[str, Any] | None = None if head is None else {"seq": head["seq"], "hash": head["hash"]}
        made = []
        for item in records:
            body = item.model_dump(mode="json", exclude={"kind"}, exclude_none=True)
            prev = make_record(prev, item.kind, body)
            made.append(prev)
        rows = await conn.fetch(
            "INSERT INTO music_records (pos, seq, prev, kind, body, hash, created_by) "
            "SELECT s, s, p, k, b::jsonb, h, $6 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], "
            "$5::text[]) AS u(s, p, k, b, h) RETURNING *",
            [r["seq"] for r in made], [r["prev"] for r in made], [r["kind"] for r in made],
            [_json(r["body"]) for r in made], [r["hash"] for r in made], caller)
        await emit_many(conn, APPENDED, [(r["body"]["work"], {"seq": r["seq"], "kind": r["kind"], "hash": r["hash"],
                                                              "work": r["body"]["work"]}) for r in made])
    return sorted((_record_read(r) for r in rows), key=lambda r: r.seq)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


async def list_records(*, page: PageRequest) -> Page[RecordRead]:
    """The chain in order (keyset on seq)."""
    after = page.after_value(0, -1)
    if not isinstance(after, int):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT * FROM music_records WHERE seq > $1 ORDER BY seq LIMIT $2", after, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["seq"],), item=_record_read)


async def get_work(*, work: str) -> WorkRead:
    """The rights records of a work and the split in force (404 when the chain never named it)."""
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT * FROM music_records WHERE body ->> 'work' = $1 ORDER BY seq", work)
    if not rows:
        raise NotFound(f"work {work} not found")
    splits = [r for r in rows if r["kind"] == "split"]
    return WorkRead(work=work, rights=[_record_read(r) for r in rows if r["kind"] == "rights"],
                    split=dict(splits[-1]["body"]["shares"]) if splits else None)


# -- streaming the chain out of PostgreSQL ---------------------------------------------------------


def _stream(loop: asyncio.AbstractEventLoop, columns: str, limit: int | None = None) -> Iterator[asyncpg.Record]:
    """Rows of the chain in storage order, fetched in batches on ``loop`` (for a worker thread's consumer)."""

    async def batch(after: int, size: int) -> list[asyncpg.Record]:
        pg = await postgres.pool()
        return await pg.fetch(f"SELECT pos, {columns} FROM music_records WHERE pos > $1 ORDER BY pos LIMIT $2",
                              after, size)

    after, left = -1, limit
    while left is None or left > 0:
        size = _BATCH if left is None else min(_BATCH, left)
        rows = asyncio.run_coroutine_threadsafe(batch(after, size), loop).result()
        if not rows:
            return
        yield from rows
        after = rows[-1]["pos"]
        if left is not None:
            left -= len(rows)


def _records(loop: asyncio.AbstractEventLoop) -> Iterator[dict[str, Any]]:
    for r in _stream(loop, "seq, prev, kind, body, hash"):
        yield {"seq": r["seq"], "prev": r["prev"], "kind": r["kind"], "body": r["body"], "hash": r["hash"]}


def _hashes(loop: asyncio.AbstractEventLoop, limit: int | None = None) -> Iterator[str]:
    for r in _stream(loop, "hash", limit):
        yield r["hash"]


# -- roots, proofs, verification -------------------------------------------------------------------


def _root_read(row: asyncpg.Record) -> RootRead:
    return RootRead(size=row["size"], root=row["root"], head=row["head"], published_at=row["published_at"])


async def publish_root(*, caller: str) -> RootRead:
    """Compute and store the Merkle root over every record so far (idempotent: the same size is one root)."""
    pg = await postgres.pool()
    head = await pg.fetchrow("SELECT seq, hash FROM music_records ORDER BY pos DESC LIMIT 1")
    if head is None:
        raise Conflict("the chain is empty: nothing to publish yet", extra={"code": "chain_empty"})
    size = head["seq"] + 1
    loop = asyncio.get_running_loop()
    root = await asyncio.to_thread(lambda: merkle_root(_hashes(loop, size)))
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            "INSERT INTO music_roots (size, root, head, published_by) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (size) DO NOTHING RETURNING *", size, root, head["hash"], caller)
        if row is None:
            row = await conn.fetchrow("SELECT * FROM music_roots WHERE size = $1", size)
        else:
            await emit(conn, ROOT_PUBLISHED, {"size": size, "root": root, "head": head["hash"]}, key=str(size))
    assert row is not None
    return _root_read(row)


async def latest_root() -> RootRead:
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM music_roots ORDER BY size DESC LIMIT 1")
    if row is None:
        raise NotFound("no root has been published yet")
    return _root_read(row)


_trees: dict[tuple[int, str], MerkleTree] = {}


async def _tree(root: RootRead) -> MerkleTree:
    found = _trees.get((root.size, root.root))
    if found is None:
        loop = asyncio.get_running_loop()
        found = await asyncio.to_thread(lambda: MerkleTree(_hashes(loop, root.size)))
        _trees.clear()  # one tree kept: the latest root's, which proofs ask for
        _trees[(root.size, root.root)] = found
    return found


async def proof(*, seq: int) -> ProofRead:
    """The inclusion proof of record ``seq`` in the latest published root (404 if no root covers it yet)."""
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM music_records WHERE seq = $1 ORDER BY pos LIMIT 1", seq)
    if row is None:
        raise NotFound(f"record {seq} not found")
    root_row = await pg.fetchrow("SELECT * FROM music_roots WHERE size > $1 ORDER BY size DESC LIMIT 1", seq)
    if root_row is None:
        raise NotFound(f"no published root covers record {seq} yet")
    root = _root_read(root_row)
    path = (await _tree(root)).proof(seq)
    return ProofRead(record=_record_read(row), root=root, index=path.index, size=path.size, path=list(path.path),
                     bytes=path.byte_size, verified=verify_proof(row["hash"], path, root.root))


async def verify() -> VerificationRead:
    """Read the chain in storage order and report every damaged record, against the latest root's anchor."""
    pg = await postgres.pool()
    root_row = await pg.fetchrow("SELECT * FROM music_roots ORDER BY size DESC LIMIT 1")
    anchor = None if root_row is None else Anchor(root_row["size"], root_row["head"])
    if anchor is not None and await pg.fetchval("SELECT count(*) FROM music_records") > anchor.count:
        # Records appended since the root: the anchored prefix's end is checked by the link of the next record.
        anchor = None
    loop = asyncio.get_running_loop()
    report = await asyncio.to_thread(lambda: verify_chain(_records(loop), anchor))
    return VerificationRead(
        ok=report.ok, records=report.records, head=report.head,
        anchor=_root_read(root_row) if root_row is not None else None,
        damages=[DamageRead(kind=d.kind, seq=d.seq, position=d.position, detail=d.detail, through=d.through)
                 for d in report.damages])


# -- royalties -----------------------------------------------------------------------------------


def _run_read(row: asyncpg.Record) -> RoyaltyRunRead:
    return RoyaltyRunRead(id=row["id"], currency=row["currency"].strip(), status=row["status"], works=row["works"],
                          holders=row["holders"], paid_in=row["paid_in"], paid_out=row["paid_out"],
                          entries=row["entries"], created_at=row["created_at"])


async def _splits(conn: asyncpg.Connection, works: list[str]) -> dict[str, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (body ->> 'work') body ->> 'work' AS work, body -> 'shares' AS shares "
        "FROM music_records WHERE kind = 'split' AND body ->> 'work' = ANY($1::text[]) "
        "ORDER BY body ->> 'work', seq DESC", works)
    return {r["work"]: {h: int(w) for h, w in r["shares"].items()} for r in rows}


async def royalty_run(*, caller: str, currency: str, payments: list[Payment], idempotency_key: str
                      ) -> tuple[RoyaltyRunRead, bool]:
    """Split ``payments`` by the splits in force and credit the holders on the ledger: (run, replayed)."""
    run_id = uuid.uuid4()
    async with postgres.transaction() as conn:
        existing = await conn.fetchrow("SELECT * FROM music_royalty_runs WHERE created_by = $1 AND "
                                       "idempotency_key = $2", caller, idempotency_key)
        if existing is None:
            works = sorted({p.work for p in payments})
            splits = await _splits(conn, works)
            for i, p in enumerate(payments):
                if p.work not in splits:
                    raise ValidationFailed.for_field(f"payments.{i}.work", "has no split recorded in the chain")
            run = distribute([(p.work, p.amount) for p in payments], splits)
            try:
                await conn.execute(
                    "INSERT INTO music_royalty_runs (id, created_by, idempotency_key, currency, status, works, "
                    "holders, paid_in, paid_out) VALUES ($1, $2, $3, $4, 'computed', $5, $6, $7, $8)",
                    run_id, caller, idempotency_key, currency, len(run.lines), len(run.by_holder), run.paid_in,
                    run.paid_out)
            except asyncpg.UniqueViolationError:
                raise ValidationFailed.for_field("idempotency_key", "is being used by a run in progress") from None
            await conn.copy_records_to_table(
                "music_royalty_lines", columns=["run_id", "work", "holder", "amount"],
                records=[(run_id, work, holder, cents) for work, line in run.lines.items()
                         for holder, cents in line.items()])
        elif existing["status"] == "posted":
            return _run_read(existing), True
        else:
            run_id = existing["id"]
    entries = await _post_run(run_id, currency)
    async with postgres.transaction() as conn:
        row = await conn.fetchrow("UPDATE music_royalty_runs SET status = 'posted', entries = $2 WHERE id = $1 "
                                  "RETURNING *", run_id, entries)
        assert row is not None
        await emit(conn, RUN_POSTED, _run_read(row).model_dump(mode="json"), key=str(run_id))
    return _run_read(row), existing is not None


async def _royalty_wallet(holder: str, currency: str) -> UUID:
    return await ledger_account(table=_ACCOUNTS, key=f"royalties:{holder}:{currency}", caller=SERVICE, owner=holder,
                                name=f"royalties {currency}", type="liability", currency=currency)


async def _post_run(run_id: UUID, currency: str) -> int:
    """Post the run's holder totals, 500 holders an entry; returns the entries posted (or replayed)."""
    pg = await postgres.pool()
    totals = await pg.fetch("SELECT holder, sum(amount)::bigint AS amount FROM music_royalty_lines WHERE run_id = $1 "
                            "GROUP BY holder HAVING sum(amount) > 0 ORDER BY holder", run_id)
    clearing = await ledger_account(table=_ACCOUNTS, key=f"clearing:{currency}", caller=SERVICE, owner=PLATFORM,
                                    name=f"royalties clearing {currency}", type="liability", currency=currency,
                                    allow_negative=True)
    wallets: dict[str, UUID] = {}
    holders = [t["holder"] for t in totals]
    for start in range(0, len(holders), 16):  # open the wallets of new holders a few at a time
        chunk = holders[start:start + 16]
        for holder, account in zip(chunk, await asyncio.gather(*(_royalty_wallet(h, currency) for h in chunk)),
                                   strict=True):
            wallets[holder] = account
    entries = 0
    for n, start in enumerate(range(0, len(totals), _HOLDERS_PER_ENTRY)):
        chunk = totals[start:start + _HOLDERS_PER_ENTRY]
        lines = [{"account_id": str(clearing), "side": "debit", "amount": sum(t["amount"] for t in chunk),
                  "currency": currency}]
        lines += [{"account_id": str(wallets[t["holder"]]), "side": "credit", "amount": t["amount"],
                   "currency": currency} for t in chunk]
        await call(LEDGER, "post_entry", caller=SERVICE, lines=lines, idempotency_key=f"royalty-run:{run_id}:{n}",
                   description="royalty run", metadata={"run_id": str(run_id), "chunk": n})
        entries += 1
    return entries


async def get_run(*, run_id: UUID) -> RoyaltyRunRead:
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM music_royalty_runs WHERE id = $1", run_id)
    if row is None:
        raise NotFound(f"royalty run {run_id} not found")
    return _run_read(row)


async def my_royalties(*, holder: str, page: PageRequest) -> Page[RoyaltyLine]:
    """The royalty lines of ``holder``, newest run first."""
    pg = await postgres.pool()
    after = page.after
    at, after_run, after_work = (None, None, None) if after is None else (
        datetime.fromisoformat(str(after[0])), UUID(str(after[1])), str(after[2]))
    rows = await pg.fetch(
        "SELECT l.run_id, l.work, l.amount, r.created_at FROM music_royalty_lines l "
        "JOIN music_royalty_runs r ON r.id = l.run_id WHERE l.holder = $1 AND r.status = 'posted' "
        "AND ($2::timestamptz IS NULL OR (r.created_at, l.run_id, l.work) < ($2, $3, $4)) "
        "ORDER BY r.created_at DESC, l.run_id DESC, l.work DESC LIMIT $5", holder, at, after_run, after_work,
        page.fetch_limit)
    return page.of(rows, key=lambda r: (r["created_at"].isoformat(), str(r["run_id"]), r["work"]),
                   item=lambda r: RoyaltyLine(run_id=r["run_id"], work=r["work"], amount=r["amount"]))
