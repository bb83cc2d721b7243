"""What billing posts to the ledger, and how it makes sure each posting happens exactly once.

Accounts, per currency, owned by ``platform`` and opened once (``billing_ledger_accounts``):

* ``clearing`` -- an **asset**: money the payment provider has captured for us and not yet
  settled. A capture debits it; a refund credits it.
* ``merchant_payable`` -- a **liability**: what the platform owes the merchants for those
  captures. A capture credits it; a refund debits it.

So a capture of 10.00 USD is ``debit clearing:USD 1000 / credit merchant_payable:USD 1000`` and
a refund of 4.00 the reverse of 400: both accounts' balances equal captured minus refunded,
which the tests check against the ledger's balances. (Settlement to the bank and payouts to
merchants are later transfers out of these accounts; they are not billing's.) Both allow a
negative balance, as clearing accounts do: a refund's posting may reach the ledger before its
capture's when the capture's first try failed, and must not be refused for it.

Exactly once: a capture or refund writes a row in ``billing_ledger_postings`` in its own
transaction (so it commits with the change, or not at all), and after the commit the row is
posted with ``call("ledger-mgr", "post_transfer", ...)`` under the idempotency key
``billing:<kind>:<source id>`` -- the intent's id for its one capture, the refund's id for a
refund. Whoever posts a row, however often (the request that made it, the retry loop after a
crash or a ledger outage, two replicas at once), the ledger posts it once and answers the
others with the same entry.

The accounts are opened through ledger-mgr's service functions (it is in this namespace, and
its exports have no account opening): under a process lock and a PostgreSQL advisory lock per
currency, so that concurrent first captures open one pair, not several.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

from nexus_ray.deployments.commerce.ledger import service as ledger
from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.calls import call
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.stores import postgres

from .settings import BillingSettings

log = logging.getLogger(__name__)

CALLER = "billing-service"
PLATFORM = "platform"
_ROLES = {"clearing": ("asset", "billing clearing"), "merchant_payable": ("liability", "billing merchant payable")}
_accounts: dict[str, dict[str, UUID]] = {}
_opening = asyncio.Lock()


def _lock_id(currency: str) -> int:
    return int.from_bytes(hashlib.sha256(f"billing-ledger-accounts:{currency}".encode()).digest()[:8], "big",
                          signed=True)


async def accounts(currency: str) -> dict[str, UUID]:
    """Billing's ledger accounts in ``currency`` by role (``clearing``, ``merchant_payable``), opened if need be."""
    found = _accounts.get(currency)
    if found is not None:
        return found
    async with _opening:  # one opener per process: it holds a connection while the ledger needs another
        pg = await postgres.pool()
        rows = await pg.fetch("SELECT role, account_id FROM billing_ledger_accounts WHERE currency = $1", currency)
        if len(rows) < len(_ROLES):
            async with postgres.transaction() as conn:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_id(currency))
                have = {r["role"] for r in await conn.fetch(
                    "SELECT role FROM billing_ledger_accounts WHERE currency = $1", currency)}
                for role, (type_, name) in _ROLES.items():
                    if role in have:
                        continue
                    opened = await ledger.create_account(
                        caller=CALLER, privileged=True, name=f"{name} {currency}", type=type_, currency=currency,
                        allow_negative=True, owner=PLATFORM, shards=settings_of(BillingSettings).billing_ledger_shards,
                        metadata={"opened_by": CALLER, "role": role})
                    await conn.execute("INSERT INTO billing_ledger_accounts (currency, role, account_id) "
                                       "VALUES ($1, $2, $3)", currency, role, opened.id)
            rows = await pg.fetch("SELECT role, account_id FROM billing_ledger_accounts WHERE currency = $1",
                                  currency)
        found = _accounts[currency] = {r["role"]: r["account_id"] for r in rows}
    return found


class Posting(NamedTuple):
    """A pending row of ``billing_ledger_postings``: what is to be posted."""

    id: UUID
    payment_intent_id: UUID
    kind: str  # capture | refund
    source_id: UUID  # the intent's id for its capture, the refund's id for a refund
    amount: int
    currency: str


async def post(pending: Sequence[Posting]) -> int:
    """Post the ``pending`` postings to the ledger; returns how many are now posted.

    The request that queued a posting passes it on as it wrote it, after its commit; the retry loop passes what it
    found pending. A row posted by someone else meanwhile is posted again harmlessly: the ledger answers its key
    with the same entry, and only a pending row is marked posted. A failure (the ledger away) leaves the posting
    pending for :func:`retry_forever`; it is logged, not raised: the capture or refund it belongs to has happened.
    """
    if not pending:
        return 0
    pg = await postgres.pool()
    posted = 0
    for r in pending:
        currency = r.currency.strip()
        try:
            acct = await accounts(currency)
            debit, credit = acct["clearing"], acct["merchant_payable"]
            if r.kind == "refund":
                debit, credit = credit, debit
            entry = await call(
                "ledger-mgr", "post_transfer", caller=CALLER, debit_account_id=debit, credit_account_id=credit,
                amount=r.amount, currency=currency, idempotency_key=f"billing:{r.kind}:{r.source_id}",
                description=f"billing {r.kind} of payment intent {r.payment_intent_id}",
                metadata={"payment_intent_id": str(r.payment_intent_id), "billing_posting_id": str(r.id)})
        except Exception as exc:
            log.warning("ledger posting %s failed, retried later: %s", r.id, type(exc).__name__)
            await pg.execute("UPDATE billing_ledger_postings SET attempts = attempts + 1, last_error = $2 "
                             "WHERE id = $1", r.id, type(exc).__name__)
            continue
        await pg.execute("UPDATE billing_ledger_postings SET status = 'posted', entry_id = $2, posted_at = now(), "
                         "attempts = attempts + 1, last_error = NULL WHERE id = $1 AND status = 'pending'",
                         r.id, entry.id)
        posted += 1
    return posted


async def retry_pending(*, older_than_s: float, limit: int = 200) -> int:
    """Post pending postings older than ``older_than_s`` (their request's own try failed, or it crashed)."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {', '.join(Posting._fields)} FROM billing_ledger_postings WHERE status = 'pending' "
        "AND created_at <= now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2", float(older_than_s), limit)
    return await post([Posting(*r) for r in rows])


def _retry_every_s() -> float:
    return settings_of(BillingSettings).billing_ledger_retry_s


#: Background: post what is still pending (for longer than a round) every ``billing_ledger_retry_s``.
retry_forever = loops.every("ledger posting retry round", lambda: retry_pending(older_than_s=_retry_every_s()),
                            _retry_every_s)
