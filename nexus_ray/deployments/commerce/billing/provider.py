"""The payment-provider interface, and the sandbox provider that implements it with test cards.

billing-service talks to a card network only through :class:`PaymentProvider`. A provider
is a remote system with state of its own: it authorises (or declines, or asks for a customer
action such as 3-D Secure), captures, cancels and refunds charges, each call keyed by an
idempotency key billing derives from its own operation, and it reports outcomes that arrive
later (an action the customer completed) to the callback :meth:`PaymentProvider.run` is given.

:class:`SandboxProvider` is the shipped fake (the only one): it behaves like a provider's test
mode. Its records are in PostgreSQL tables of its own (``billing_sandbox_*``) reached through
a small pool of its own -- it stands for a remote system, so billing's transactions never wait
for their own pool's connections while calling it. Test cards (numbers, or ``pm_card_*``
tokens as Stripe names them):

=========================  ===========================  ======================================
card                       token                        outcome
=========================  ===========================  ======================================
4242424242424242           pm_card_visa                 authorised
5555555555554444           pm_card_mastercard           authorised
4000000000000002           pm_card_visa_chargeDeclined  declined: ``generic_decline``
4000000000009995           pm_card_visa_chargeDeclinedInsufficientFunds
                                                        declined: ``insufficient_funds``
4000000000000069           pm_card_chargeDeclinedExpiredCard
                                                        declined: ``expired_card``
4000000000003220           pm_card_threeDSecure2Required
                                                        ``requires_action``, then authorised
                                                        ``billing_sandbox_action_delay_s`` later
4000008260003178           pm_card_threeDSecureRequiredChargeDeclinedInsufficientFunds
                                                        ``requires_action``, then declined:
                                                        ``insufficient_funds``
=========================  ===========================  ======================================

Any other number or token is refused (422 naming ``payment_method``), as a test mode refuses
real cards.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import asyncpg

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.together import GroupCommit

from .settings import BillingSettings

log = logging.getLogger(__name__)

ChargeStatus = Literal["requires_action", "authorized", "declined", "captured", "canceled"]


@dataclass(frozen=True)
class Charge:
    """A provider's charge as billing sees it."""

    id: str
    status: ChargeStatus
    amount: int
    currency: str
    card_brand: str
    card_last4: str
    decline_code: str | None = None
    amount_captured: int = 0
    amount_refunded: int = 0


@dataclass(frozen=True)
class ProviderRefund:
    id: str
    charge_id: str
    amount: int


Notify = Callable[[Charge], Awaitable[None]]


class PaymentProvider(Protocol):
    """What billing needs of a payment provider. Every call that changes a charge takes an idempotency key:
    the same key returns the first call's result, so billing may retry any call."""

    name: str

    async def authorize(self, *, amount: int, currency: str, payment_method: str, idempotency_key: str) -> Charge:
        """Authorise ``amount`` on the card: authorized, declined (with a decline code) or requires_action."""
        ...

    async def capture(self, *, charge_id: str, amount: int, idempotency_key: str) -> Charge:
        """Take ``amount`` (at most the authorised amount) of an authorized charge; the rest is released."""
        ...

    async def cancel(self, *, charge_id: str) -> Charge:
        """Release an authorization (or abandon a pending customer action)."""
        ...

    async def refund(self, *, charge_id: str, amount: int, idempotency_key: str) -> ProviderRefund:
        """Give back ``amount`` of a captured charge (never more than captured minus refunded)."""
        ...

    async def run(self, notify: Notify) -> None:
        """Background: call ``notify`` with each charge whose outcome arrived later (at least once each)."""
        ...


# -- the sandbox ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCard:
    brand: str
    outcome: str  # "authorized", "decline:<code>", or "action:<final outcome>"


TEST_CARDS: dict[str, TestCard] = {
    "4242424242424242": TestCard("visa", "authorized"),
    "5555555555554444": TestCard("mastercard", "authorized"),
    "4000000000000002": TestCard("visa", "decline:generic_decline"),
    "4000000000009995": TestCard("visa", "decline:insufficient_funds"),
    "4000000000000069": TestCard("visa", "decline:expired_card"),
    "4000000000003220": TestCard("visa", "action:authorized"),
    "4000008260003178": TestCard("visa", "action:decline:insufficient_funds"),
}

TEST_TOKENS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_visa_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_visa_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_chargeDeclinedExpiredCard": "4000000000000069",
    "pm_card_threeDSecure2Required": "4000000000003220",
    "pm_card_authenticationRequired": "4000000000003220",
    "pm_card_threeDSecureRequiredChargeDeclinedInsufficientFunds": "4000008260003178",
}


def test_card(payment_method: str) -> tuple[str, TestCard]:
    """(number, card) of a sandbox payment method; 422 naming ``payment_method`` for anything else."""
    number = TEST_TOKENS.get(payment_method, payment_method.replace(" ", ""))
    card = TEST_CARDS.get(number)
    if card is None:
        raise ValidationFailed.for_field("payment_method", "is not a sandbox test card or pm_card_* token",
                                         "unknown_payment_method")
    return number, card


_CHARGE = "id, status, amount, currency, card_brand, card_last4, decline_code, amount_captured, amount_refunded"


def _charge(row: asyncpg.Record) -> Charge:
    return Charge(id=row["id"], status=row["status"], amount=row["amount"], currency=row["currency"].strip(),
                  card_brand=row["card_brand"], card_last4=row["card_last4"], decline_code=row["decline_code"],
                  amount_captured=row["amount_captured"], amount_refunded=row["amount_refunded"])


@dataclass(frozen=True)
class _Authorization:
    key: str
    last4: str
    brand: str
    amount: int
    currency: str
    status: str
    decline: str | None
    action: str | None


class SandboxProvider:
    """The test-mode provider: outcomes by test card, delayed customer actions, refund limits, idempotency."""

    name = "sandbox"

    def __init__(self) -> None:
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        # Calls that arrive together are written together, as a provider's own service would batch its writes.
        self._authorizations: GroupCommit[None, _Authorization, Charge] = GroupCommit(self._authorize_many)
        self._captures: GroupCommit[None, tuple[str, int], Charge] = GroupCommit(self._capture_many)

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    await postgres.pool()  # the schema (its tables included) is migrated by the main pool
                    self._pool = await postgres.open_pool(1, 4)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def authorize(self, *, amount: int, currency: str, payment_method: str, idempotency_key: str) -> Charge:
        number, card = test_card(payment_method)
        status, decline, action = "authorized", None, None
        if card.outcome.startswith("decline:"):
            status, decline = "declined", card.outcome.split(":", 1)[1]
        elif card.outcome.startswith("action:"):
            status, action = "requires_action", card.outcome.split(":", 1)[1]
        return await self._authorizations.submit(None, _Authorization(
            idempotency_key, number[-4:], card.brand, amount, currency, status, decline, action))

    async def _authorize_many(self, _: None, asks: list[_Authorization]) -> list[Charge | BaseException]:
        """The charges of authorisations that arrive together, in one statement; a key seen before gets the charge
        it made (a retry)."""
        delay = settings_of(BillingSettings).billing_sandbox_action_delay_s
        db = await self._db()
        rows = {r["idempotency_key"]: r for r in await db.fetch(
            f"INSERT INTO billing_sandbox_charges (id, idempotency_key, card_last4, card_brand, amount, currency, "
            f"status, decline_code, action_outcome, action_due_at) SELECT i, k, l4, b, a, c, s, d, o, "
            f"CASE WHEN o IS NULL THEN NULL ELSE now() + make_interval(secs => $10) END FROM unnest($1::text[], "
            f"$2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::text[], $9::text[]) "
            f"AS u(i, k, l4, b, a, c, s, d, o) ON CONFLICT (idempotency_key) DO NOTHING "
            f"RETURNING idempotency_key, {_CHARGE}",
            ["ch_sbx_" + secrets.token_hex(12) for _ in asks], [a.key for a in asks], [a.last4 for a in asks],
            [a.brand for a in asks], [a.amount for a in asks], [a.currency for a in asks], [a.status for a in asks],
            [a.decline for a in asks], [a.action for a in asks], float(delay))}
        if retried := [a.key for a in asks if a.key not in rows]:
            rows.update({r["idempotency_key"]: r for r in await db.fetch(
                f"SELECT idempotency_key, {_CHARGE} FROM billing_sandbox_charges WHERE idempotency_key = ANY($1)",
                retried)})
        return [_charge(rows[a.key]) for a in asks]

    async def _locked(self, conn: asyncpg.Connection, charge_id: str) -> asyncpg.Record:
        row = await conn.fetchrow(f"SELECT {_CHARGE} FROM billing_sandbox_charges WHERE id = $1 FOR UPDATE",
                                  charge_id)
        if row is None:
            raise NotFound(f"sandbox charge {charge_id} not found")
        return row

    async def capture(self, *, charge_id: str, amount: int, idempotency_key: str) -> Charge:
        return await self._captures.submit(None, (charge_id, amount))

    async def _capture_many(self, _: None, asks: list[tuple[str, int]]) -> list[Charge | BaseException]:
        """Captures that arrive together, in one conditional statement; only those it did not make are read, each
        to say why (or to answer a retried capture)."""
        db = await self._db()
        rows = {r["id"]: r for r in await db.fetch(
            f"UPDATE billing_sandbox_charges c SET status = 'captured', amount_captured = u.a "
            f"FROM unnest($1::text[], $2::int8[]) AS u(id, a) WHERE c.id = u.id AND c.status = 'authorized' "
            f"AND u.a <= c.amount RETURNING {postgres.qualified('c', _CHARGE)}",
            [charge_id for charge_id, _ in asks], [amount for _, amount in asks])}
        out: list[Charge | BaseException] = []
        for charge_id, amount in asks:
            row = rows.get(charge_id)
            try:
                out.append(_charge(row) if row is not None and row["amount_captured"] == amount
                           else await self._not_captured(db, charge_id, amount))
            except NexusError as err:
                out.append(err)
        return out

    async def _not_captured(self, db: asyncpg.Pool, charge_id: str, amount: int) -> Charge:
        """A capture the statement did not make: a retried capture is answered, anything else refused with why."""
        row = await db.fetchrow(f"SELECT {_CHARGE} FROM billing_sandbox_charges WHERE id = $1", charge_id)
        if row is None:
            raise NotFound(f"sandbox charge {charge_id} not found")
        if row["status"] == "captured" and row["amount_captured"] == amount:
            return _charge(row)  # a retried capture
        if row["status"] != "authorized":
            raise Conflict(f"charge {charge_id} is {row['status']}, not authorized",
                           extra={"code": "charge_not_capturable"})
        raise ValidationFailed.for_field("amount", f"must be at most the authorised {row['amount']}",
                                         "less_than_equal")

    async def cancel(self, *, charge_id: str) -> Charge:
        async with (await self._db()).acquire() as conn, conn.transaction():
            row = await self._locked(conn, charge_id)
            if row["status"] == "canceled":
                return _charge(row)
            if row["status"] not in ("authorized", "requires_action"):
                raise Conflict(f"charge {charge_id} is {row['status']}", extra={"code": "charge_not_cancelable"})
            row = await conn.fetchrow(
                f"UPDATE billing_sandbox_charges SET status = 'canceled', notify = false WHERE id = $1 "
                f"RETURNING {_CHARGE}", charge_id)
            assert row is not None
            return _charge(row)

    async def refund(self, *, charge_id: str, amount: int, idempotency_key: str) -> ProviderRefund:
        async with (await self._db()).acquire() as conn, conn.transaction():
            row = await self._locked(conn, charge_id)
            done = await conn.fetchrow("SELECT id, amount FROM billing_sandbox_refunds WHERE idempotency_key = $1",
                                       idempotency_key)
            if done is not None:
                return ProviderRefund(done["id"], charge_id, done["amount"])
            if row["status"] != "captured":
                raise Conflict(f"charge {charge_id} is {row['status']}, not captured",
                               extra={"code": "charge_not_refundable"})
            left = row["amount_captured"] - row["amount_refunded"]
            if amount > left:
                raise ValidationFailed.for_field("amount", f"must be at most the {left} not yet refunded",
                                                 "less_than_equal")
            refund_id = "re_sbx_" + secrets.token_hex(12)
            await conn.execute("INSERT INTO billing_sandbox_refunds (id, charge_id, idempotency_key, amount) "
                               "VALUES ($1, $2, $3, $4)", refund_id, charge_id, idempotency_key, amount)
            await conn.execute(
                "UPDATE billing_sandbox_charges SET amount_refunded = amount_refunded + $2 WHERE id = $1",
                charge_id, amount)
            return ProviderRefund(refund_id, charge_id, amount)

    async def complete_actions(self) -> int:
        """Finish the customer actions that are due (as the customer's bank would): returns how many."""
        db = await self._db()
        done = await db.execute(
            "UPDATE billing_sandbox_charges SET notify = true, "
            "status = CASE WHEN action_outcome = 'authorized' THEN 'authorized' ELSE 'declined' END, "
            "decline_code = CASE WHEN action_outcome LIKE 'decline:%' THEN substr(action_outcome, 9) END "
            "WHERE status = 'requires_action' AND action_due_at <= now()")
        return int(done.split()[-1])

    async def send_notices(self, notify: Notify) -> int:
        """Report the charges whose outcome changed to ``notify``; a notice that fails is sent again later, after
        a wait that doubles per failure (one second up to an hour), as a provider retries its webhooks."""
        db = await self._db()
        rows = await db.fetch(f"SELECT {_CHARGE} FROM billing_sandbox_charges WHERE notify AND notify_after <= now() "
                              f"ORDER BY notify_after LIMIT 100")
        sent = 0
        for row in rows:
            try:
                await notify(_charge(row))
            except Exception as exc:  # billing not ready (or never: a charge it rolled back)
                log.warning("sandbox notice of %s failed: %s", row["id"], type(exc).__name__)
                await db.execute(
                    "UPDATE billing_sandbox_charges SET notify_failures = notify_failures + 1, notify_after = now() "
                    "+ make_interval(secs => least(3600, 2 ^ notify_failures)) WHERE id = $1", row["id"])
                continue
            await db.execute("UPDATE billing_sandbox_charges SET notify = false WHERE id = $1 AND status = $2",
                             row["id"], row["status"])
            sent += 1
        return sent

    async def run(self, notify: Notify) -> None:
        async def one_round() -> None:
            await self.complete_actions()
            await self.send_notices(notify)

        try:
            await loops.repeat("sandbox provider round", one_round,
                               lambda: settings_of(BillingSettings).billing_sandbox_poll_s)
        finally:
            await self.close()


_provider: PaymentProvider | None = None


def provider() -> PaymentProvider:
    """The process's payment provider (the one ``billing_provider`` names)."""
    global _provider
    if _provider is None:
        _provider = SandboxProvider()
    return _provider
