"""token-mgr's logic: token supply under a cap, mint, burn and transfer on the ledger, vesting releases.

Ledger
------
Each token is one ledger currency (its code, ``QMA``..``QZZ``). Accounts per token: the
**treasury** (equity, platform, may go negative: minted units come out of it, burned ones go
back), every holder's **wallet** (liability, the holder's, never negative) and the
**vesting escrow** (liability, platform) where granted units wait for their release. A mint
is the transfer treasury -> wallet, a burn wallet -> treasury, a transfer wallet -> wallet, a
vesting grant treasury -> escrow and a release escrow -> wallet; so a token's treasury
balance is always minus its circulating supply, and the ledger refuses any movement a
wallet cannot cover.

The cap under concurrency
-------------------------
The supply is one row per token. A mint (or a vesting grant) first claims its idempotency
key (an INSERT of the operation, pending), then raises ``minted`` with one conditional
UPDATE, ``... WHERE minted + amount <= supply_cap``, in the same transaction: the row lock
makes racing mints take turns and each re-reads the row it waited for, so the cap holds
whatever the concurrency (a CHECK on the table holds it too). The supply is burned only
after the ledger accepted the burn. Only then is the ledger entry posted, outside any database
transaction (its key ``token:<operation id>``), and the operation marked posted. A ledger
refusal gives the supply back and releases the key; a crash between the steps leaves the
operation pending, and the retry with the same key finishes it (the ledger replays its entry).

Vesting
-------
A grant mints the total into the escrow (under the cap) and records the schedule
(:mod:`.vesting`: a cliff, then linear per day or month). :func:`release_vesting_forever`,
run in the background, looks every ``tokens_vesting_tick_s`` for periods that have ended:
each is a row ``(schedule, period)`` inserted once and a transfer escrow -> beneficiary keyed
``vesting:<schedule>:<period>``, so every period is released exactly once, whichever replica
runs the loop and however often.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.deployments.finance.accounts import ledger_account
from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.calls import call
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit

from . import vesting
from .models import BalanceRead, OperationRead, ReleaseRead, TokenRead, VestingCreate, VestingRead
from .settings import TokenSettings

log = logging.getLogger(__name__)

SERVICE = "token-mgr"
LEDGER = "ledger-mgr"
PLATFORM = "platform"
OPERATION_POSTED = "token.operation"
RELEASED = "token.vesting.released"
_ACCOUNTS = "tokens_ledger_accounts"
_OP_COLUMNS = "id, token_id, kind, from_holder, to_holder, amount, entry_id, created_at"


# -- definitions ---------------------------------------------------------------------------------


def _token(row: asyncpg.Record) -> TokenRead:
    return TokenRead(id=row["id"], code=row["code"], name=row["name"], decimals=row["decimals"],
                     supply_cap=row["supply_cap"], minted=row["minted"], burned=row["burned"],
                     circulating=row["minted"] - row["burned"], created_at=row["created_at"])


async def create_token(*, caller: str, code: str, name: str, decimals: int, supply_cap: int) -> TokenRead:
    """Define a token (409 if its code is taken)."""
    pg = await postgres.pool()
    try:
        row = await pg.fetchrow(
            "INSERT INTO tokens (id, code, name, decimals, supply_cap, created_by) VALUES ($1, $2, $3, $4, $5, $6) "
            "RETURNING *", uuid.uuid4(), code, name, decimals, supply_cap, caller)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a token with code {code} exists", extra={"field": "code"}) from None
    assert row is not None
    return _token(row)


async def _token_row(token_id: UUID) -> asyncpg.Record:
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM tokens WHERE id = $1", token_id)
    if row is None:
        raise NotFound(f"token {token_id} not found")
    return row


async def get_token(*, token_id: UUID) -> TokenRead:
    return _token(await _token_row(token_id))


async def list_tokens(*, page: PageRequest) -> Page[TokenRead]:
    pg = await postgres.pool()
    after = page.after_value(0, "")
    if not isinstance(after, str):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    rows = await pg.fetch("SELECT * FROM tokens WHERE code > $1 ORDER BY code LIMIT $2", after, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["code"],), item=_token)


# -- accounts ------------------------------------------------------------------------------------


async def _treasury(code: str) -> UUID:
    return await ledger_account(table=_ACCOUNTS, key=f"treasury:{code}", caller=SERVICE, owner=PLATFORM,
                                name=f"token {code} treasury", type="equity", currency=code, allow_negative=True)


async def _escrow(code: str) -> UUID:
    return await ledger_account(table=_ACCOUNTS, key=f"escrow:{code}", caller=SERVICE, owner=PLATFORM,
                                name=f"token {code} vesting escrow", type="liability", currency=code)


async def _wallet(holder: str, code: str) -> UUID:
    return await ledger_account(table=_ACCOUNTS, key=f"wallet:{holder}:{code}", caller=SERVICE, owner=holder,
                                name=f"token {code} wallet", type="liability", currency=code)


async def _accounts_of(op: asyncpg.Record, code: str) -> tuple[UUID, UUID]:
    """(debit, credit) ledger accounts of an operation."""
    kind = op["kind"]
    if kind == "mint":
        return await _treasury(code), await _wallet(op["to_holder"], code)
    if kind == "vesting_grant":
        return await _treasury(code), await _escrow(code)
    if kind == "burn":
        return await _wallet(op["from_holder"], code), await _treasury(code)
    return await _wallet(op["from_holder"], code), await _wallet(op["to_holder"], code)


# -- operations ----------------------------------------------------------------------------------


def _op_read(row: asyncpg.Record) -> OperationRead:
    return OperationRead.model_validate({k: row[k] for k in (
        "id", "token_id", "kind", "from_holder", "to_holder", "amount", "entry_id", "created_at")})


def _past_cap(token: asyncpg.Record, amount: int, left: int) -> Conflict:
    return Conflict(f"minting {amount} would pass the supply cap of {token['supply_cap']} ({left} left)",
                    extra={"field": "amount", "supply_left": left})


async def _operate(*, token_id: UUID, caller: str, kind: str, amount: int, key: str, from_holder: str | None,
                   to_holder: str | None, on_claim: Any = None) -> tuple[asyncpg.Record, bool]:
    """Claim the key, (for mints) raise the supply under the cap, post to the ledger, mark posted.

    Returns (the operation row, whether it was a replay).
    """
    token = await _token_row(token_id)
    code = token["code"].strip()
    raises_supply = kind in ("mint", "vesting_grant")
    pg = await postgres.pool()
    if raises_supply and token["minted"] + amount > token["supply_cap"] and not await pg.fetchval(
            "SELECT 1 FROM token_operations WHERE token_id = $1 AND caller = $2 AND idempotency_key = $3",
            token_id, caller, key):
        # Already full when read: refused without queueing on the supply row (minted only falls back when a
        # reservation's ledger post is refused, so the read can only be too generous, never too strict for long).
        raise _past_cap(token, amount, token["supply_cap"] - token["minted"])
    async with postgres.transaction() as conn:
        op = await conn.fetchrow(
            "INSERT INTO token_operations (id, token_id, kind, from_holder, to_holder, amount, status, caller, "
            "idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8) "
            "ON CONFLICT (token_id, caller, idempotency_key) DO NOTHING RETURNING *",
            uuid.uuid4(), token_id, kind, from_holder, to_holder, amount, caller, key)
        if op is None:
            op = await conn.fetchrow("SELECT * FROM token_operations WHERE token_id = $1 AND caller = $2 AND "
                                     "idempotency_key = $3", token_id, caller, key)
            assert op is not None
            same = (op["kind"], op["from_holder"], op["to_holder"], op["amount"]) == (kind, from_holder, to_holder,
                                                                                      amount)
            if not same:
                raise Conflict("idempotency_key was used for another operation", extra={"field": "idempotency_key"})
            if op["status"] == "posted":
                return op, True
        elif raises_supply:
            raised = await conn.fetchval(
                "UPDATE tokens SET minted = minted + $2 WHERE id = $1 AND minted + $2 <= supply_cap RETURNING minted",
                token_id, amount)
            if raised is None:
                left = token["supply_cap"] - await conn.fetchval("SELECT minted FROM tokens WHERE id = $1", token_id)
                raise _past_cap(token, amount, left)
    debit, credit = await _accounts_of(op, code)
    try:
        entry = await call(LEDGER, "post_transfer", caller=SERVICE, debit_account_id=debit, credit_account_id=credit,
                           amount=amount, currency=code, idempotency_key=f"token:{op['id']}",
                           description=f"token {code} {kind}", metadata={"operation_id": str(op["id"])})
    except NexusError:
        # Refused (a wallet that cannot cover it): nothing moved, so the key is released and the supply given back.
        async with postgres.transaction() as conn:
            gone = await conn.fetchval("DELETE FROM token_operations WHERE id = $1 AND status = 'pending' "
                                       "RETURNING amount", op["id"])
            if gone is not None and raises_supply:
                await conn.execute("UPDATE tokens SET minted = minted - $2 WHERE id = $1", token_id, amount)
        raise
    async with postgres.transaction() as conn:
        posted = await conn.fetchrow(
            "UPDATE token_operations SET status = 'posted', entry_id = $2 WHERE id = $1 AND status = 'pending' "
            "RETURNING *", op["id"], entry.id)
        if posted is None:  # a concurrent retry with the same key finished it
            done = await conn.fetchrow("SELECT * FROM token_operations WHERE id = $1", op["id"])
            assert done is not None
            return done, True
        if kind == "burn":
            await conn.execute("UPDATE tokens SET burned = burned + $2 WHERE id = $1", token_id, amount)
        if on_claim is not None:
            await on_claim(conn, posted)
        await emit(conn, OPERATION_POSTED, {**_op_read(posted).model_dump(mode="json"), "code": code},
                   key=str(token_id))
    return posted, False


async def mint(*, token_id: UUID, caller: str, to_holder: str, amount: int, idempotency_key: str
               ) -> tuple[OperationRead, bool]:
    """Mint ``amount`` to ``to_holder`` unless it would pass the cap (409)."""
    op, replayed = await _operate(token_id=token_id, caller=caller, kind="mint", amount=amount, key=idempotency_key,
                                  from_holder=None, to_holder=to_holder)
    return _op_read(op), replayed


async def burn(*, token_id: UUID, holder: str, amount: int, idempotency_key: str) -> tuple[OperationRead, bool]:
    """Burn ``amount`` of ``holder``'s own units (the ledger refuses what the wallet cannot cover)."""
    op, replayed = await _operate(token_id=token_id, caller=holder, kind="burn", amount=amount, key=idempotency_key,
                                  from_holder=holder, to_holder=None)
    return _op_read(op), replayed


async def transfer(*, token_id: UUID, holder: str, to_holder: str, amount: int, idempotency_key: str
                   ) -> tuple[OperationRead, bool]:
    """Move ``amount`` from ``holder``'s wallet to ``to_holder``'s."""
    await _token_row(token_id)  # an unknown token is a 404 before anything about the body
    if to_holder == holder:
        raise ValidationFailed.for_field("to_holder", "must differ from the sender")
    op, replayed = await _operate(token_id=token_id, caller=holder, kind="transfer", amount=amount,
                                  key=idempotency_key, from_holder=holder, to_holder=to_holder)
    return _op_read(op), replayed


async def balance(*, token_id: UUID, holder: str) -> BalanceRead:
    """``holder``'s units of the token (0 before their first)."""
    token = await _token_row(token_id)
    code = token["code"].strip()
    pg = await postgres.pool()
    account = await pg.fetchval(f"SELECT account_id FROM {_ACCOUNTS} WHERE key = $1", f"wallet:{holder}:{code}")
    units = 0 if account is None else (await call(LEDGER, "balance", account_id=account)).posted
    return BalanceRead(token_id=token_id, code=code, holder=holder, balance=units)


async def history(*, token_id: UUID, holder: str, page: PageRequest) -> Page[OperationRead]:
    """The posted operations that moved ``holder``'s units, newest first."""
    await _token_row(token_id)
    pg = await postgres.pool()
    after = page.after
    at, after_id = (None, None) if after is None else (datetime.fromisoformat(str(after[0])), UUID(str(after[1])))
    rows = await pg.fetch(
        f"SELECT {_OP_COLUMNS} FROM token_operations WHERE token_id = $1 AND status = 'posted' "
        "AND (from_holder = $2 OR to_holder = $2) AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) "
        "ORDER BY created_at DESC, id DESC LIMIT $5", token_id, holder, at, after_id, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["created_at"].isoformat(), str(r["id"])), item=_op_read)


# -- vesting -------------------------------------------------------------------------------------


async def grant(*, token_id: UUID, caller: str, body: VestingCreate) -> tuple[VestingRead, bool]:
    """Mint the grant into the escrow (under the cap) and record its schedule."""
    if body.cliff_periods > body.periods:
        raise ValidationFailed.for_field("cliff_periods", "must be at most periods")
    start = body.start_at if body.start_at.tzinfo else body.start_at.replace(tzinfo=UTC)
    schedule_id = uuid.uuid4()

    async def record(conn: asyncpg.Connection, op: asyncpg.Record) -> None:
        await conn.execute(
            "INSERT INTO token_vesting (id, token_id, beneficiary, total, start_at, period, periods, cliff_periods, "
            "grant_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (grant_id) DO NOTHING",
            schedule_id, token_id, body.beneficiary, body.total, start, body.period, body.periods, body.cliff_periods,
            op["id"])

    op, replayed = await _operate(token_id=token_id, caller=caller, kind="vesting_grant", amount=body.total,
                                  key=body.idempotency_key, from_holder=None, to_holder=body.beneficiary,
                                  on_claim=record)
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM token_vesting WHERE grant_id = $1", op["id"])
    assert row is not None
    return (await _vesting_reads(pg, [row]))[0], replayed


async def _vesting_reads(pg: asyncpg.Pool, rows: list[asyncpg.Record]) -> list[VestingRead]:
    releases = await pg.fetch("SELECT schedule_id, period, amount, released_at FROM token_vesting_releases "
                              "WHERE schedule_id = ANY($1::uuid[]) AND status = 'posted' ORDER BY period",
                              [r["id"] for r in rows])
    out = []
    for r in rows:
        mine = [ReleaseRead(period=x["period"], amount=x["amount"], released_at=x["released_at"])
                for x in releases if x["schedule_id"] == r["id"]]
        out.append(VestingRead(id=r["id"], token_id=r["token_id"], beneficiary=r["beneficiary"], total=r["total"],
                               start_at=r["start_at"], period=r["period"], periods=r["periods"],
                               cliff_periods=r["cliff_periods"], released=sum(x.amount for x in mine),
                               releases=mine))
    return out


async def list_vesting(*, beneficiary: str) -> list[VestingRead]:
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT * FROM token_vesting WHERE beneficiary = $1 ORDER BY created_at, id", beneficiary)
    return await _vesting_reads(pg, list(rows))


async def _release_period(schedule: asyncpg.Record, code: str, k: int) -> int:
    amount = vesting.release(schedule["total"], schedule["periods"], schedule["cliff_periods"], k)
    if amount <= 0:
        return 0
    pg = await postgres.pool()
    await pg.execute("INSERT INTO token_vesting_releases (schedule_id, period, amount, status) "
                     "VALUES ($1, $2, $3, 'pending') ON CONFLICT DO NOTHING", schedule["id"], k, amount)
    entry = await call(LEDGER, "post_transfer", caller=SERVICE, debit_account_id=await _escrow(code),
                       credit_account_id=await _wallet(schedule["beneficiary"], code), amount=amount, currency=code,
                       idempotency_key=f"vesting:{schedule['id']}:{k}", description=f"token {code} vesting release",
                       metadata={"schedule_id": str(schedule["id"]), "period": k})
    async with postgres.transaction() as conn:
        done = await conn.fetchval(
            "UPDATE token_vesting_releases SET status = 'posted', entry_id = $3, released_at = now() "
            "WHERE schedule_id = $1 AND period = $2 AND status = 'pending' RETURNING 1", schedule["id"], k, entry.id)
        if done:
            await emit(conn, RELEASED, {"schedule_id": str(schedule["id"]), "token_id": str(schedule["token_id"]),
                                        "beneficiary": schedule["beneficiary"], "period": k, "amount": amount},
                       key=str(schedule["id"]))
    return amount


async def release_due(*, now: datetime | None = None) -> int:
    """Release every ended period not released yet; returns how many periods were released now."""
    now = now or datetime.now(UTC)
    pg = await postgres.pool()
    schedules = await pg.fetch(
        "SELECT v.*, t.code, (SELECT coalesce(max(period), 0) FROM token_vesting_releases r "
        "WHERE r.schedule_id = v.id AND r.status = 'posted') AS last_posted "
        "FROM token_vesting v JOIN tokens t ON t.id = v.token_id WHERE NOT v.done AND v.start_at <= $1 "
        "ORDER BY v.start_at LIMIT $2", now, settings_of(TokenSettings).tokens_vesting_batch)
    released = 0
    for s in schedules:
        ended = vesting.periods_elapsed(s["start_at"], s["period"], s["periods"], now)
        for k in range(max(1, s["cliff_periods"], s["last_posted"]), ended + 1):
            posted = await pg.fetchval("SELECT status = 'posted' FROM token_vesting_releases WHERE schedule_id = $1 "
                                       "AND period = $2", s["id"], k)
            if not posted and await _release_period(s, s["code"].strip(), k):
                released += 1
        if ended == s["periods"]:
            await pg.execute("UPDATE token_vesting SET done = NOT EXISTS (SELECT 1 FROM token_vesting_releases "
                             "WHERE schedule_id = $1 AND status = 'pending') WHERE id = $1", s["id"])
    return released


#: Background: release ended vesting periods every ``tokens_vesting_tick_s``.
release_vesting_forever = loops.every("vesting release pass", release_due,
                                      lambda: settings_of(TokenSettings).tokens_vesting_tick_s)
