"""billing-service over HTTP on the real stores: the payment intent state machine and its 409s, Stripe's
idempotency semantics (replays, errors replayed, another body refused, expiry), every sandbox test card, the
delayed confirmation, refund limits, balanced ledger postings, a concurrent double capture, ownership, exports."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import pytest

pytestmark = pytest.mark.integration

API = "/commerce/v1/billing"
LEDGER = "/commerce/v1/ledger"
RW = ("commerce:billing:read", "commerce:billing:write")


@pytest.fixture(scope="module")
def merchant(bearer):
    return bearer(*RW, subject="shop-1")


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer("commerce:billing:*", "commerce:ledger:*", subject="billing-ops")


def key() -> str:
    return uuid.uuid4().hex


async def create(client, headers, *, amount=1000, currency="USD", pm="pm_card_visa", k=None, **extra):
    body = {"amount": amount, "currency": currency, "payment_method": pm, **extra}
    return await client.post(f"{API}/payment_intents", json=body, headers={**headers, "Idempotency-Key": k or key()})


async def authorized(client, headers, **kw) -> dict:
    r = await create(client, headers, **kw)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "authorized"
    return r.json()


async def act(client, headers, intent_id, action, body=None, k=None):
    h = {**headers, "Idempotency-Key": k or key()}
    return await client.post(f"{API}/payment_intents/{intent_id}/{action}", json=body, headers=h)


async def test_authorize_capture_refund_walks_the_state_machine(client, merchant):
    pi = await authorized(client, merchant, amount=5000)
    assert pi["amount_capturable"] == 5000 and pi["customer"] == "shop-1" and pi["card_last4"] == "4242"
    r = await act(client, merchant, pi["id"], "capture")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "captured" and r.json()["amount_captured"] == 5000
    # The capture answers with the intent as it wrote it (made beside the write, not read back): the same as a read.
    got = await client.get(f"{API}/payment_intents/{pi['id']}", headers=merchant)
    at = datetime.fromisoformat
    assert got.json() == r.json() and at(r.json()["updated_at"]) > at(pi["updated_at"])
    r = await act(client, merchant, pi["id"], "refunds", {"amount": 1500})
    assert r.status_code == 201, r.text
    assert r.json()["payment_intent"]["status"] == "partially_refunded"
    r = await act(client, merchant, pi["id"], "refunds", {"reason": "requested_by_customer"})
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == 3500 and r.json()["payment_intent"]["status"] == "refunded"
    r = await client.get(f"{API}/payment_intents/{pi['id']}/refunds", headers=merchant)
    assert sorted(x["amount"] for x in r.json()["items"]) == [1500, 3500]


async def test_invalid_transitions_are_409(client, merchant):
    canceled = await authorized(client, merchant)
    r = await act(client, merchant, canceled["id"], "cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    r = await act(client, merchant, canceled["id"], "cancel")  # cancelling again answers it again
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    for action in ("capture", "refunds"):
        r = await act(client, merchant, canceled["id"], action)
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "payment_intent_unexpected_state" and r.json()["payment_intent_status"] == "canceled"

    uncaptured = await authorized(client, merchant)
    r = await act(client, merchant, uncaptured["id"], "refunds")
    assert r.status_code == 409 and r.json()["payment_intent_status"] == "authorized"

    captured = await authorized(client, merchant)
    assert (await act(client, merchant, captured["id"], "capture")).status_code == 200
    for action in ("capture", "cancel"):
        r = await act(client, merchant, captured["id"], action)
        assert r.status_code == 409 and r.json()["payment_intent_status"] == "captured", r.text

    declined = await create(client, merchant, pm="pm_card_visa_chargeDeclined")
    assert declined.status_code == 402
    pid = declined.json()["payment_intent"]["id"]
    for action in ("capture", "cancel", "refunds"):
        r = await act(client, merchant, pid, action)
        assert r.status_code == 409 and r.json()["payment_intent_status"] == "declined", r.text


async def test_partial_capture_releases_the_rest_and_limits_refunds(client, merchant):
    pi = await authorized(client, merchant, amount=10_000)
    r = await act(client, merchant, pi["id"], "capture", {"amount": 10_001})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "amount"
    r = await act(client, merchant, pi["id"], "capture", {"amount": 6_000})
    assert r.status_code == 200 and r.json()["amount_captured"] == 6_000 and r.json()["amount_capturable"] == 0
    r = await act(client, merchant, pi["id"], "refunds", {"amount": 6_001})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "amount"
    assert (await act(client, merchant, pi["id"], "refunds", {"amount": 4_000})).status_code == 201
    r = await act(client, merchant, pi["id"], "refunds", {"amount": 2_001})
    assert r.status_code == 422, r.text  # only 2,000 left
    assert (await act(client, merchant, pi["id"], "refunds", {"amount": 2_000})).status_code == 201
    r = await act(client, merchant, pi["id"], "refunds", {"amount": 1})
    assert r.status_code == 409 and r.json()["payment_intent_status"] == "refunded"
    got = (await client.get(f"{API}/payment_intents/{pi['id']}", headers=merchant)).json()
    assert (got["amount_captured"], got["amount_refunded"], got["status"]) == (6_000, 6_000, "refunded")


@pytest.mark.parametrize(("pm", "status", "decline_code", "last4"), [
    ("pm_card_visa", 201, None, "4242"),
    ("4242424242424242", 201, None, "4242"),
    ("pm_card_mastercard", 201, None, "4444"),
    ("4000000000000002", 402, "generic_decline", "0002"),
    ("pm_card_visa_chargeDeclinedInsufficientFunds", 402, "insufficient_funds", "9995"),
    ("4000000000009995", 402, "insufficient_funds", "9995"),
    ("pm_card_chargeDeclinedExpiredCard", 402, "expired_card", "0069"),
])
async def test_each_test_card_has_its_outcome(client, merchant, pm, status, decline_code, last4):
    r = await create(client, merchant, pm=pm)
    assert r.status_code == status, r.text
    if status == 402:
        body = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert body["decline_code"] == decline_code and body["code"] == "card_declined"
        intent = body["payment_intent"]
        assert intent["status"] == "declined" and intent["decline_code"] == decline_code
        kept = await client.get(f"{API}/payment_intents/{intent['id']}", headers=merchant)
        assert kept.json()["status"] == "declined"  # a declined intent is kept, as the provider's charge is
    else:
        intent = r.json()
        assert intent["status"] == "authorized" and intent["decline_code"] is None
    assert intent["card_last4"] == last4


async def test_an_unknown_card_is_refused_naming_payment_method(client, merchant):
    r = await create(client, merchant, pm="4111111111111112")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "payment_method"


async def test_a_card_that_asks_for_an_action_is_confirmed_later_by_the_provider(client, merchant, until, monkeypatch):
    from nexus_ray.deployments.commerce.billing.settings import BillingSettings
    from nexus_ray.deployments.kit.settings import settings_of

    monkeypatch.setattr(settings_of(BillingSettings), "billing_sandbox_action_delay_s", 0.2)
    monkeypatch.setattr(settings_of(BillingSettings), "billing_sandbox_poll_s", 0.1)
    r = await create(client, merchant, pm="4000000000003220")
    assert r.status_code == 201 and r.json()["status"] == "requires_action"
    ok_id = r.json()["id"]
    waiting = await act(client, merchant, ok_id, "capture", k="capture-too-early-" + key())
    assert waiting.status_code == 409 and waiting.json()["payment_intent_status"] == "requires_action"
    r = await create(client, merchant, pm="pm_card_threeDSecureRequiredChargeDeclinedInsufficientFunds")
    assert r.status_code == 201 and r.json()["status"] == "requires_action"
    bad_id = r.json()["id"]

    async def status_of(pid):
        return (await client.get(f"{API}/payment_intents/{pid}", headers=merchant)).json()

    r = await create(client, merchant, pm="pm_card_threeDSecure2Required")
    abandoned = r.json()["id"]
    r = await act(client, merchant, abandoned, "cancel")  # the customer gave up: requires_action -> canceled
    assert r.status_code == 200 and r.json()["status"] == "canceled"

    await until(lambda: _is(status_of(ok_id), "authorized"), within_s=15)
    declined = await until(lambda: _is(status_of(bad_id), "declined"), within_s=15)
    assert declined["decline_code"] == "insufficient_funds"
    assert (await act(client, merchant, ok_id, "capture")).status_code == 200
    # Once its action is due, the provider's round leaves a canceled charge alone.
    from nexus_ray.deployments.commerce.billing.provider import SandboxProvider, provider
    from nexus_ray.stores import postgres

    pg = await postgres.pool()
    due = ("SELECT c.action_due_at <= now() FROM billing_sandbox_charges c JOIN billing_payment_intents i "
           "ON i.provider_charge_id = c.id WHERE i.id = $1")
    await until(lambda: pg.fetchval(due, uuid.UUID(abandoned)), within_s=15)
    sandbox = provider()
    assert isinstance(sandbox, SandboxProvider)
    await sandbox.complete_actions()
    assert (await status_of(abandoned))["status"] == "canceled"


async def _is(intent_awaitable, status):
    intent = await intent_awaitable
    return intent if intent["status"] == status else None


# -- idempotency -----------------------------------------------------------------------------------------------


async def test_a_refund_retried_after_its_write_was_lost_refunds_once(client, merchant, monkeypatch):
    """The provider refunds, then billing's own write is lost before its commit (the connection cut): the client
    gets a 503 and billing has recorded nothing. The retry with the same key reaches the provider as the same
    request, which replays its refund instead of refusing a second one: billing records it once, the card is
    refunded once."""
    import asyncpg

    from nexus_ray.deployments.commerce.billing import service
    from nexus_ray.stores import postgres

    pi = await authorized(client, merchant, amount=2000)
    assert (await act(client, merchant, pi["id"], "capture")).status_code == 200
    real = service._refund_read
    cuts = []

    def cut_once(*args, **kwargs):
        if not cuts:
            cuts.append(1)
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "_refund_read", cut_once)
    k = key()
    r = await act(client, merchant, pi["id"], "refunds", k=k)
    assert r.status_code == 503 and r.json()["code"] == "store_connection_lost", r.text
    pg = await postgres.pool()
    charge = await pg.fetchval("SELECT provider_charge_id FROM billing_payment_intents WHERE id = $1",
                               uuid.UUID(pi["id"]))
    assert await pg.fetchval("SELECT count(*) FROM billing_refunds WHERE payment_intent_id = $1",
                             uuid.UUID(pi["id"])) == 0
    assert await pg.fetchval("SELECT count(*) FROM billing_sandbox_refunds WHERE charge_id = $1", charge) == 1
    r = await act(client, merchant, pi["id"], "refunds", k=k)
    assert r.status_code == 201, r.text
    assert r.json()["amount"] == 2000 and r.json()["payment_intent"]["status"] == "refunded"
    assert await pg.fetchval("SELECT count(*) FROM billing_sandbox_refunds WHERE charge_id = $1", charge) == 1
    assert await pg.fetchval("SELECT count(*) FROM billing_refunds WHERE payment_intent_id = $1",
                             uuid.UUID(pi["id"])) == 1


async def test_an_authorization_retried_after_its_write_was_lost_holds_the_card_once(client, merchant, monkeypatch):
    """The provider authorises, then billing's write is lost before its commit: 503, no intent. The retry with the
    same key reaches the provider as the same request, which replays its charge: one intent, one hold on the card
    (not a second authorisation beside a forgotten first)."""
    import asyncpg

    from nexus_ray.deployments.commerce.billing import webhooks
    from nexus_ray.stores import postgres

    real = webhooks.publish
    cuts = []

    async def cut_once(*args, **kwargs):
        if not cuts:
            cuts.append(1)
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return await real(*args, **kwargs)

    monkeypatch.setattr(webhooks, "publish", cut_once)
    pg = await postgres.pool()
    charges = await pg.fetchval("SELECT count(*) FROM billing_sandbox_charges")
    k = key()
    r = await create(client, merchant, amount=1234, k=k)
    assert r.status_code == 503 and r.json()["code"] == "store_connection_lost", r.text
    assert await pg.fetchval("SELECT count(*) FROM billing_sandbox_charges") == charges + 1
    r = await create(client, merchant, amount=1234, k=k)
    assert r.status_code == 201 and r.json()["status"] == "authorized", r.text
    assert await pg.fetchval("SELECT count(*) FROM billing_sandbox_charges") == charges + 1
    assert await pg.fetchval("SELECT count(*) FROM billing_payment_intents WHERE provider_charge_id = "
                             "(SELECT provider_charge_id FROM billing_payment_intents WHERE id = $1)",
                             uuid.UUID(r.json()["id"])) == 1


async def test_a_key_sent_again_after_billing_forgot_it_gets_the_same_intent(client, merchant):
    """Billing's record of a key expires before the provider's does: the same key and body then reach the provider
    as the same request, which replays its charge, and billing answers with the intent it already has (not a
    second intent, not a conflict on the charge)."""
    from nexus_ray.stores import postgres

    k = key()
    first = await authorized(client, merchant, amount=777, k=k)
    pg = await postgres.pool()
    await pg.execute("DELETE FROM billing_idempotency WHERE scope = 'shop-1' AND key = $1", k)
    again = await create(client, merchant, amount=777, k=k)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first["id"]
    assert await pg.fetchval("SELECT count(*) FROM billing_payment_intents WHERE provider_charge_id = "
                             "(SELECT provider_charge_id FROM billing_payment_intents WHERE id = $1)",
                             uuid.UUID(first["id"])) == 1


async def test_same_key_and_body_replays_the_first_response(client, merchant):
    k = key()
    first = await create(client, merchant, amount=777, k=k)
    again = await create(client, merchant, amount=777, k=k)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    r = await client.get(f"{API}/payment_intents", params={"limit": 500}, headers=merchant)
    assert sum(1 for i in r.json()["items"] if i["id"] == first.json()["id"]) == 1


async def test_errors_are_replayed_too(client, merchant, until, monkeypatch):
    # A decline (402) is stored and replayed, not tried again.
    k = key()
    first = await create(client, merchant, pm="pm_card_chargeDeclinedInsufficientFunds", k=k)
    again = await create(client, merchant, pm="pm_card_chargeDeclinedInsufficientFunds", k=k)
    assert first.status_code == again.status_code == 402
    assert again.json()["payment_intent"] == first.json()["payment_intent"]
    assert again.headers["idempotent-replayed"] == "true"

    # A 409 is replayed even once the intent could now be captured: the key answers what it answered first.
    from nexus_ray.deployments.commerce.billing.settings import BillingSettings
    from nexus_ray.deployments.kit.settings import settings_of

    monkeypatch.setattr(settings_of(BillingSettings), "billing_sandbox_action_delay_s", 0.1)
    monkeypatch.setattr(settings_of(BillingSettings), "billing_sandbox_poll_s", 0.1)
    pi = (await create(client, merchant, pm="pm_card_threeDSecure2Required")).json()
    k = key()
    early = await act(client, merchant, pi["id"], "capture", k=k)
    assert early.status_code == 409
    await until(lambda: _is(client_get(client, merchant, pi["id"]), "authorized"), within_s=15)
    replay = await act(client, merchant, pi["id"], "capture", k=k)
    assert replay.status_code == 409 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["payment_intent_status"] == "requires_action" == early.json()["payment_intent_status"]
    assert (await act(client, merchant, pi["id"], "capture")).status_code == 200  # a new key captures


async def client_get(client, headers, pid):
    return (await client.get(f"{API}/payment_intents/{pid}", headers=headers)).json()


async def test_same_key_with_another_body_is_422_naming_the_header(client, merchant):
    k = key()
    assert (await create(client, merchant, amount=100, k=k)).status_code == 201
    r = await create(client, merchant, amount=101, k=k)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "Idempotency-Key"
    assert r.json()["errors"][0]["type"] == "idempotency_key_reused"


async def test_keys_are_scoped_per_caller(client, merchant, bearer):
    k = key()
    mine = await create(client, merchant, amount=300, k=k)
    theirs = await create(client, bearer(*RW, subject="shop-2"), amount=300, k=k)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"] and "idempotent-replayed" not in theirs.headers


async def test_a_key_expires_and_expired_keys_are_purged(client, merchant):
    from nexus_ray.deployments.commerce.billing.keyed import KEYS
    from nexus_ray.stores import postgres

    k = key()
    first = await create(client, merchant, amount=400, k=k)
    assert first.status_code == 201
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT created_at, expires_at FROM billing_idempotency WHERE scope = 'shop-1' AND "
                            "key = $1", k)
    assert 86390 < (row["expires_at"] - row["created_at"]).total_seconds() <= 86400  # the 24 h default
    # The day passes: move the key's expiry into the past (the clock cannot be moved).
    await pg.execute("UPDATE billing_idempotency SET expires_at = now() - interval '1 second' WHERE key = $1", k)
    again = await create(client, merchant, amount=401, k=k)  # another body: fine once the key has expired
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
    await pg.execute("UPDATE billing_idempotency SET expires_at = now() - interval '1 second' WHERE key = $1", k)
    assert await KEYS.purge() >= 1
    assert await pg.fetchval("SELECT count(*) FROM billing_idempotency WHERE key = $1", k) == 0


async def test_a_missing_key_is_422_naming_the_header(client, merchant):
    r = await client.post(f"{API}/payment_intents", json={"amount": 1, "currency": "USD",
                                                          "payment_method": "pm_card_visa"}, headers=merchant)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Idempotency-Key"


# -- ledger ----------------------------------------------------------------------------------------------------


async def _ledger_balances(client, admin, currency):
    from nexus_ray.deployments.commerce.billing import postings

    accts = await postings.accounts(currency)
    out = {}
    for role, account_id in accts.items():
        r = await client.get(f"{LEDGER}/accounts/{account_id}", headers=admin)
        assert r.status_code == 200, r.text
        out[role] = r.json()["balance"]["posted"]
    return out


async def test_captures_and_refunds_post_balanced_entries_to_the_ledger(client, merchant, admin):
    from nexus_ray.deployments.commerce.billing import service

    before = await _ledger_balances(client, admin, "EUR")
    pi = await authorized(client, merchant, amount=2_500, currency="EUR")
    assert await _ledger_balances(client, admin, "EUR") == before  # an authorisation posts nothing
    assert (await act(client, merchant, pi["id"], "capture", {"amount": 2_000})).status_code == 200
    after_capture = await _ledger_balances(client, admin, "EUR")
    assert after_capture["clearing"] - before["clearing"] == 2_000
    assert after_capture["merchant_payable"] - before["merchant_payable"] == 2_000
    assert (await act(client, merchant, pi["id"], "refunds", {"amount": 750})).status_code == 201
    after_refund = await _ledger_balances(client, admin, "EUR")
    assert after_refund["clearing"] - before["clearing"] == 1_250
    assert after_refund["merchant_payable"] - before["merchant_payable"] == 1_250
    rows = await service.ledger_postings(intent_id=uuid.UUID(pi["id"]))
    assert [(r["kind"], r["amount"], r["status"]) for r in rows] == [("capture", 2_000, "posted"),
                                                                    ("refund", 750, "posted")]
    for r in rows:  # each a balanced two-line entry in the ledger
        entry = (await client.get(f"{LEDGER}/entries/{r['entry_id']}", headers=admin)).json()
        assert sum(ln["amount"] for ln in entry["lines"] if ln["side"] == "debit") == r["amount"]
        assert sum(ln["amount"] for ln in entry["lines"] if ln["side"] == "credit") == r["amount"]
    report = (await client.get(f"{LEDGER}/reconciliation", headers=admin)).json()
    assert all(c["balanced"] for c in report["currencies"]) and not report["balance_mismatches"]


async def test_a_concurrent_double_capture_posts_once(client, merchant, admin):
    from nexus_ray.deployments.commerce.billing import service

    before = await _ledger_balances(client, admin, "GBP")
    pi = await authorized(client, merchant, amount=900, currency="GBP")
    k = key()
    same_key = await asyncio.gather(*(act(client, merchant, pi["id"], "capture", k=k) for _ in range(4)))
    assert [r.status_code for r in same_key] == [200] * 4
    assert sum(1 for r in same_key if r.headers.get("idempotent-replayed") == "true") == 3
    assert len({r.json()["updated_at"] for r in same_key}) == 1
    pi2 = await authorized(client, merchant, amount=100, currency="GBP")
    other_keys = await asyncio.gather(*(act(client, merchant, pi2["id"], "capture") for _ in range(4)))
    assert sorted(r.status_code for r in other_keys) == [200, 409, 409, 409]
    after = await _ledger_balances(client, admin, "GBP")
    assert after["clearing"] - before["clearing"] == 1_000  # 900 + 100, each once
    for p in (pi, pi2):
        assert len(await service.ledger_postings(intent_id=uuid.UUID(p["id"]))) == 1


async def test_a_posting_sent_again_after_a_crash_posts_once(client, merchant, admin):
    from nexus_ray.deployments.commerce.billing import postings, service
    from nexus_ray.stores import postgres

    before = await _ledger_balances(client, admin, "CHF")
    pi = await authorized(client, merchant, amount=555, currency="CHF")
    assert (await act(client, merchant, pi["id"], "capture")).status_code == 200
    (first,) = await service.ledger_postings(intent_id=uuid.UUID(pi["id"]))
    assert first["status"] == "posted"
    # As if the process died after the ledger posted and before the posting was marked: pending again.
    pg = await postgres.pool()
    await pg.execute("UPDATE billing_ledger_postings SET status = 'pending', entry_id = NULL WHERE id = $1",
                     first["id"])
    assert await postings.retry_pending(older_than_s=0) >= 1
    (again,) = await service.ledger_postings(intent_id=uuid.UUID(pi["id"]))
    assert again["status"] == "posted" and again["entry_id"] == first["entry_id"]  # the ledger's replay
    after = await _ledger_balances(client, admin, "CHF")
    assert after["clearing"] - before["clearing"] == 555 == after["merchant_payable"] - before["merchant_payable"]


async def test_concurrent_captures_each_post_once_and_their_postings_go_out_together(client, merchant, admin,
                                                                                          monkeypatch):
    from nexus_ray.deployments.commerce.billing import postings, service
    from nexus_ray.stores import postgres

    before = await _ledger_balances(client, admin, "DKK")
    intents = [await authorized(client, merchant, amount=100 + n, currency="DKK") for n in range(6)]
    captured = await asyncio.gather(*(act(client, merchant, pi["id"], "capture") for pi in intents))
    assert [r.status_code for r in captured] == [200] * 6
    rows = [(await service.ledger_postings(intent_id=uuid.UUID(pi["id"])))[0] for pi in intents]
    assert all(r["status"] == "posted" for r in rows) and len({r["entry_id"] for r in rows}) == 6
    after = await _ledger_balances(client, admin, "DKK")
    assert after["clearing"] - before["clearing"] == sum(100 + n for n in range(6))
    assert after["merchant_payable"] - before["merchant_payable"] == sum(100 + n for n in range(6))

    # Three requests hand over their postings at once (as if each had just committed, its posting pending): one
    # batch takes all three to the ledger, which answers each key with the entry it posted before.
    pg = await postgres.pool()
    await pg.execute("UPDATE billing_ledger_postings SET status = 'pending', entry_id = NULL WHERE id = ANY($1)",
                     [r["id"] for r in rows[:3]])
    batches: list[int] = []
    real_post = postings.post

    async def counted(pending):
        batches.append(len(pending))
        return await real_post(pending)

    monkeypatch.setattr(postings, "post", counted)
    pending = [postings.Posting(id=r["id"], payment_intent_id=uuid.UUID(pi["id"]), kind=r["kind"],
                                source_id=r["source_id"], amount=r["amount"], currency=r["currency"])
               for r, pi in zip(rows[:3], intents[:3], strict=True)]
    await asyncio.gather(*(postings.post_after_commit([p]) for p in pending))
    assert batches == [3]
    again = [(await service.ledger_postings(intent_id=uuid.UUID(pi["id"])))[0] for pi in intents[:3]]
    assert [(r["status"], r["entry_id"]) for r in again] == [("posted", r["entry_id"]) for r in rows[:3]]
    assert await _ledger_balances(client, admin, "DKK") == after  # replayed, not posted twice


async def test_authorizations_and_captures_asked_at_once_are_written_together_and_answered_each_alone(merchant):
    """Requests of one kind asked at the same moment go out as one transaction, and each is still answered as it
    would be alone: a decline, an unknown card, a key sent twice (replayed), a key reused with another body (422);
    then two captures of one intent (one 200, one 409), one over the authorised amount (422), one of a declined
    intent (409), and a stranger's (404). The refused write nothing; each capture posts once."""
    from nexus_ray.deployments.commerce.billing import service
    from nexus_ray.exceptions import ValidationFailed
    from nexus_ray.stores import postgres

    def ask(k: str, amount: int, pm: str = "pm_card_visa"):
        return service.authorize(caller="shop-1", customer="shop-1", amount=amount, currency="SEK", payment_method=pm,
                                 metadata={}, idempotency_key=k, field_name="idempotency_key")

    keys = [key() for _ in range(6)]
    out = await asyncio.gather(
        ask(keys[0], 101), ask(keys[1], 102), ask(keys[2], 103), ask(keys[3], 104, "pm_card_visa_chargeDeclined"),
        ask(keys[4], 105, "4111111111111111"), ask(keys[1], 102), ask(keys[2], 999), return_exceptions=True)
    ok, same, other, declined, unknown, replay, reused = out
    assert [o.status for o in (ok, same, other)] == [201] * 3 and not any(o.replayed for o in (ok, same, other))
    assert declined.status == 402 and declined.body["decline_code"] == "generic_decline"
    assert unknown.status == 422 and unknown.body["errors"][0]["field"] == "payment_method"
    assert replay.replayed and replay.status == 201 and replay.body == same.body
    assert isinstance(reused, ValidationFailed) and reused.extra["code"] == "idempotency_key_reused"
    pg = await postgres.pool()
    ids = [uuid.UUID(o.body["id"]) for o in (ok, same, other)] + [uuid.UUID(declined.body["payment_intent"]["id"])]
    rows = await pg.fetch("SELECT id, status, xmin::text AS tx FROM billing_payment_intents WHERE id = ANY($1)", ids)
    assert len(rows) == 4 and len({r["tx"] for r in rows}) == 1  # one transaction for the four
    charges = "SELECT c.status, c.xmin::text AS tx FROM billing_sandbox_charges c JOIN billing_payment_intents i " \
              "ON i.provider_charge_id = c.id WHERE i.id = ANY($1)"
    assert len({r["tx"] for r in await pg.fetch(charges, ids)}) == 1  # and the provider wrote their charges together
    assert await pg.fetchval("SELECT count(*) FROM billing_payment_intents WHERE created_by = 'shop-1' "
                             "AND amount = 105 AND currency = 'SEK'") == 0  # the unknown card wrote nothing
    stored = await pg.fetch("SELECT key, status FROM billing_idempotency WHERE scope = 'shop-1' AND key = ANY($1)",
                            keys)
    assert sorted(r["status"] for r in stored) == [201, 201, 201, 402, 422]
    # The answers to the keys are stored by the statement that records the events (the same command of the
    # transaction), not by one more statement after it.
    command = await pg.fetchval("SELECT cmin::text FROM billing_idempotency WHERE scope = 'shop-1' AND key = $1",
                                keys[0])
    assert await pg.fetchval("SELECT cmin::text FROM outbox WHERE key = $1 AND topic = 'payment_intent.created'",
                             ok.body["id"]) == command

    def take(intent: dict, caller: str = "shop-1", amount: int | None = None):
        return service.capture(caller=caller, privileged=False, intent_id=uuid.UUID(intent["id"]), amount=amount,
                               idempotency_key=key())

    out = await asyncio.gather(
        take(ok.body), take(ok.body), take(same.body, amount=500), take(other.body),
        take(declined.body["payment_intent"]), take(other.body, caller="shop-2"), return_exceptions=True)
    first, twice, over, third, of_declined, stranger = out
    assert first.status == 200 and first.body["status"] == "captured" and first.body["amount_captured"] == 101
    assert twice.status == 409 and twice.body["payment_intent_status"] == "captured"
    assert over.status == 422 and over.body["errors"][0]["field"] == "amount"
    assert third.status == 200 and third.body["amount_captured"] == 103
    assert of_declined.status == 409 and of_declined.body["payment_intent_status"] == "declined"
    assert stranger.status == 404 and not stranger.replayed
    rows = await pg.fetch("SELECT id, status, xmin::text AS tx FROM billing_payment_intents WHERE id = ANY($1)", ids)
    status = {r["id"]: r["status"] for r in rows}
    assert [status[i] for i in ids] == ["captured", "authorized", "captured", "declined"]
    assert len({r["tx"] for r in rows if r["status"] == "captured"}) == 1
    captured = [r for r in await pg.fetch(charges, ids) if r["status"] == "captured"]
    assert len(captured) == 2 and len({r["tx"] for r in captured}) == 1
    for intent_id, amount in ((ids[0], 101), (ids[2], 103)):
        (posting,) = await service.ledger_postings(intent_id=intent_id)
        assert posting["status"] == "posted" and posting["amount"] == amount
    assert await service.ledger_postings(intent_id=ids[1]) == []


# -- ownership and exports -------------------------------------------------------------------------------------


async def test_one_customer_cannot_see_or_touch_anothers_intents(client, bearer, merchant):
    alice = bearer(*RW, subject="alice")
    bob = bearer(*RW, subject="bob")
    pi = await authorized(client, alice, amount=123)
    for who in (bob, merchant):
        assert (await client.get(f"{API}/payment_intents/{pi['id']}", headers=who)).status_code == 404
        assert (await act(client, who, pi["id"], "capture")).status_code == 404
        assert (await act(client, who, pi["id"], "cancel")).status_code == 404
        listed = (await client.get(f"{API}/payment_intents", params={"limit": 500}, headers=who)).json()["items"]
        assert pi["id"] not in {i["id"] for i in listed}
    r = await create(client, bob, customer="alice")
    assert r.status_code == 403 and r.json()["field"] == "customer"
    # A merchant's intent for a customer: the customer sees it, but only the merchant changes it.
    admin_shop = bearer(*RW, "commerce:billing:admin", subject="shop-admin")
    theirs = await authorized(client, admin_shop, customer="bob")
    assert (await client.get(f"{API}/payment_intents/{theirs['id']}", headers=bob)).status_code == 200
    assert (await act(client, bob, theirs["id"], "capture")).status_code == 403
    reader = bearer("commerce:billing:read", subject="alice")
    assert (await create(client, reader)).status_code == 403


async def test_exports_follow_the_contract(apps):
    from nexus_ray.deployments.kit.calls import call
    from nexus_ray.exceptions import Conflict, ValidationFailed

    caller = "puabo-nuki-order-processor"
    k = key()
    pi = await call("billing-service", "authorize", caller=caller, amount=4_200, currency="USD",
                    payment_method="pm_card_visa", customer="carol", idempotency_key=k, metadata={"order_id": "o-1"})
    assert pi.status == "authorized" and pi.customer == "carol" and pi.metadata == {"order_id": "o-1"}
    again = await call("billing-service", "authorize", caller=caller, amount=4_200, currency="USD",
                       payment_method="pm_card_visa", customer="carol", idempotency_key=k,
                       metadata={"order_id": "o-1"})
    assert again.id == pi.id
    with pytest.raises(ValidationFailed) as reused:
        await call("billing-service", "authorize", caller=caller, amount=1, currency="USD",
                   payment_method="pm_card_visa", customer="carol", idempotency_key=k)
    assert reused.value.extra["errors"][0]["field"] == "idempotency_key"
    declined = await call("billing-service", "authorize", caller=caller, amount=10, currency="USD",
                          payment_method="pm_card_chargeDeclined", customer="carol", idempotency_key=key())
    assert declined.status == "declined" and declined.decline_code == "generic_decline"
    with pytest.raises(ValidationFailed) as bad:
        await call("billing-service", "authorize", caller=caller, amount=1.5, currency="USD",
                   payment_method="pm_card_visa", customer="carol", idempotency_key=key())
    assert [e["field"] for e in bad.value.extra["errors"]] == ["amount"]
    captured = await call("billing-service", "capture", caller=caller, payment_intent_id=pi.id,
                          idempotency_key=key(), amount=4_000)
    assert captured.status == "captured" and captured.amount_captured == 4_000
    refund = await call("billing-service", "refund", caller=caller, payment_intent_id=str(pi.id),
                        idempotency_key=key())
    assert refund.amount == 4_000 and refund.payment_intent.status == "refunded"
    with pytest.raises(Conflict):
        await call("billing-service", "cancel", caller=caller, payment_intent_id=pi.id)
    other = await call("billing-service", "authorize", caller=caller, amount=5, currency="USD",
                       payment_method="pm_card_visa", customer="carol", idempotency_key=key())
    assert (await call("billing-service", "cancel", caller=caller, payment_intent_id=other.id)).status == "canceled"
    assert (await call("billing-service", "cancel", caller=caller, payment_intent_id=other.id)).status == "canceled"


async def test_events_go_through_the_outbox(client, merchant):
    from nexus_ray.stores import postgres

    pi = await authorized(client, merchant, amount=650)
    assert (await act(client, merchant, pi["id"], "capture")).status_code == 200
    assert (await act(client, merchant, pi["id"], "refunds")).status_code == 201
    pg = await postgres.pool()
    topics = [r["topic"] for r in await pg.fetch("SELECT topic FROM outbox WHERE key = $1 ORDER BY id", pi["id"])]
    assert topics == ["payment_intent.created", "payment_intent.authorized", "payment_intent.succeeded",
                      "payment_intent.refunded"]


async def test_a_capture_batch_does_not_wait_for_the_ledger_posting_of_the_batch_before(client, merchant, admin,
                                                                                        until):
    """The captures of a batch hand their ledger postings over after their commit: while the first capture's
    posting is held up in the ledger, a second capture is still written (its intent captured), and each answers
    only once its own posting is done."""
    from nexus_ray.deployments.commerce.billing import postings, service
    from nexus_ray.stores import postgres

    accounts = await postings.accounts("NOK")  # opened before the ledger is held up
    first, second = [await authorized(client, merchant, amount=300 + n, currency="NOK") for n in range(2)]
    pg = await postgres.pool()

    def captured(pi):
        async def check() -> bool:
            return await pg.fetchval("SELECT status FROM billing_payment_intents WHERE id = $1",
                                     uuid.UUID(pi["id"])) == "captured"
        return check

    async with pg.acquire() as holder, holder.transaction():
        # Every balance row of billing's NOK accounts locked: a posting to them waits here.
        await holder.execute("SELECT 1 FROM ledger_balances WHERE account_id = ANY($1::uuid[]) FOR UPDATE",
                             list(accounts.values()))
        one = asyncio.create_task(act(client, merchant, first["id"], "capture"))
        await until(captured(first), within_s=20, every=0.05)
        two = asyncio.create_task(act(client, merchant, second["id"], "capture"))
        await until(captured(second), within_s=20, every=0.05)  # written while the first one's posting waits
        assert not one.done() and not two.done()  # both wait for their postings
    answers = await asyncio.gather(one, two)
    assert [r.status_code for r in answers] == [200, 200]
    for pi in (first, second):
        (row,) = await service.ledger_postings(intent_id=uuid.UUID(pi["id"]))
        assert row["status"] == "posted"
