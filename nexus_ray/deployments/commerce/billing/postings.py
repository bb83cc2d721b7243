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
posted with ``call("ledger-mgr", "post_transfers", ...)`` (with the rows of the concurrent requests
of the process: :func:`post_after_commit`) under the idempotency key
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
from nexus_ray.stores.together import GroupCommit

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
    """Post the ``pending`` postings to the ledger, all in one of its transactions; returns how many are now posted.

    The requests that queued postings pass them on as they wrote them, after their commits (through
    :func:`post_after_commit`); the retry loop passes what it found pending. A row posted by someone else
    meanwhile is posted again harmlessly: the ledger answers its key with the same entry, and only a pending row is
    marked posted. Each posting is accepted or refused on its own. A failure (the ledger away, a refusal) leaves a
    posting pending for :func:`retry_forever`; it is logged, not raised: the capture or refund it belongs to has
    happened.
    """
    if not pending:
        return 0
    pg = await postgres.pool()
    failed: dict[UUID, str] = {}
    transfers: list[dict[str, object]] = []
    sent: list[Posting] = []
    for r in pending:
        currency = r.currency.strip()
        try:
            acct = await accounts(currency)
        except Exception as exc:
            failed[r.id] = type(exc).__name__
            continue
        debit, credit = acct["clearing"], acct["merchant_payable"]
        if r.kind == "refund":
            debit, credit = credit, debit
        sent.append(r)
        transfers.append({
            "debit_account_id": debit, "credit_account_id": credit, "amount": r.amount, "currency": currency,
            "idempotency_key": f"billing:{r.kind}:{r.source_id}",
            "description": f"billing {r.kind} of payment intent {r.payment_intent_id}",
            "metadata": {"payment_intent_id": str(r.payment_intent_id), "billing_posting_id": str(r.id)}})
    posted: list[tuple[UUID, UUID]] = []
    if transfers:
        try:
            results = await call("ledger-mgr", "post_transfers", caller=CALLER, transfers=transfers)
        except Exception as exc:
            failed.update((r.id, type(exc).__name__) for r in sent)
        else:
            for r, result in zip(sent, results, strict=True):
                if result.entry is None:
                    failed[r.id] = str((result.error or {}).get("code") or "refused")
                else:
                    posted.append((r.id, result.entry.id))
    for posting_id, error in failed.items():
        log.warning("ledger posting %s failed, retried later: %s", posting_id, error)
    if failed:
        await pg.execute("UPDATE billing_ledger_postings p SET attempts = attempts + 1, last_error = u.e "
                         "FROM unnest($1::uuid[], $2::text[]) AS u(id, e) WHERE p.id = u.id",
                         list(failed), list(failed.values()))
    if posted:
        await pg.execute("UPDATE billing_ledger_postings p SET status = 'posted', entry_id = u.e, posted_at = now(), "
                         "attempts = attempts + 1, last_error = NULL FROM unnest($1::uuid[], $2::uuid[]) AS u(id, e) "
                         "WHERE p.id = u.id AND p.status = 'pending'", [x[0] for x in posted], [x[1] for x in posted])
    return len(posted)


async def _post_together(_key: None, batch: list[Posting]) -> list[BaseException | None]:
    """The postings that concurrent requests of the process handed over (:func:`post_after_commit`), posted as one of
    the ledger's transactions. A failure to mark them leaves them pending for the retry loop, as :func:`post` does
    with the ledger's own failures."""
    try:
        await post(batch)
    except Exception as exc:  # the marking's statement failed: the postings stay pending for the retry loop
        log.warning("ledger postings of %d requests not marked, retried later: %s", len(batch), type(exc).__name__)
    return [None] * len(batch)


#: A group commit (:mod:`nexus_ray.stores.together`): a request's posting goes out at once when nothing is
#: being posted; while a batch is out, those of the requests that follow wait for it and then go out together. So an
#: idle process posts each at once, and a busy one about as many a ledger transaction as requests arrive in one
#: batch's time, with no delay set.
_together: GroupCommit[None, Posting, None] = GroupCommit(_post_together)


async def post_after_commit(pending: Sequence[Posting]) -> None:
    """Post what a request queued, with those of the requests beside it; returns once the ledger has answered them
    (or failed, leaving them for the retry loop), as :func:`post` would. A request cancelled while it waits leaves
    its postings to their batch."""
    await asyncio.gather(*(_together.submit(None, p) for p in pending))


#: The postings that :func:`post_soon` started and that are not done yet, by their source's id.
_started: dict[UUID, asyncio.Future[None]] = {}


def post_soon(pending: Sequence[Posting]) -> None:
    """Start posting ``pending`` (as :func:`post_after_commit` does) without waiting for it: each request waits for
    its own with :func:`posted`. A batch of captures hands its postings over this way, so that the next batch's
    transaction need not wait for this one's ledger transaction; each capture still answers once posted."""
    if not pending:
        return
    task = asyncio.ensure_future(post_after_commit(pending))
    for p in pending:
        _started[p.source_id] = task

    def forget(_: asyncio.Future[None]) -> None:
        for p in pending:
            if _started.get(p.source_id) is task:
                del _started[p.source_id]

    task.add_done_callback(forget)


async def posted(source_id: UUID) -> None:
    """Wait until the posting that :func:`post_soon` started for ``source_id`` is done (at once when none is out). A
    request cancelled while it waits leaves the posting to go on."""
    task = _started.get(source_id)
    if task is not None:
        await asyncio.shield(task)


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
