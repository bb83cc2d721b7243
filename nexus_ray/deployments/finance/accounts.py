"""The ledger accounts of the finance services, opened once per purpose and remembered.

loan-processor, token-mgr and puabomusicchain keep their money and tokens on the ledger
(commerce, reached with :func:`~nexus_ray.deployments.kit.calls.call`); each needs an
account per purpose (a borrower's wallet, a token's treasury, a rights holder's royalty
wallet) and finds it again by a key of its own. Each service keeps the map in its own
table of this shape (its migrations create it)::

    CREATE TABLE <service>_ledger_accounts (key text PRIMARY KEY, account_id uuid NOT NULL);

Opening is get-or-create without holding a database connection across the ledger call
(a pool of a few connections must not wait on itself): concurrent first uses in one
process wait on one lock per key; across processes the first INSERT wins and the loser's
freshly opened account stays empty and unused (harmless: it holds nothing).
"""

from __future__ import annotations

import asyncio
from typing import Literal
from uuid import UUID

from nexus_ray.deployments.kit.calls import call
from nexus_ray.stores import postgres

LEDGER = "ledger-mgr"
AccountType = Literal["asset", "liability", "revenue", "expense", "equity"]

_locks: dict[tuple[str, str], asyncio.Lock] = {}


async def ledger_account(
    *, table: str, key: str, caller: str, owner: str, name: str, type: AccountType, currency: str,
    allow_negative: bool = False,
) -> UUID:
    """The ledger account kept under ``key`` in ``table``, opened on the ledger on first use."""
    pg = await postgres.pool()
    select = f"SELECT account_id FROM {table} WHERE key = $1"
    found = await pg.fetchval(select, key)
    if found is not None:
        return UUID(str(found))
    lock = _locks.setdefault((table, key), asyncio.Lock())
    async with lock:
        found = await pg.fetchval(select, key)
        if found is not None:
            return UUID(str(found))
        account = await call(LEDGER, "open_account", caller=caller, owner=owner, name=name, type=type,
                             currency=currency, allow_negative=allow_negative, metadata={"key": key})
        await pg.execute(f"INSERT INTO {table} (key, account_id) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                         key, account.id)
        winner = await pg.fetchval(select, key)
    _locks.pop((table, key), None)
    return UUID(str(winner))
