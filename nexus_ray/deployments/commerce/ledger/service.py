"""ledger-mgr's logic: a double-entry ledger that stays balanced, and fast, under concurrency.

Model
-----
An **account** has a type (asset, liability, revenue, expense, equity), one ISO 4217
currency, an owner principal (``platform`` for the platform's own accounts) and says
whether its balance may go below zero. An **entry** is a set of postings (lines: account,
debit or credit, amount in minor units) whose debits equal its credits in every currency;
a **transfer** is the two-line entry. Entries and postings are append-only (the database
refuses UPDATE, DELETE and TRUNCATE on them); an entry is corrected by a **reversal**, an
entry with the sides swapped that names the original (``reverses`` is UNIQUE, so an entry
is reversed once). A **hold** reserves an amount for a later transfer: it adds to the
pending columns, and is captured (all or part posted as an entry), voided, or expired by
:func:`expire_holds`. Balances are read on the account's normal side (debits for assets
and expenses, credits otherwise): ``available = posted - pending_out``; an account that
forbids negatives refuses any change that would make its available balance negative.

Hot accounts: sharded balance rows, locked in one order
-------------------------------------------------------
A balance is not one row but ``shards`` rows of running totals (``ledger_balances``),
summed on read. A change that can only *raise* an account's available balance (a credit
to the platform's fee account, a capture, a void) needs no check, so it adds to one shard
picked at random: N shards let N such transactions on one account proceed at once instead
of queueing on one row lock. Only a change that *lowers* the available balance of an
account that forbids negatives must see the whole balance: it locks all of that account's
shards, which serialises exactly the transfers that must be serialised (two debits racing
for the same funds) and nothing else. Accounts that allow negatives never check, so a hot
account of either direction (fees in, payouts out) spreads over its shards.

Every transaction locks the balance rows it will change **in one statement, ordered by
(account, shard)** before changing any, so two transactions never hold rows the other
waits for (no deadlocks among transfers); a hold is locked before its balance rows,
always. A deadlock that still happens (the database reports it) is retried.

A batch is set-based: its items are checked one after another in Python against the
totals (an item that would overdraw is refused, the rest go on), then the accepted ones
are written with one statement per table (entries, postings, outbox, idempotency,
balances). Each item is atomic -- all of its lines and its event, or nothing -- and the
batch commits once, which is what makes thousands of transfers per second possible.

A batch of 1,000 random transfers among a few hundred wallets touches nearly every wallet,
so it locks nearly every balance row: had it locked them first, concurrent batches would
run one at a time for all of their writes. So a batch decides first from the totals as
committed (read without a lock), writes its entries, postings, events and keys, and only
then locks the balance rows and decides again from the locked totals. If both decisions
refuse the same items (they do unless funds moved in between), it adds to the balances and
commits: batches wait on each other only for that last UPDATE and the commit. If not, the
transaction is rolled back and the batch runs again the first way, deciding under the lock
before it writes. One transfer alone takes the locking way at once (the prediction would
cost a round trip more than it saves).

Idempotency
-----------
Every posting request carries a key, scoped to the caller (``ledger_idempotency``
keyed by (principal, key)). The key is claimed by an INSERT in the transaction of the
change, with the hash of the request: a concurrent request with the same key waits on that
row and then sees the committed result, so it is replayed, never applied twice; the same
key with another body is a 409 naming ``idempotency_key``. A refused request (insufficient
funds, a hold no longer pending) releases its key: nothing was posted, so a retry may
succeed later. Keys are kept (no expiry yet). A batch that decided before claiming (above)
writes each posted item's response in the claiming INSERT, so a key row is written once,
not inserted and then updated.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple, TypeVar
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, Forbidden, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit, emit_many, json_text, uuid_text

from .models import (
    AccountRead,
    Balance,
    CurrencyTotals,
    EntryRead,
    HoldRead,
    ItemResult,
    LineRead,
    Reconciliation,
    StatementLine,
)
from .settings import LedgerSettings

log = logging.getLogger(__name__)

ENTRY_POSTED = "ledger.entry.posted"
HOLD_CHANGED = "ledger.hold.changed"
PLATFORM = "platform"
DEBIT_NORMAL = frozenset({"asset", "expense"})
_RETRIES = 5

T = TypeVar("T")


# -- accounts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Account:
    id: UUID
    owner: str
    type: str
    currency: str
    allow_negative: bool
    shards: int
    debit_normal: bool = field(init=False)  # an asset or expense: debits raise it (read for every line and row)

    def __post_init__(self) -> None:
        object.__setattr__(self, "debit_normal", self.type in DEBIT_NORMAL)


def _available(account: _Account, debits_posted: int, credits_posted: int, debits_pending: int,
               credits_pending: int) -> int:
    """What totals make available to draw on: the posted balance less pending draws."""
    if account.debit_normal:
        return debits_posted - credits_posted - credits_pending
    return credits_posted - debits_posted - debits_pending


_ACCOUNT_COLUMNS = "id, owner, name, type, currency, allow_negative, shards, metadata, created_at"


#: Accounts read before, by id, at most :data:`_KNOWN_MAX` (the oldest read dropped first). What they hold is fixed
#: when an account is opened (the database refuses to change it, migration 1105) and an account is never deleted,
#: so a kept one is never stale: a posting reads no account row unless one of its accounts is new to this process.
_KNOWN: dict[UUID, _Account] = {}
_KNOWN_MAX = 100_000


async def _accounts(conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[UUID]) -> dict[UUID, _Account]:
    """The accounts of ``ids`` that exist, by id."""
    found = {i: a for i in ids if (a := _KNOWN.get(i)) is not None}
    missing = [i for i in set(ids) if i not in found]
    if not missing:
        return found
    rows = await conn.fetch(
        "SELECT id, owner, type, currency, allow_negative, shards FROM ledger_accounts WHERE id = ANY($1::uuid[])",
        missing,
    )
    for r in rows:
        found[r["id"]] = _KNOWN[r["id"]] = _Account(
            r["id"], r["owner"], r["type"], r["currency"].strip(), r["allow_negative"], r["shards"])
    while len(_KNOWN) > _KNOWN_MAX:
        del _KNOWN[next(iter(_KNOWN))]
    return found


def _balance(account_type: str, currency: str, d: int, c: int, dp: int, cp: int) -> Balance:
    if account_type in DEBIT_NORMAL:
        posted, out, inc = d - c, cp, dp
    else:
        posted, out, inc = c - d, dp, cp
    return Balance(currency=currency, posted=posted, pending_out=out, pending_in=inc, available=posted - out,
                   debits_posted=d, credits_posted=c, debits_pending=dp, credits_pending=cp)


def _account_read(row: asyncpg.Record, totals: asyncpg.Record | None = None) -> AccountRead:
    out = AccountRead.model_validate({**dict(row), "currency": row["currency"].strip()})
    if totals is not None:
        out.balance = _balance(row["type"], out.currency, int(totals["d"]), int(totals["c"]), int(totals["dp"]),
                               int(totals["cp"]))
    return out


async def create_account(
    *, caller: str, privileged: bool, name: str, type: str, currency: str, allow_negative: bool,
    owner: str | None, shards: int | None, metadata: dict[str, Any],
) -> AccountRead:
    """Open an account owned by ``owner`` (default ``caller``; another owner needs ``privileged``)."""
    owner = owner or caller
    if owner != caller and not privileged:
        raise Forbidden("only an administrator opens accounts for another owner", extra={"field": "owner"})
    shards = shards or settings_of(LedgerSettings).ledger_default_shards
    account_id = uuid.uuid4()
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            f"INSERT INTO ledger_accounts (id, owner, name, type, currency, allow_negative, shards, metadata) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_ACCOUNT_COLUMNS}",
            account_id, owner, name, type, currency, allow_negative, shards, metadata,
        )
        await conn.execute(
            "INSERT INTO ledger_balances (account_id, shard) SELECT $1, s FROM generate_series(0, $2 - 1) AS s",
            account_id, shards,
        )
    assert row is not None
    return _account_read(row, {"d": 0, "c": 0, "dp": 0, "cp": 0})


_TOTALS = ("SELECT coalesce(sum(debits_posted), 0) AS d, coalesce(sum(credits_posted), 0) AS c, "
           "coalesce(sum(debits_pending), 0) AS dp, coalesce(sum(credits_pending), 0) AS cp "
           "FROM ledger_balances WHERE account_id = $1")


async def _visible_account(pg: asyncpg.Pool, account_id: UUID, caller: str, privileged: bool) -> asyncpg.Record:
    row = await pg.fetchrow(f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE id = $1", account_id)
    # Another owner's account is reported as missing: its existence is not the caller's business.
    if row is None or (row["owner"] != caller and not privileged):
        raise NotFound(f"account {account_id} not found")
    return row


async def get_account(*, account_id: UUID, caller: str, privileged: bool) -> AccountRead:
    """The account with its balance, for its owner or an administrator."""
    pg = await postgres.pool()
    row = await _visible_account(pg, account_id, caller, privileged)
    return _account_read(row, await pg.fetchrow(_TOTALS, account_id))


async def balance(*, account_id: UUID) -> Balance:
    """The balance of an account (posted, pending, available), on its normal side."""
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT type, currency FROM ledger_accounts WHERE id = $1", account_id)
    if row is None:
        raise NotFound(f"account {account_id} not found")
    t = await pg.fetchrow(_TOTALS, account_id)
    assert t is not None
    return _balance(row["type"], row["currency"].strip(), int(t["d"]), int(t["c"]), int(t["dp"]), int(t["cp"]))


def _key_missing() -> ValidationFailed:
    return ValidationFailed.for_field("idempotency_key", "is required (field or Idempotency-Key header)", "missing")


async def _claimed(conn: asyncpg.Connection, caller: str, key: str, request: str) -> _Op:
    """The op of a single keyed request, its key claimed: ``op.error``/``op.result`` set when it is answered."""
    op = _Op(0, key, request)
    await _claim(conn, caller, [op])
    return op


def _not_our_cursor() -> ValidationFailed:
    return ValidationFailed.for_field("cursor", "is not a cursor returned by this list")


def _cursor_uuid(page: PageRequest) -> UUID | None:
    """The account id in an accounts cursor (None on the first page); 422 naming ``cursor`` otherwise."""
    value = page.after_value(0)
    if value is None:
        return None
    try:
        return UUID(str(value))
    except ValueError:
        raise _not_our_cursor() from None


def _cursor_posting(page: PageRequest) -> int:
    """The posting id in a statement cursor (0 on the first page); 422 naming ``cursor`` otherwise."""
    value = page.after_value(0, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _not_our_cursor()
    return value


async def list_accounts(*, owner: str, page: PageRequest) -> Page[AccountRead]:
    """The accounts of ``owner``, oldest id order (keyset on id)."""
    pg = await postgres.pool()
    after = _cursor_uuid(page)
    rows = await pg.fetch(
        f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts WHERE owner = $1 AND ($2::uuid IS NULL OR id > $2::uuid) "
        "ORDER BY id LIMIT $3",
        owner, after, page.fetch_limit,
    )
    return page.of(rows, key=lambda r: (str(r["id"]),), item=_account_read)


async def statement(*, account_id: UUID, caller: str, privileged: bool, page: PageRequest) -> Page[StatementLine]:
    """An account's postings in posting order, each with the posted balance after it (keyset on posting id).

    A posting whose transaction commits after a later-numbered one was already listed can be
    missed by a reader paging at that moment (ids are taken at insert, not at commit); the
    running balance of the next page still counts it, as it is a sum up to the cursor.
    """
    pg = await postgres.pool()
    account = await _visible_account(pg, account_id, caller, privileged)
    sign = 1 if account["type"] in DEBIT_NORMAL else -1
    after = _cursor_posting(page)
    rows = await pg.fetch(
        "SELECT id, entry_id, side, amount, created_at FROM ledger_postings "
        "WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        account_id, after, page.fetch_limit,
    )
    running = sign * int(await pg.fetchval(
        "SELECT coalesce(sum(CASE side WHEN 'D' THEN amount ELSE -amount END), 0) FROM ledger_postings "
        "WHERE account_id = $1 AND id <= $2", account_id, after,
    ))
    lines = []
    for r in rows:
        running += sign * (r["amount"] if r["side"] == "D" else -r["amount"])
        lines.append(StatementLine(posting_id=r["id"], entry_id=r["entry_id"],
                                   side="debit" if r["side"] == "D" else "credit", amount=r["amount"],
                                   balance_after=running, created_at=r["created_at"]))
    return page.of(lines, key=lambda s: (s.posting_id,))


# -- balance changes: sharded rows, locked in one order ----------------------------------------------


@dataclass(slots=True)
class _Change:
    """What one operation does to one account's totals."""

    account: _Account
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    @property
    def available_delta(self) -> int:
        return _available(self.account, self.debits_posted, self.credits_posted, self.debits_pending,
                          self.credits_pending)


@dataclass(slots=True)
class _Op:
    """One operation of a request (a batch has many): its key, its changes, and how it ended."""

    index: int
    key: str | None
    request_hash: str
    changes: dict[UUID, _Change] = field(default_factory=dict)
    error: NexusError | None = None
    result: dict[str, Any] | None = None
    text: str | None = None  # ``result`` as JSON text, when it was made here (for the answer, the key, the event)
    replayed: bool = False
    claimed: bool = False  # this op inserted its key's row (so may store or release it)
    stored: bool = False  # ... with its response in it already

    def change(self, account: _Account) -> _Change:
        found = self.changes.get(account.id)
        if found is None:
            found = self.changes[account.id] = _Change(account)
        return found


@dataclass
class _Plan:
    """What the balance rows allow of a list of ops: which are refused (and why), and what the rest add up to."""

    refused: dict[int, Conflict]  # op.index -> its insufficient-funds refusal
    target: dict[UUID, int]  # account -> the shard its sums are added to
    sums: dict[UUID, list[int]]  # account -> debits posted, credits posted, debits pending, credits pending


def _live(ops: Sequence[_Op]) -> list[_Op]:
    return [op for op in ops if op.error is None and op.result is None]


def _checked(live: Sequence[_Op]) -> tuple[dict[UUID, _Account], dict[UUID, _Account]]:
    """(accounts whose whole balance must be seen -- they forbid negatives and some op lowers them, every account
    touched)."""
    checked: dict[UUID, _Account] = {}
    touched: dict[UUID, _Account] = {}
    for op in live:
        for ch in op.changes.values():
            touched[ch.account.id] = ch.account
            if ch.available_delta < 0 and not ch.account.allow_negative:
                checked[ch.account.id] = ch.account
    return checked, touched


def _locked_balances(first: int, claim: str | None = None) -> str:
    """The locked read of balance rows, sorted, its two parameters (accounts and shards) numbered from ``first``;
    after ``claim`` in the same statement when given (:func:`~nexus_ray.stores.postgres.claim_then_lock`, each row
    with the keys claimed as ``claimed_key``)."""
    return postgres.claim_then_lock(
        "SELECT b.account_id, b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending{claimed} "
        f"FROM ledger_balances b JOIN unnest(${first}::uuid[], ${first + 1}::int2[]) AS u(a, s) "
        "ON b.account_id = u.a AND b.shard = u.s ORDER BY b.account_id, b.shard FOR UPDATE OF b", claim, "key")


def _to_lock(live: Sequence[_Op]) -> tuple[dict[UUID, _Account], dict[UUID, int], list[tuple[UUID, int]]]:
    """(the accounts whose balance ``live`` must check, the shard each touched account's sums go to, the balance
    rows a locked read locks: every shard of a checked account and each target, sorted)."""
    checked, touched = _checked(live)
    target = {a.id: random.randrange(a.shards) for a in touched.values()}
    return checked, target, sorted({(a.id, s) for a in checked.values() for s in range(a.shards)} | set(target.items()))


def _summed(checked: dict[UUID, _Account], totals: Sequence[asyncpg.Record]) -> dict[UUID, int]:
    """The available balance of each ``checked`` account, from its balance rows (``totals``: one a shard, or one
    summed)."""
    available: dict[UUID, int] = {}
    for r in totals:
        a = checked.get(r["account_id"])
        if a is not None:
            part = _available(a, int(r["debits_posted"]), int(r["credits_posted"]), int(r["debits_pending"]),
                              int(r["credits_pending"]))
            available[a.id] = available.get(a.id, 0) + part
    return available


async def _totals(conn: asyncpg.Connection, live: Sequence[_Op], *, lock: bool
                  ) -> tuple[dict[UUID, int], dict[UUID, int]]:
    """(the available balance of each account ``live`` must check, the shard each touched account's sums go to).

    With ``lock`` the balance rows that will change are locked first (sorted, one statement), so what is read
    holds until commit. Without it the totals are read as committed now: a prediction, which a locked read
    confirms later.
    """
    checked, target, rows = _to_lock(live)
    if lock:
        totals = await conn.fetch(_locked_balances(1), [r[0] for r in rows],
                                  [r[1] for r in rows]) if rows else []
    elif checked:
        totals = await conn.fetch(
            "SELECT account_id, sum(debits_posted) AS debits_posted, sum(credits_posted) AS credits_posted, "
            "sum(debits_pending) AS debits_pending, sum(credits_pending) AS credits_pending "
            "FROM ledger_balances WHERE account_id = ANY($1::uuid[]) GROUP BY account_id",
            list(checked),
        )
    else:
        totals = []
    return _summed(checked, totals), target


def _decide(live: Sequence[_Op], available: dict[UUID, int], target: dict[UUID, int]) -> _Plan:
    """Which of ``live`` the totals allow, deciding in order (an op that would overdraw is refused, the rest go
    on), and what the allowed ones add to each account."""
    available = dict(available)
    refused: dict[int, Conflict] = {}
    sums: dict[UUID, list[int]] = {}
    for op in live:
        changes = [(ch, ch.account.id, ch.available_delta) for ch in op.changes.values()]
        short = next((ch.account for ch, a, delta in changes if a in available and available[a] + delta < 0), None)
        if short is not None:
            refused[op.index] = Conflict(
                f"insufficient funds in account {short.id}",
                extra={"account_id": str(short.id), "available": available[short.id], "code": "insufficient_funds"},
            )
            continue
        for ch, a, delta in changes:
            if a in available:
                available[a] += delta
            s = sums.get(a)
            if s is None:
                s = sums[a] = [0, 0, 0, 0]
            s[0] += ch.debits_posted
            s[1] += ch.credits_posted
            s[2] += ch.debits_pending
            s[3] += ch.credits_pending
    return _Plan(refused, target, sums)


def _balances_update(plan: _Plan, first: int) -> tuple[str, list[Any]]:
    """The UPDATE that adds a locked plan's sums to the balance rows, its parameters numbered from ``first``."""
    ids = list(plan.sums)
    a, sh, d, c, dp, cp = (f"${first + k}" for k in range(6))
    return (
        "UPDATE ledger_balances b SET debits_posted = b.debits_posted + u.d, credits_posted = b.credits_posted + u.c, "
        "debits_pending = b.debits_pending + u.dp, credits_pending = b.credits_pending + u.cp "
        f"FROM unnest({a}::uuid[], {sh}::int2[], {d}::int8[], {c}::int8[], {dp}::int8[], {cp}::int8[]) "
        "AS u(a, s, d, c, dp, cp) WHERE b.account_id = u.a AND b.shard = u.s",
        [ids, [plan.target[i] for i in ids], *([plan.sums[i][k] for i in ids] for k in range(4))],
    )


async def _write_balances(conn: asyncpg.Connection, plan: _Plan) -> None:
    """Add a locked plan's sums to the balance rows, one UPDATE."""
    if not plan.sums:
        return
    sql, args = _balances_update(plan, 1)
    await conn.execute(sql, *args)


def _refuse(live: Sequence[_Op], plan: _Plan) -> None:
    for op in live:
        err = plan.refused.get(op.index)
        if err is not None:
            op.error = err


async def _apply_balances(conn: asyncpg.Connection, ops: Sequence[_Op]) -> None:
    """Lock the rows ``ops`` change (sorted), refuse those that would overdraw, apply the others' changes.

    Refused ops get ``error``; the others' changes are written with one UPDATE.
    """
    live = _live(ops)
    plan = _decide(live, *await _totals(conn, live, lock=True))
    _refuse(live, plan)
    await _write_balances(conn, plan)


class _Mispredicted(Exception):
    """The locked balances refuse other ops than the unlocked read predicted: the batch runs again, locking first."""


async def _in_transaction(work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``work`` in a transaction; again (from scratch) when the database reports a deadlock."""
    for attempt in range(_RETRIES):
        try:
            async with postgres.transaction() as conn:
                return await work(conn)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == _RETRIES - 1:
                raise
            log.info("ledger transaction retried after a deadlock")
            await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        except asyncpg.NumericValueOutOfRangeError:
            raise Conflict("a balance would exceed the largest amount the ledger holds",
                           extra={"code": "amount_out_of_range"}) from None
    raise AssertionError("unreachable")


# -- idempotency ---------------------------------------------------------------------------------------


def request_hash(operation: str, body: dict[str, Any]) -> str:
    """The hash a key is bound to: the operation and its body (without the key), canonical JSON. Ids may be given
    as UUIDs (of any class): they are written as the same text as ``str()`` gives."""
    canonical = orjson.dumps({"op": operation, "body": body}, default=uuid_text, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _key_reused() -> Conflict:
    return Conflict(
        "idempotency_key was already used with another request",
        extra={"errors": [{"field": "idempotency_key", "message": "was used with another request",
                           "type": "idempotency_key_reused"}], "code": "idempotency_key_reused"},
    )


_CLAIM = ("INSERT INTO ledger_idempotency (principal, key, request_hash, entry_id) "
          "SELECT $1, k, h, e FROM unnest($2::text[], $3::text[], $4::uuid[]) WITH ORDINALITY AS u(k, h, e, n) "
          "ORDER BY n ON CONFLICT DO NOTHING RETURNING key")


async def _claim(conn: asyncpg.Connection, caller: str, ops: Sequence[_Op],
                 entries: dict[int, UUID] | None = None) -> None:
    """Claim each op's key; an op whose key was used before is replayed (same request) or refused (another).

    ``entries``: the ids of the entries that will answer some ops (by op index), when the caller knows them
    already; they are stored with the keys (one write of each key row instead of two), and a replay reads the
    entry back (entries never change) instead of a stored copy of its JSON.
    """
    keyed, answers = _keyed(ops, entries)
    if keyed:
        claimed = {r["key"] for r in await conn.fetch(_CLAIM, caller, [op.key for op in keyed],
                                                      [op.request_hash for op in keyed], answers)}
        await _after_claim(conn, caller, keyed, answers, claimed)


async def _claim_locking(conn: asyncpg.Connection, caller: str, ops: Sequence[_Op], entries: dict[int, UUID]
                         ) -> tuple[dict[UUID, int], dict[UUID, int]]:
    """:func:`_claim`, then :func:`_totals` with ``lock`` for the ops left live, in one statement
    (:func:`~nexus_ray.stores.postgres.claim_then_lock`: the keys are claimed before any balance row is locked).
    Locks the rows of the ops live before the claim: those replayed or refused by their keys lock rows they do not
    change, until the commit."""
    keyed, answers = _keyed(ops, entries)
    _, target, rows = _to_lock(_live(ops))
    if not keyed or not rows:
        await _claim(conn, caller, ops, entries)
        return await _totals(conn, _live(ops), lock=True)
    totals = await conn.fetch(
        _locked_balances(5, _CLAIM),
        caller, [op.key for op in keyed], [op.request_hash for op in keyed], answers, [r[0] for r in rows],
        [r[1] for r in rows])
    if not totals:  # an account's balance rows are made with it, and its shards never change (migration 1105)
        raise RuntimeError("the balance rows of an account in use are missing")
    await _after_claim(conn, caller, keyed, answers, set(totals[0]["claimed_key"] or ()))
    still_checked, touched = _checked(_live(ops))
    return _summed(still_checked, totals), {a: target[a] for a in touched}


def _keyed(ops: Sequence[_Op], entries: dict[int, UUID] | None) -> tuple[list[_Op], list[UUID | None]]:
    """The ops with a key to claim, sorted by it (two batches that share keys claim them in the same order and
    cannot deadlock on them), and the entry id stored with each (None where not known yet)."""
    keyed = sorted((op for op in ops if op.key is not None and op.error is None), key=lambda o: o.key or "")
    return keyed, [(entries or {}).get(op.index) for op in keyed]


async def _after_claim(conn: asyncpg.Connection, caller: str, keyed: Sequence[_Op], answers: Sequence[UUID | None],
                       claimed: set[str]) -> None:
    """Each of ``keyed`` as its claim left it: claimed, or replayed or refused by the key's earlier use."""
    for op, answer in zip(keyed, answers, strict=True):
        op.claimed = op.key in claimed
        op.stored = op.claimed and answer is not None
    taken = [op for op in keyed if not op.claimed]
    if not taken:
        return
    earlier = {r["key"]: r for r in await conn.fetch(
        "SELECT key, request_hash, response, entry_id FROM ledger_idempotency "
        "WHERE principal = $1 AND key = ANY($2::text[])",
        caller, [op.key for op in taken],
    )}
    posted = await _entries(conn, [r["entry_id"] for r in earlier.values() if r["entry_id"] is not None])
    for op in taken:
        row = earlier.get(op.key)
        if row is None or (row["response"] is None and row["entry_id"] is None):
            # released by a refusal meanwhile, or not committed yet: the caller retries
            op.error = Conflict("a request with this idempotency_key is in progress; retry",
                                extra={"code": "idempotency_key_in_progress"})
        elif row["request_hash"] != op.request_hash:
            op.error = _key_reused()
        else:
            op.result = row["response"] if row["entry_id"] is None else posted[row["entry_id"]].model_dump()
            op.replayed = True


async def _settle_keys(conn: asyncpg.Connection, caller: str, ops: Sequence[_Op]) -> None:
    """Store the results of the ops that succeeded; release the keys of those that were refused."""
    done = [op for op in ops if op.claimed and op.result is not None and not op.stored]
    refused = [op.key for op in ops if op.claimed and op.result is None]
    if done:
        await conn.execute(
            "UPDATE ledger_idempotency i SET response = u.r::json FROM unnest($2::text[], $3::text[]) AS u(k, r) "
            "WHERE i.principal = $1 AND i.key = u.k",
            caller, [op.key for op in done], [json_text(op.result) for op in done],
        )
    if refused:
        # Claimed by this transaction, so no other has touched them (even one stored with its response already).
        await conn.execute("DELETE FROM ledger_idempotency WHERE principal = $1 AND key = ANY($2::text[])",
                           caller, refused)


# -- entries ---------------------------------------------------------------------------------------------


class Line(NamedTuple):
    """One line of an entry to post (a tuple: a batch makes two per transfer, and a dataclass costs three times as
    much to make)."""

    account_id: UUID
    side: str  # debit | credit
    amount: int
    currency: str


@dataclass(slots=True)
class EntryRequest:
    """An entry to post (a transfer is the two-line one), with its idempotency key and request hash. Not changed
    once made (not frozen only because a frozen dataclass costs twice as much to make, and a batch makes
    thousands)."""

    lines: tuple[Line, ...]
    kind: str = "entry"
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    request_hash: str = ""


def transfer_request(
    *, debit_account_id: UUID, credit_account_id: UUID, amount: int, currency: str, description: str = "",
    metadata: dict[str, Any] | None = None, idempotency_key: str | None = None,
) -> EntryRequest:
    """The entry of a transfer, its hash computed from the transfer as the caller sent it."""
    metadata = metadata or {}
    body = {"debit_account_id": debit_account_id, "credit_account_id": credit_account_id,
            "amount": amount, "currency": currency, "description": description, "metadata": metadata}
    return EntryRequest(
        lines=(Line(debit_account_id, "debit", amount, currency), Line(credit_account_id, "credit", amount, currency)),
        kind="transfer", description=description, metadata=metadata, key=idempotency_key,
        request_hash=request_hash("transfer", body),
    )


def entry_request(
    *, lines: Sequence[Line], description: str = "", metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> EntryRequest:
    metadata = metadata or {}
    body = {"lines": [[str(ln.account_id), ln.side, ln.amount, ln.currency] for ln in lines],
            "description": description, "metadata": metadata}
    return EntryRequest(lines=tuple(lines), kind="entry", description=description, metadata=metadata,
                        key=idempotency_key, request_hash=request_hash("entry", body))


def _field(req: EntryRequest, i: int, name: str) -> str:
    if req.kind == "transfer":
        return {"account_id": "debit_account_id" if i == 0 else "credit_account_id"}.get(name, name)
    return f"lines.{i}.{name}"


def _check_entry(req: EntryRequest, accounts: dict[UUID, _Account], op: _Op, caller: str, privileged: bool) -> None:
    """Validate ``req`` against the accounts and fill ``op.changes``; on a fault set ``op.error``.

    Whether the caller may draw on each account is decided before anything else is said about the lines: a caller
    refused an account learns nothing more of it (its currency) from the refusal.
    """
    if req.kind == "transfer" and req.lines[0].account_id == req.lines[1].account_id:
        op.error = ValidationFailed.for_field("credit_account_id", "must differ from debit_account_id")
        return
    for i, ln in enumerate(req.lines):
        a = accounts.get(ln.account_id)
        if a is None:
            op.error = NotFound(f"account {ln.account_id} not found", extra={"field": _field(req, i, "account_id")})
            return
        ch = op.change(a)
        if ln.side == "debit":
            ch.debits_posted += ln.amount
        else:
            ch.credits_posted += ln.amount
    _check_owners(req, op, caller, privileged)
    if op.error is not None:
        return
    per_currency: dict[str, int] = {}
    for i, ln in enumerate(req.lines):
        held = accounts[ln.account_id].currency
        if held != ln.currency:
            op.error = ValidationFailed.for_field(
                _field(req, i, "currency"), f"is {ln.currency} but account {ln.account_id} holds {held}",
                "currency_mismatch")
            return
        per_currency[ln.currency] = per_currency.get(ln.currency, 0) + (ln.amount if ln.side == "debit" else -ln.amount)
    unbalanced = sorted(c for c, v in per_currency.items() if v != 0)
    if unbalanced:
        op.error = ValidationFailed.for_field(
            "lines", f"debits and credits differ in {', '.join(unbalanced)}: an entry balances in every currency",
            "unbalanced")


def _check_owners(req: EntryRequest, op: _Op, caller: str, privileged: bool) -> None:
    """Unless ``privileged``, the caller may only lower the available balance of accounts it owns, line by line: a
    line that lowers it (a debit of a liability, revenue or equity account, a credit of an asset or expense one)
    needs the caller to own its account, even when other lines of the entry make up for it. Otherwise anyone could
    write entries on another's account (and its statement) with lines that cancel out."""
    if privileged:
        return
    for i, ln in enumerate(req.lines):
        account = op.changes[ln.account_id].account
        if (ln.side == "debit") != account.debit_normal and account.owner != caller:
            op.error = Forbidden(f"account {account.id} is not the caller's to draw on",
                                 extra={"field": _field(req, i, "account_id")})
            return


def _entry_result(entry_id: UUID, req: EntryRequest, caller: str, now: datetime, *, reverses: UUID | None = None,
                  hold_id: UUID | None = None) -> dict[str, Any]:
    """An entry's answer (and event). Ids and times stay objects: orjson writes them as text where it is stored
    (the key's response, the event) at native speed, and the answer's model takes them as they are."""
    return {
        "id": entry_id, "kind": req.kind, "reverses": reverses, "hold_id": hold_id, "description": req.description,
        "metadata": req.metadata, "created_by": caller, "created_at": now,
        "lines": [{"account_id": ln.account_id, "side": ln.side, "amount": ln.amount, "currency": ln.currency}
                  for ln in req.lines],
    }


def _column(values: list[T]) -> tuple[list[T], T | None]:
    """A column for ``unnest``: ``(values, None)``, or ``([], value)`` when every value is the same one.

    ``unnest`` pads a shorter array with NULLs, so an empty array reads as a column of NULLs, which the statement
    fills from the scalar (``COALESCE(column, $n)``, which is NULL too when every value is). A batch's transfers
    share their kind, description, metadata and currency, and each array element costs asyncpg about a
    microsecond to encode (two checks against abstract classes for a text one): sent once, they are thousands
    fewer."""
    first = values[0] if values else None
    return ([], first) if all(v == first for v in values) else (values, None)


async def _insert_entries(conn: asyncpg.Connection, caller: str, now: datetime,
                          posted: Sequence[tuple[UUID, EntryRequest, dict[str, Any]]],
                          texts: Sequence[str] | None = None, balances: _Plan | None = None) -> bool:
    """Write entries, their postings and one outbox event each, in one statement (the postings' check, a trigger
    at the end of the statement, sees the entries). ``texts``: the results as JSON text, when the caller has them
    already (the events' payloads). ``balances``: a locked plan whose sums the same statement adds to the balance
    rows. Whether it wrote anything (nothing to post: nothing written, the balances neither)."""
    if not posted:
        return False
    kinds, kind = _column([r.kind for _, r, _ in posted])
    reverses, reverse = _column([res["reverses"] for _, _, res in posted])
    holds, hold = _column([res["hold_id"] for _, _, res in posted])
    descriptions, description = _column([r.description for _, r, _ in posted])
    metadata, meta = _column([r.metadata for _, r, _ in posted])
    lines = [(e, ln) for e, r, _ in posted for ln in r.lines]
    currencies, currency = _column([ln.currency for _, ln in lines])
    payloads: Sequence[dict[str, Any] | str] = texts if texts is not None else [res for _, _, res in posted]
    update, update_args = _balances_update(balances, 25) if balances is not None and balances.sums else ("", [])
    # The events' own parameters are $1-$5; the entries' and postings' are numbered from $6, the balances' from $25.
    await emit_many(conn, ENTRY_POSTED, [(str(e), p) for (e, _, _), p in zip(posted, payloads, strict=True)], beside=(
        "INSERT INTO ledger_entries (id, kind, reverses, hold_id, description, metadata, created_by, created_at) "
        "SELECT i, COALESCE(k, $14), COALESCE(r, $17), COALESCE(h, $18), COALESCE(d, $15), COALESCE(m, $16)::jsonb, "
        "$12, $13 "
        "FROM unnest($6::uuid[], $7::text[], $8::uuid[], $9::uuid[], $10::text[], $11::text[]) AS u(i, k, r, h, d, m)",
        # The sides as one string of bytes, a letter per line (D or C), read by the line's number (get_byte: a
        # substr of text counts its characters from the start, so 2,000 of them cost 16 ms a batch).
        "INSERT INTO ledger_postings (entry_id, account_id, side, amount, currency, created_at) "
        "SELECT e, a, chr(get_byte($21, n::int - 1)), m, COALESCE(c, $24), $13 "
        "FROM unnest($19::uuid[], $20::uuid[], $22::int8[], $23::text[]) WITH ORDINALITY AS u(e, a, m, c, n) "
        "ORDER BY n",
        update,  # left out when empty
    ), args=(
        [e for e, _, _ in posted], kinds, reverses, holds, descriptions, [json_text(m) for m in metadata], caller, now,
        kind, description, None if meta is None else json_text(meta), reverse, hold,
        [e for e, _ in lines], [ln.account_id for _, ln in lines],
        bytes(68 if ln.side == "debit" else 67 for _, ln in lines), [ln.amount for _, ln in lines],  # D, C
        currencies, currency, *update_args,
    ))
    return True


def _error_body(err: NexusError) -> dict[str, Any]:
    return err.problem()


async def post_entries(*, caller: str, privileged: bool, requests: Sequence[EntryRequest]) -> list[ItemResult]:
    """Post ``requests``, each accepted or refused on its own; one transaction for all of them.

    ``privileged`` callers (administrators, other platform services) may draw on any account;
    others only on their own. Results are in the order of ``requests``.
    """
    return [ItemResult(index=op.index, status=_status(op), error=_refusal(op),
                       entry=None if op.result is None else EntryRead.model_validate(op.result))
            for op in await _post(caller=caller, privileged=privileged, requests=requests)]


def _status(op: _Op) -> Literal["posted", "replayed", "refused"]:
    """How a posted op is answered."""
    return "refused" if op.result is None else "replayed" if op.replayed else "posted"


def _refusal(op: _Op) -> dict[str, Any] | None:
    """A posted op's problem body, if it was refused."""
    if op.result is not None:
        return None
    assert op.error is not None
    return _error_body(op.error)


async def _post(*, caller: str, privileged: bool, requests: Sequence[EntryRequest]) -> list[_Op]:
    """:func:`post_entries`' work: the ops, each with its result (the entry as JSON-able values) or its error."""
    if not requests:
        return []
    accounts = await _accounts(await postgres.pool(), [ln.account_id for r in requests for ln in r.lines])
    # A batch writes what it can before it locks the balances; one transfer has little to write, and the read
    # that the prediction costs would be a round trip more.
    optimistic = len(requests) > 1

    async def work(conn: asyncpg.Connection) -> list[_Op]:
        ops = [_Op(i, r.key, r.request_hash) for i, r in enumerate(requests)]
        first: dict[str, _Op] = {}
        duplicates: list[tuple[_Op, _Op]] = []
        for op, req in zip(ops, requests, strict=True):
            if req.key is None:
                # Checked after the accounts: what may not be touched is refused as such, whatever the key.
                _check_entry(req, accounts, op, caller, privileged)
                op.error = op.error or _key_missing()
                continue
            if req.key in first:  # the same key twice in one batch: answered like a retry, after the first
                duplicates.append((op, first[req.key]))
                op.key = None
                continue
            first[req.key] = op
            _check_entry(req, accounts, op, caller, privileged)
        now = datetime.now(UTC)
        # Each op that may post has its entry's id before its key is claimed, so that the key row is written
        # with it once; the key of one that is refused after all is released (deleted) by _settle_keys.
        entry_ids = dict(zip((op.index for op in _live(ops)), postgres.new_ids(len(ops)), strict=False))
        # op index -> (entry id, result, its JSON text) if posted; the text is both the key's stored response
        # and the event's payload
        entries: dict[int, tuple[UUID, dict[str, Any], str]] = {}

        def prepare(live: Sequence[_Op], plan: _Plan) -> None:
            for op in live:
                if op.key is not None and op.index not in plan.refused:
                    entry_id = entry_ids[op.index]
                    result = _entry_result(entry_id, requests[op.index], caller, now)
                    entries[op.index] = (entry_id, result, json_text(result))

        plan: _Plan | None = None
        if optimistic:
            # Everything but the balances is written before their rows are locked, so that concurrent batches
            # wait on each other only for the last UPDATE and the commit, not for all of a batch's writes. The
            # plan comes from totals read without a lock, and the locked totals must confirm it.
            live = _live(ops)
            available, target = await _totals(conn, live, lock=False)
            predicted = _decide(live, available, target)
            prepare(live, predicted)
            await _claim(conn, caller, ops, {i: entry_id for i, (entry_id, _, _) in entries.items()})
            if len(_live(ops)) != len(live):  # some were replayed or refused by their keys: decide without them
                live = _live(ops)
                if _decide(live, available, target).refused.keys() != predicted.refused.keys() & {
                        op.index for op in live}:
                    raise _Mispredicted
        else:  # the keys claimed and the balances locked in one statement, then decided under the lock
            locked = await _claim_locking(conn, caller, ops, entry_ids)
            live = _live(ops)
            plan = _decide(live, *locked)
            prepare(live, plan)
        for op in live:
            if op.index in entries and (plan is None or op.index not in plan.refused):
                _, op.result, op.text = entries[op.index]
            elif op.key is not None:
                op.error = (predicted if plan is None else plan).refused[op.index]
        written = [op for op in live if op.result is not None]
        # Decided under the lock already (plan): the balances are added in the entries' statement.
        balanced = await _insert_entries(
            conn, caller, now, [(entries[op.index][0], requests[op.index], entries[op.index][1]) for op in written],
            [entries[op.index][2] for op in written], balances=plan) and plan is not None
        await _settle_keys(conn, caller, ops)
        if plan is None:
            plan = _decide(live, *await _totals(conn, live, lock=True))
            if plan.refused.keys() != {op.index for op in live if op.error is not None}:
                raise _Mispredicted
            _refuse(live, plan)  # the refusals as the locked totals state them
        if not balanced:
            await _write_balances(conn, plan)
        for dup, orig in duplicates:
            if dup.request_hash != orig.request_hash:
                dup.error = _key_reused()
            elif orig.result is not None:
                dup.result, dup.text, dup.replayed = orig.result, orig.text, True
            else:
                dup.error = orig.error
        return ops

    try:
        return await _in_transaction(work)
    except _Mispredicted:  # funds moved between the read and the lock: decide under the lock this time
        optimistic = False
        return await _in_transaction(work)


async def post_one(*, caller: str, privileged: bool, request: EntryRequest) -> tuple[EntryRead, bool]:
    """Post one entry or transfer: (the entry, whether it was a replay); its refusal is raised."""
    (result,) = await post_entries(caller=caller, privileged=privileged, requests=[request])
    if result.entry is None:
        assert result.error is not None
        raise _error_from(result.error)
    return result.entry, result.status == "replayed"


_BY_STATUS: dict[int, type[NexusError]] = {403: Forbidden, 404: NotFound, 409: Conflict, 422: ValidationFailed}


def _error_from(problem: dict[str, Any]) -> NexusError:
    cls = _BY_STATUS.get(int(problem.get("status", 500)), NexusError)
    extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail", "instance")}
    return cls(str(problem.get("detail", "")), extra=extra)


async def post_batch_json(*, caller: str, privileged: bool, requests: Sequence[EntryRequest],
                          minimal: bool = False) -> bytes:
    """The batch endpoint's answer as JSON: the document of :class:`BatchResult` (of :class:`BatchSummary` when
    ``minimal``), written around each entry's JSON text as it was made for its key and its event instead of
    through a model per item and the models' serializer (a fifth of the batch's CPU when it was done that way)."""
    counts = {"posted": 0, "replayed": 0, "refused": 0}
    items: list[str] = []
    for op in await _post(caller=caller, privileged=privileged, requests=requests):
        status = _status(op)
        counts[status] += 1
        if op.result is None:
            items.append(orjson.dumps({"index": op.index, "status": status, "entry_id" if minimal else "entry": None,
                                       "error": _refusal(op)}).decode())
        elif minimal:
            items.append(f'{{"index":{op.index},"status":"{status}","entry_id":"{op.result["id"]}","error":null}}')
        else:
            entry = op.text if op.text is not None else json_text(op.result)
            items.append(f'{{"index":{op.index},"status":"{status}","entry":{entry},"error":null}}')
    return f'{orjson.dumps(counts).decode()[:-1]},"results":[{",".join(items)}]}}'.encode()


async def _entries(conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[UUID]) -> dict[UUID, EntryRead]:
    """Entries with their lines, by id (those found): two statements whatever their number."""
    if not ids:
        return {}
    rows = await conn.fetch("SELECT * FROM ledger_entries WHERE id = ANY($1::uuid[])", ids)
    lines: dict[UUID, list[asyncpg.Record]] = {}
    for ln in await conn.fetch("SELECT entry_id, account_id, side, amount, currency FROM ledger_postings "
                               "WHERE entry_id = ANY($1::uuid[]) ORDER BY id", ids):
        lines.setdefault(ln["entry_id"], []).append(ln)
    return {r["id"]: _entry_read(r, lines.get(r["id"], [])) for r in rows}


def _entry_read(row: asyncpg.Record, lines: Sequence[asyncpg.Record]) -> EntryRead:
    return EntryRead(
        id=row["id"], kind=row["kind"], reverses=row["reverses"], hold_id=row["hold_id"],
        description=row["description"], metadata=row["metadata"], created_by=row["created_by"],
        created_at=row["created_at"],
        lines=[LineRead(account_id=ln["account_id"], side="debit" if ln["side"] == "D" else "credit",
                        amount=ln["amount"], currency=ln["currency"].strip()) for ln in lines],
    )


async def get_entry(*, entry_id: UUID, caller: str, privileged: bool) -> EntryRead:
    """An entry, for its poster, an owner of one of its accounts, or an administrator."""
    pg = await postgres.pool()
    entry = (await _entries(pg, [entry_id])).get(entry_id)
    if entry is not None and not privileged and entry.created_by != caller:
        owners = await pg.fetch("SELECT owner FROM ledger_accounts WHERE id = ANY($1::uuid[])",
                                [ln.account_id for ln in entry.lines])
        if caller not in {o["owner"] for o in owners}:
            entry = None
    if entry is None:
        raise NotFound(f"entry {entry_id} not found")
    return entry


async def reverse_entry(*, entry_id: UUID, caller: str, description: str, idempotency_key: str | None
                        ) -> tuple[EntryRead, bool]:
    """Post the reversal of ``entry_id`` (sides swapped, naming it); 409 if it was reversed already."""
    if idempotency_key is None:
        raise _key_missing()
    h = request_hash("reverse", {"entry_id": str(entry_id), "description": description})

    async def work(conn: asyncpg.Connection) -> _Op:
        op = await _claimed(conn, caller, idempotency_key, h)
        if op.error is not None or op.result is not None:
            return op
        original = (await _entries(conn, [entry_id])).get(entry_id)
        if original is None:
            op.error = NotFound(f"entry {entry_id} not found")
        elif await conn.fetchval("SELECT 1 FROM ledger_entries WHERE reverses = $1", entry_id):
            op.error = Conflict(f"entry {entry_id} is already reversed", extra={"code": "already_reversed"})
        if original is not None and op.error is None:
            accounts = await _accounts(conn, [ln.account_id for ln in original.lines])
            req = EntryRequest(
                lines=tuple(Line(ln.account_id, "credit" if ln.side == "debit" else "debit", ln.amount, ln.currency)
                            for ln in original.lines),
                kind="reversal", description=description or f"reversal of {entry_id}",
                metadata={"reverses": str(entry_id)}, key=idempotency_key, request_hash=h)
            _check_entry(req, accounts, op, caller, True)
            await _apply_balances(conn, [op])
            if op.error is None:
                now = datetime.now(UTC)
                new_id = uuid.uuid4()
                op.result = _entry_result(new_id, req, caller, now, reverses=entry_id)
                await _insert_entries(conn, caller, now, [(new_id, req, op.result)])
        await _settle_keys(conn, caller, [op])
        return op

    try:
        op = await _in_transaction(work)
    except asyncpg.UniqueViolationError:  # another reversal of the same entry won the race
        raise Conflict(f"entry {entry_id} is already reversed", extra={"code": "already_reversed"}) from None
    if op.error is not None:
        raise op.error
    assert op.result is not None
    return EntryRead.model_validate(op.result), op.replayed


# -- holds -----------------------------------------------------------------------------------------------------


_HOLD_COLUMNS = ("id, debit_account_id, credit_account_id, currency, amount, status, captured_amount, entry_id, "
                 "description, metadata, created_by, created_at, expires_at, resolved_at")


def _hold_read(row: asyncpg.Record | dict[str, Any]) -> HoldRead:
    return HoldRead.model_validate({**dict(row), "currency": str(row["currency"]).strip()})


def _hold_changes(op: _Op, debit: _Account, credit: _Account, pending: int, posted: int) -> None:
    """``pending`` added to the hold's pending columns (negative: released) and ``posted`` posted."""
    d, c = op.change(debit), op.change(credit)
    d.debits_pending += pending
    d.debits_posted += posted
    c.credits_pending += pending
    c.credits_posted += posted


async def place_hold(
    *, caller: str, privileged: bool, debit_account_id: UUID, credit_account_id: UUID, amount: int, currency: str,
    expires_in_s: int, description: str = "", metadata: dict[str, Any] | None = None, idempotency_key: str | None,
) -> tuple[HoldRead, bool]:
    """Reserve ``amount`` of the debit account for a transfer to the credit account: (the hold, replayed)."""
    metadata = metadata or {}
    limit = settings_of(LedgerSettings).ledger_hold_max_s
    if expires_in_s > limit:
        raise ValidationFailed.for_field("expires_in_s", f"must be at most {limit}", "less_than_equal")
    h = request_hash("hold", {"debit_account_id": str(debit_account_id), "credit_account_id": str(credit_account_id),
                              "amount": amount, "currency": currency, "expires_in_s": expires_in_s,
                              "description": description, "metadata": metadata})
    req = transfer_request(debit_account_id=debit_account_id, credit_account_id=credit_account_id, amount=amount,
                           currency=currency)
    accounts = await _accounts(await postgres.pool(), [debit_account_id, credit_account_id])

    async def work(conn: asyncpg.Connection) -> _Op:
        op = _Op(0, idempotency_key, h)
        # The same checks as the transfer it will become, owners included (whose account each line draws on does
        # not depend on whether the amount is pending or posted).
        _check_entry(req, accounts, op, caller, privileged)
        if op.error is None and idempotency_key is None:
            op.error = _key_missing()
        if op.error is not None:
            return op
        op.changes.clear()
        _hold_changes(op, accounts[debit_account_id], accounts[credit_account_id], amount, 0)
        await _claim(conn, caller, [op])
        await _apply_balances(conn, [op])
        if op.error is None and op.result is None:
            now = datetime.now(UTC)
            row = await conn.fetchrow(
                f"INSERT INTO ledger_holds (id, debit_account_id, credit_account_id, currency, amount, status, "
                f"description, metadata, created_by, created_at, expires_at) "
                f"VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10) RETURNING {_HOLD_COLUMNS}",
                uuid.uuid4(), debit_account_id, credit_account_id, currency, amount, description, metadata, caller,
                now, now + timedelta(seconds=expires_in_s),
            )
            assert row is not None
            op.result = _hold_read(row).model_dump(mode="json")
            await emit(conn, HOLD_CHANGED, op.result, key=str(row["id"]))
        await _settle_keys(conn, caller, [op])
        return op

    op = await _in_transaction(work)
    if op.error is not None:
        raise op.error
    assert op.result is not None
    return HoldRead.model_validate(op.result), op.replayed


async def _locked_hold(conn: asyncpg.Connection, hold_id: UUID, caller: str, privileged: bool) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {_HOLD_COLUMNS} FROM ledger_holds WHERE id = $1 FOR UPDATE", hold_id)
    if row is not None and not privileged and row["created_by"] != caller:
        owner = await conn.fetchval("SELECT owner FROM ledger_accounts WHERE id = $1", row["debit_account_id"])
        if owner != caller:
            row = None
    if row is None:
        raise NotFound(f"hold {hold_id} not found")
    return row


async def get_hold(*, hold_id: UUID, caller: str, privileged: bool) -> HoldRead:
    """A hold, for whoever placed it, the owner of its debit account, or an administrator."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(f"SELECT {_HOLD_COLUMNS} FROM ledger_holds WHERE id = $1", hold_id)
        if row is not None and not privileged and row["created_by"] != caller:
            owner = await conn.fetchval("SELECT owner FROM ledger_accounts WHERE id = $1", row["debit_account_id"])
            if owner != caller:
                row = None
    if row is None:
        raise NotFound(f"hold {hold_id} not found")
    return _hold_read(row)


async def capture_hold(
    *, hold_id: UUID, caller: str, privileged: bool, amount: int | None = None, idempotency_key: str | None,
) -> tuple[HoldRead, bool]:
    """Post the hold (all, or ``amount`` of it, the rest released) as a capture entry: (the hold, replayed)."""
    if idempotency_key is None:
        await get_hold(hold_id=hold_id, caller=caller, privileged=privileged)  # another's hold: 404 first
        raise _key_missing()
    h = request_hash("capture", {"hold_id": str(hold_id), "amount": amount})

    async def work(conn: asyncpg.Connection) -> _Op:
        op = await _claimed(conn, caller, idempotency_key, h)
        if op.error is not None or op.result is not None:
            return op
        hold = await _locked_hold(conn, hold_id, caller, privileged)
        now = datetime.now(UTC)
        take = hold["amount"] if amount is None else amount
        if hold["status"] != "pending":
            op.error = Conflict(f"hold {hold_id} is {hold['status']}, not pending", extra={"code": "hold_not_pending",
                                                                                           "status": hold["status"]})
        elif hold["expires_at"] <= now:
            op.error = Conflict(f"hold {hold_id} has expired", extra={"code": "hold_expired"})
        elif take > hold["amount"]:
            op.error = ValidationFailed.for_field("amount", f"must be at most the hold's {hold['amount']}",
                                                  "less_than_equal")
        if op.error is None:
            accounts = await _accounts(conn, [hold["debit_account_id"], hold["credit_account_id"]])
            _hold_changes(op, accounts[hold["debit_account_id"]], accounts[hold["credit_account_id"]],
                          -hold["amount"], take)
            await _apply_balances(conn, [op])  # only raises available balances: never refused
            req = transfer_request(debit_account_id=hold["debit_account_id"],
                                   credit_account_id=hold["credit_account_id"], amount=take,
                                   currency=hold["currency"].strip(), description=hold["description"],
                                   metadata={"hold_id": str(hold_id)})
            req = EntryRequest(lines=req.lines, kind="capture", description=req.description, metadata=req.metadata)
            entry_id = uuid.uuid4()
            await _insert_entries(conn, caller, now,
                                  [(entry_id, req, _entry_result(entry_id, req, caller, now, hold_id=hold_id))])
            row = await conn.fetchrow(
                f"UPDATE ledger_holds SET status = 'captured', captured_amount = $2, entry_id = $3, resolved_at = $4 "
                f"WHERE id = $1 RETURNING {_HOLD_COLUMNS}", hold_id, take, entry_id, now)
            assert row is not None
            op.result = _hold_read(row).model_dump(mode="json")
            await emit(conn, HOLD_CHANGED, op.result, key=str(hold_id))
        await _settle_keys(conn, caller, [op])
        return op

    op = await _in_transaction(work)
    if op.error is not None:
        raise op.error
    assert op.result is not None
    return HoldRead.model_validate(op.result), op.replayed


async def void_hold(*, hold_id: UUID, caller: str, privileged: bool) -> HoldRead:
    """Release the hold's reservation; voiding a voided hold returns it (idempotent), any other state is 409."""

    async def work(conn: asyncpg.Connection) -> HoldRead:
        hold = await _locked_hold(conn, hold_id, caller, privileged)
        if hold["status"] == "voided":
            return _hold_read(hold)
        if hold["status"] != "pending":
            raise Conflict(f"hold {hold_id} is {hold['status']}, not pending",
                           extra={"code": "hold_not_pending", "status": hold["status"]})
        await _release(conn, [hold], "voided")
        row = await conn.fetchrow(f"SELECT {_HOLD_COLUMNS} FROM ledger_holds WHERE id = $1", hold_id)
        assert row is not None
        return _hold_read(row)

    return await _in_transaction(work)


async def _release(conn: asyncpg.Connection, holds: Sequence[asyncpg.Record], status: str) -> None:
    """Return locked pending holds' reservations and mark them ``status`` (voided or expired)."""
    accounts = await _accounts(conn, [h[k] for h in holds for k in ("debit_account_id", "credit_account_id")])
    ops = []
    for i, hold in enumerate(holds):
        op = _Op(i, None, "")
        _hold_changes(op, accounts[hold["debit_account_id"]], accounts[hold["credit_account_id"]], -hold["amount"], 0)
        ops.append(op)
    await _apply_balances(conn, ops)  # releases only raise available balances: never refused
    rows = await conn.fetch(
        f"UPDATE ledger_holds SET status = $2, resolved_at = now() WHERE id = ANY($1::uuid[]) "
        f"RETURNING {_HOLD_COLUMNS}",
        [h["id"] for h in holds], status)
    await emit_many(conn, HOLD_CHANGED, [(str(r["id"]), _hold_read(r).model_dump(mode="json")) for r in rows])


async def expire_holds(*, limit: int = 500) -> int:
    """Void pending holds past their expiry (as ``expired``); returns how many. Safe to run anywhere at once."""

    async def work(conn: asyncpg.Connection) -> int:
        # SKIP LOCKED: a hold being captured or voided right now is left to that transaction (or the next sweep).
        holds = await conn.fetch(
            f"SELECT {_HOLD_COLUMNS} FROM ledger_holds WHERE status = 'pending' AND expires_at <= now() "
            f"ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
        if holds:
            await _release(conn, holds, "expired")
        return len(holds)

    return await _in_transaction(work)


#: Background: void expired holds every ``ledger_hold_sweep_s``.
expire_holds_forever = loops.every("hold expiry sweep", expire_holds,
                                   lambda: settings_of(LedgerSettings).ledger_hold_sweep_s, drain=True)


# -- reconciliation --------------------------------------------------------------------------------------------


async def reconcile() -> Reconciliation:
    """Check the ledger's invariants in one snapshot: per-currency debits == credits, every account's stored
    totals == its postings and open holds, every entry balanced, no account that forbids negatives below zero,
    no pending hold past its expiry."""
    p = await postgres.pool()
    async with p.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        currencies = await conn.fetch(
            "SELECT currency, sum(amount) FILTER (WHERE side = 'D') AS d, sum(amount) FILTER (WHERE side = 'C') AS c "
            "FROM ledger_postings GROUP BY currency ORDER BY currency")
        mismatches = await conn.fetch("""
            WITH stored AS (
                SELECT account_id, sum(debits_posted) AS d, sum(credits_posted) AS c,
                       sum(debits_pending) AS dp, sum(credits_pending) AS cp
                FROM ledger_balances GROUP BY account_id),
            posted AS (
                SELECT account_id, sum(amount) FILTER (WHERE side = 'D') AS d,
                       sum(amount) FILTER (WHERE side = 'C') AS c
                FROM ledger_postings GROUP BY account_id),
            held AS (
                SELECT a AS account_id, sum(dp) AS dp, sum(cp) AS cp FROM (
                    SELECT debit_account_id AS a, amount AS dp, 0 AS cp FROM ledger_holds WHERE status = 'pending'
                    UNION ALL
                    SELECT credit_account_id, 0, amount FROM ledger_holds WHERE status = 'pending') h GROUP BY a)
            SELECT s.account_id, s.d AS stored_debits, coalesce(p.d, 0) AS posted_debits,
                   s.c AS stored_credits, coalesce(p.c, 0) AS posted_credits,
                   s.dp AS stored_debits_pending, coalesce(h.dp, 0) AS held_debits,
                   s.cp AS stored_credits_pending, coalesce(h.cp, 0) AS held_credits
            FROM stored s LEFT JOIN posted p USING (account_id) LEFT JOIN held h USING (account_id)
            WHERE s.d <> coalesce(p.d, 0) OR s.c <> coalesce(p.c, 0)
               OR s.dp <> coalesce(h.dp, 0) OR s.cp <> coalesce(h.cp, 0)""")
        unbalanced = await conn.fetch("""
            SELECT entry_id, currency, sum(CASE side WHEN 'D' THEN amount ELSE -amount END) AS difference
            FROM ledger_postings GROUP BY entry_id, currency
            HAVING sum(CASE side WHEN 'D' THEN amount ELSE -amount END) <> 0 LIMIT 100""")
        negative = await conn.fetch("""
            SELECT a.id AS account_id, CASE WHEN a.type IN ('asset', 'expense')
                       THEN sum(b.debits_posted - b.credits_posted - b.credits_pending)
                       ELSE sum(b.credits_posted - b.debits_posted - b.debits_pending) END AS available
            FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id
            WHERE NOT a.allow_negative GROUP BY a.id, a.type
            HAVING CASE WHEN a.type IN ('asset', 'expense')
                       THEN sum(b.debits_posted - b.credits_posted - b.credits_pending)
                       ELSE sum(b.credits_posted - b.debits_posted - b.debits_pending) END < 0 LIMIT 100""")
        dangling = await conn.fetch(
            "SELECT id AS hold_id, expires_at FROM ledger_holds WHERE status = 'pending' AND expires_at <= now() "
            "ORDER BY expires_at LIMIT 100")
        open_holds = await conn.fetchval("SELECT count(*) FROM ledger_holds WHERE status = 'pending'")
        accounts = await conn.fetchval("SELECT count(*) FROM ledger_accounts")

    def plain(rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
        return [{k: (str(v) if isinstance(v, UUID | datetime) else int(v) if v is not None and k != "currency"
                     and not isinstance(v, str) else v) for k, v in r.items()} for r in rows]

    totals = [CurrencyTotals(currency=r["currency"].strip(), debits=int(r["d"] or 0), credits=int(r["c"] or 0),
                             balanced=int(r["d"] or 0) == int(r["c"] or 0)) for r in currencies]
    report = Reconciliation(
        clean=False, currencies=totals, accounts_checked=int(accounts), balance_mismatches=plain(mismatches),
        unbalanced_entries=plain(unbalanced), negative_accounts=plain(negative), dangling_holds=plain(dangling),
        open_holds=int(open_holds),
    )
    report.clean = (all(t.balanced for t in totals) and not mismatches and not unbalanced and not negative
                    and not dangling)
    return report
