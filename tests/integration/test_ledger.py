"""ledger-mgr over HTTP on the real stores: balanced immutable entries, holds, idempotency, batches, and the
ledger's invariants after hundreds of concurrent transfers (spread out, and all through one hot account)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import pytest

from nexus_ray.deployments.commerce.ledger.models import BatchResult, BatchSummary, EntryRead, ItemResult, ItemSummary

pytestmark = pytest.mark.integration

API = "/commerce/v1/ledger"
ALL = "commerce:ledger:*"


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer(ALL, subject="ledger-ops")


def key() -> str:
    return uuid.uuid4().hex


async def open_account(client, headers, *, type="liability", currency="USD", allow_negative=False, owner=None,
                       shards=None, name="acct"):
    body = {"name": name, "type": type, "currency": currency, "allow_negative": allow_negative}
    if owner is not None:
        body["owner"] = owner
    if shards is not None:
        body["shards"] = shards
    r = await client.post(f"{API}/accounts", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def transfer(client, headers, debit, credit, amount, *, currency="USD", k=None, **extra):
    body = {"debit_account_id": debit, "credit_account_id": credit, "amount": amount, "currency": currency,
            "idempotency_key": k or key(), **extra}
    return await client.post(f"{API}/transfers", json=body, headers=headers)


async def balance_of(client, headers, account_id):
    r = await client.get(f"{API}/accounts/{account_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["balance"]


async def funded_wallet(client, admin, amount, *, owner="ledger-ops", currency="USD"):
    """A customer wallet (liability, no negatives) holding ``amount``, paid in from a bank asset account."""
    bank = await open_account(client, admin, type="asset", currency=currency, owner="platform", name="bank")
    wallet = await open_account(client, admin, currency=currency, owner=owner, name="wallet")
    if amount:
        r = await transfer(client, admin, bank, wallet, amount, currency=currency)
        assert r.status_code == 201, r.text
    return bank, wallet


async def reconciled(client, admin) -> dict:
    r = await client.get(f"{API}/reconciliation", headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


# -- entries ---------------------------------------------------------------------------------------------


async def test_a_transfer_is_a_balanced_entry_with_an_event_and_a_statement(client, admin):
    from nexus_ray.stores import postgres

    bank, wallet = await funded_wallet(client, admin, 10_000)
    shop = await open_account(client, admin, name="shop")
    r = await transfer(client, admin, wallet, shop, 2_500, description="order 1")
    assert r.status_code == 201, r.text
    entry = r.json()
    assert entry["kind"] == "transfer" and entry["created_by"] == "ledger-ops"
    assert {(ln["account_id"], ln["side"], ln["amount"]) for ln in entry["lines"]} == {
        (wallet, "debit", 2_500), (shop, "credit", 2_500)}
    assert (await balance_of(client, admin, wallet))["available"] == 7_500
    assert (await balance_of(client, admin, shop))["posted"] == 2_500
    bank_balance = await balance_of(client, admin, bank)
    assert bank_balance["posted"] == 10_000 and bank_balance["debits_posted"] == 10_000  # an asset: debit-normal
    got = await client.get(f"{API}/entries/{entry['id']}", headers=admin)
    assert got.json() == entry
    pg = await postgres.pool()
    payload = await pg.fetchval("SELECT payload FROM outbox WHERE topic = 'ledger.entry.posted' AND key = $1",
                                entry["id"])
    assert payload["id"] == entry["id"] and len(payload["lines"]) == 2

    # The statement: postings in order with the running balance, one page at a time.
    for i in range(3):
        assert (await transfer(client, admin, wallet, shop, 100 + i)).status_code == 201
    page = await client.get(f"{API}/accounts/{wallet}/statement", params={"limit": 2}, headers=admin)
    first = page.json()
    assert [(s["side"], s["amount"], s["balance_after"]) for s in first["items"]] == [
        ("credit", 10_000, 10_000), ("debit", 2_500, 7_500)]
    rest = await client.get(f"{API}/accounts/{wallet}/statement",
                            params={"limit": 10, "cursor": first["next_cursor"]}, headers=admin)
    assert [s["balance_after"] for s in rest.json()["items"]] == [7_400, 7_299, 7_197]
    assert rest.json()["next_cursor"] is None


async def test_an_entry_balances_in_every_currency(client, admin):
    usd_bank = await open_account(client, admin, type="asset", name="usd bank")
    usd_fx = await open_account(client, admin, type="equity", allow_negative=True, name="fx usd")
    eur_bank = await open_account(client, admin, type="asset", currency="EUR", allow_negative=True, name="eur bank")
    eur_fx = await open_account(client, admin, type="equity", currency="EUR", allow_negative=True, name="fx eur")
    lines = [
        {"account_id": usd_bank, "side": "debit", "amount": 1_100, "currency": "USD"},
        {"account_id": usd_fx, "side": "credit", "amount": 1_100, "currency": "USD"},
        {"account_id": eur_fx, "side": "debit", "amount": 1_000, "currency": "EUR"},
        {"account_id": eur_bank, "side": "credit", "amount": 1_000, "currency": "EUR"},
    ]
    r = await client.post(f"{API}/entries", json={"lines": lines}, headers={**admin, "Idempotency-Key": key()})
    assert r.status_code == 201, r.text
    assert len(r.json()["lines"]) == 4

    # Balanced overall (2,100 each side) but not per currency: refused.
    lines[2]["amount"] = lines[3]["amount"] = 1_000
    lines[0]["amount"] = 1_200
    r = await client.post(f"{API}/entries", json={"lines": lines, "idempotency_key": key()}, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "lines" and "USD" in r.json()["detail"]
    # A line in another currency than its account's.
    lines[0].update(amount=1_100, currency="EUR")
    r = await client.post(f"{API}/entries", json={"lines": lines, "idempotency_key": key()}, headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "lines.0.currency"
    assert (await balance_of(client, admin, usd_bank))["posted"] == 1_100  # only the first entry


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": 10.5}, "amount"),
    ({"amount": 10.0}, "amount"),
    ({"amount": "10"}, "amount"),
    ({"amount": 0}, "amount"),
    ({"amount": -5}, "amount"),
    ({"amount": 2**63}, "amount"),
    ({"currency": "XYZ"}, "currency"),
    ({"currency": "usd"}, "currency"),
    ({"currency": "EUR"}, "currency"),  # the accounts hold USD
    ({"idempotency_key": None}, "idempotency_key"),
    ({"debit_account_id": "not-a-uuid"}, "debit_account_id"),
    ({"description": "a\x00b"}, "description"),  # PostgreSQL text cannot hold it: 422, not 500
    ({"description": "\ud800"}, "description"),
    ({"metadata": {"n": 2**70}}, "metadata"),
    ({"metadata": {"k\x00": 1}}, "metadata"),
])
async def test_bad_transfers_name_the_field(client, admin, change, field):
    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin)
    body = {"debit_account_id": wallet, "credit_account_id": shop, "amount": 100, "currency": "USD",
            "idempotency_key": key(), **change}
    if body["idempotency_key"] is None:
        del body["idempotency_key"]
    # json.dumps escapes what httpx's own encoder would refuse to send (a lone surrogate).
    r = await client.post(f"{API}/transfers", content=json.dumps(body),
                          headers={**admin, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"].split(".")[-1] for e in r.json()["errors"]]
    assert (await balance_of(client, admin, wallet))["posted"] == 1_000


async def test_overdraft_and_unknown_accounts_are_refused(client, admin):
    _, wallet = await funded_wallet(client, admin, 500)
    shop = await open_account(client, admin)
    r = await transfer(client, admin, wallet, shop, 501)
    assert r.status_code == 409 and r.json()["code"] == "insufficient_funds", r.text
    r = await transfer(client, admin, wallet, str(uuid.uuid4()), 1)
    assert r.status_code == 404 and r.json()["field"] == "credit_account_id"
    r = await transfer(client, admin, wallet, wallet, 1)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "credit_account_id"
    assert (await transfer(client, admin, wallet, shop, 500)).status_code == 201
    assert (await balance_of(client, admin, wallet))["available"] == 0


async def test_entries_are_immutable_and_reversed_once(client, admin, bearer):
    import asyncpg

    from nexus_ray.stores import postgres

    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin)
    entry = (await transfer(client, admin, wallet, shop, 300)).json()
    for method in ("PUT", "PATCH", "DELETE"):
        r = await client.request(method, f"{API}/entries/{entry['id']}", json={}, headers=admin)
        assert r.status_code == 405, (method, r.status_code)
    pg = await postgres.pool()
    for sql in ("UPDATE ledger_postings SET amount = 1 WHERE entry_id = $1",
                "DELETE FROM ledger_postings WHERE entry_id = $1",
                "UPDATE ledger_entries SET description = 'x' WHERE id = $1"):
        with pytest.raises(asyncpg.RestrictViolationError):
            await pg.execute(sql, uuid.UUID(entry["id"]))

    url = f"{API}/entries/{entry['id']}/reversal"
    writer = bearer("commerce:ledger:write", "commerce:ledger:read", subject="ledger-ops")
    assert (await client.post(url, json={"idempotency_key": key()}, headers=writer)).status_code == 403
    k = key()
    r = await client.post(url, json={"idempotency_key": k}, headers=admin)
    assert r.status_code == 201, r.text
    reversal = r.json()
    assert reversal["kind"] == "reversal" and reversal["reverses"] == entry["id"]
    stored = (await client.get(f"{API}/entries/{reversal['id']}", headers=admin)).json()  # as written
    assert (stored["kind"], stored["reverses"], stored["hold_id"]) == ("reversal", entry["id"], None)
    assert {(ln["account_id"], ln["side"]) for ln in reversal["lines"]} == {(wallet, "credit"), (shop, "debit")}
    assert (await balance_of(client, admin, wallet))["posted"] == 1_000
    assert (await balance_of(client, admin, shop))["posted"] == 0
    again = await client.post(url, json={"idempotency_key": k}, headers=admin)  # a retry: the same reversal
    assert again.status_code == 201 and again.json()["id"] == reversal["id"]
    assert again.headers["idempotent-replayed"] == "true"
    r = await client.post(url, json={"idempotency_key": key()}, headers=admin)
    assert r.status_code == 409 and r.json()["code"] == "already_reversed"
    # Two reversals racing with different keys: one wins.
    other = (await transfer(client, admin, wallet, shop, 10)).json()
    races = await asyncio.gather(*(client.post(f"{API}/entries/{other['id']}/reversal",
                                               json={"idempotency_key": key()}, headers=admin) for _ in range(6)))
    assert sorted(r.status_code for r in races) == [201] + [409] * 5


async def test_a_posting_must_refer_to_an_existing_entry_and_account_and_accounts_are_kept_as_opened(client, admin):
    import asyncpg

    from nexus_ray.stores import postgres

    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin)
    entry = uuid.UUID((await transfer(client, admin, wallet, shop, 300)).json()["id"])
    account = uuid.UUID(wallet)
    pg = await postgres.pool()
    insert = ("INSERT INTO ledger_postings (entry_id, account_id, side, amount, currency, created_at) "
              "SELECT e, a, 'D', 1, 'USD', now() FROM unnest($1::uuid[], $2::uuid[]) AS u(e, a)")
    count = "SELECT count(*) FROM ledger_postings WHERE entry_id = $1"
    before = await pg.fetchval(count, entry)
    # One statement of three rows, one of them an orphan: the check is per statement, and none of them is kept.
    for entries, accounts in (([entry, entry, uuid.uuid4()], [account] * 3),
                              ([entry] * 3, [account, account, uuid.uuid4()])):
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="existing entry and account"):
            await pg.execute(insert, entries, accounts)
    assert await pg.fetchval(count, entry) == before
    # The rows the check relies on cannot go away: entries are append-only, and accounts are kept.
    for sql in ("DELETE FROM ledger_accounts WHERE id = $1", "UPDATE ledger_accounts SET id = gen_random_uuid() "
                "WHERE id = $1", "DELETE FROM ledger_entries WHERE id = $1"):
        with pytest.raises(asyncpg.RestrictViolationError):
            await pg.execute(sql, account if "accounts" in sql else entry)
    with pytest.raises(asyncpg.RestrictViolationError):
        await pg.execute("TRUNCATE ledger_accounts CASCADE")
    # What each process keeps of an account once read is fixed when it is opened; its name may change.
    for column, value in (("owner", "'someone-else'"), ("type", "'expense'"), ("currency", "'EUR'"),
                          ("allow_negative", "NOT allow_negative"), ("shards", "shards + 1")):
        with pytest.raises(asyncpg.RestrictViolationError, match="fixed when it is opened"):
            await pg.execute(f"UPDATE ledger_accounts SET {column} = {value} WHERE id = $1", account)
    await pg.execute("UPDATE ledger_accounts SET name = name || ' (renamed)', owner = owner WHERE id = $1", account)
    assert (await reconciled(client, admin))["clean"]


async def test_the_postings_check_looks_entries_up_by_key_not_by_reading_them_all(client, admin):
    """The statement check must find a batch's entries by their key: a plan that reads (and hashes) the whole of
    ledger_entries at every statement grows with the ledger. 20,000 entries and a batch-sized statement of 2,000
    postings, in a transaction rolled back: the check must not scan the table."""
    from nexus_ray.stores import postgres

    account = uuid.UUID(await open_account(client, admin))
    pg = await postgres.pool()
    scans = "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'ledger_entries'"
    async with pg.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("INSERT INTO ledger_entries (id, kind, created_by, created_at) "
                               "SELECT gen_random_uuid(), 'entry', 'test', now() FROM generate_series(1, 20000)")
            batch = [uuid.uuid4() for _ in range(1000)]
            await conn.execute("INSERT INTO ledger_entries (id, kind, created_by, created_at) "
                               "SELECT e, 'entry', 'test', now() FROM unnest($1::uuid[]) AS e", batch)
            await conn.execute("ANALYZE ledger_entries")
            before = await conn.fetchval(scans)
            await conn.execute(
                "INSERT INTO ledger_postings (entry_id, account_id, side, amount, currency, created_at) "
                "SELECT e, $2, s, 1, 'USD', now() FROM unnest($1::uuid[]) AS e, unnest(ARRAY['D', 'C']) AS s",
                batch, account)
            assert await conn.fetchval(scans) == before
        finally:
            await tx.rollback()


# -- holds -----------------------------------------------------------------------------------------------


async def test_holds_reserve_capture_and_void(client, admin):
    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin)

    async def hold(amount, **extra):
        return await client.post(f"{API}/holds", json={
            "debit_account_id": wallet, "credit_account_id": shop, "amount": amount, "currency": "USD",
            "idempotency_key": key(), **extra}, headers=admin)

    first = await hold(600)
    assert first.status_code == 201, first.text
    h1 = first.json()
    b = await balance_of(client, admin, wallet)
    assert (b["posted"], b["pending_out"], b["available"]) == (1_000, 600, 400)
    assert (await balance_of(client, admin, shop))["pending_in"] == 600
    over = await hold(401)  # more than is available: a hold cannot overdraw
    assert over.status_code == 409 and over.json()["code"] == "insufficient_funds"
    assert (await transfer(client, admin, wallet, shop, 401)).status_code == 409  # nor can a transfer past it

    cap = f"{API}/holds/{h1['id']}/capture"
    too_much = await client.post(cap, json={"amount": 601, "idempotency_key": key()}, headers=admin)
    assert too_much.status_code == 422 and too_much.json()["errors"][0]["field"] == "amount"
    k = key()
    r = await client.post(cap, json={"amount": 450}, headers={**admin, "Idempotency-Key": k})
    assert r.status_code == 200, r.text
    captured = r.json()
    assert captured["status"] == "captured" and captured["captured_amount"] == 450 and captured["entry_id"]
    b = await balance_of(client, admin, wallet)
    assert (b["posted"], b["pending_out"], b["available"]) == (550, 0, 550)  # the rest released
    assert (await balance_of(client, admin, shop))["posted"] == 450
    entry = (await client.get(f"{API}/entries/{captured['entry_id']}", headers=admin)).json()
    assert entry["kind"] == "capture" and entry["hold_id"] == h1["id"]
    replay = await client.post(cap, json={"amount": 450}, headers={**admin, "Idempotency-Key": k})
    assert replay.status_code == 200 and replay.json() == captured
    twice = await client.post(cap, json={"idempotency_key": key()}, headers=admin)
    assert twice.status_code == 409 and twice.json()["code"] == "hold_not_pending"

    h2 = (await hold(500)).json()
    void = f"{API}/holds/{h2['id']}/void"
    assert (await client.post(void, headers=admin)).json()["status"] == "voided"
    assert (await client.post(void, headers=admin)).json()["status"] == "voided"  # idempotent
    assert (await client.post(f"{API}/holds/{h2['id']}/capture", json={"idempotency_key": key()},
                              headers=admin)).status_code == 409
    assert (await client.post(f"{API}/holds/{h1['id']}/void", headers=admin)).status_code == 409
    assert (await balance_of(client, admin, wallet))["available"] == 550
    too_long = await hold(1, expires_in_s=10**9)
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "expires_in_s"


async def test_holds_expire_by_themselves(client, admin, until):
    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin)
    r = await client.post(f"{API}/holds", json={
        "debit_account_id": wallet, "credit_account_id": shop, "amount": 700, "currency": "USD",
        "expires_in_s": 1, "idempotency_key": key()}, headers=admin)
    assert r.status_code == 201, r.text
    hold = r.json()
    assert (await balance_of(client, admin, wallet))["available"] == 300

    async def expired() -> bool:  # voided by the app's background sweep, not by this test
        got = await client.get(f"{API}/holds/{hold['id']}", headers=admin)
        return got.json()["status"] == "expired"

    await until(expired, within_s=20)
    b = await balance_of(client, admin, wallet)
    assert (b["available"], b["pending_out"]) == (1_000, 0)
    r = await client.post(f"{API}/holds/{hold['id']}/capture", json={"idempotency_key": key()}, headers=admin)
    assert r.status_code == 409
    assert not (await reconciled(client, admin))["dangling_holds"]


# -- idempotency -----------------------------------------------------------------------------------------


async def test_idempotency_keys_replay_refuse_and_are_per_caller(client, admin, bearer):
    alice = bearer("commerce:ledger:read", "commerce:ledger:write", subject="alice")
    bob = bearer("commerce:ledger:read", "commerce:ledger:write", subject="bob")
    _, a_wallet = await funded_wallet(client, admin, 1_000, owner="alice")
    _, b_wallet = await funded_wallet(client, admin, 1_000, owner="bob")
    shop = await open_account(client, admin, owner="platform")
    k = "order-42"
    first = await transfer(client, alice, a_wallet, shop, 100, k=k)
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    same = await transfer(client, alice, a_wallet, shop, 100, k=k)
    assert same.status_code == 201 and same.json() == first.json()
    assert same.headers["idempotent-replayed"] == "true"
    other = await transfer(client, alice, a_wallet, shop, 101, k=k)
    assert other.status_code == 409
    assert other.json()["errors"][0]["field"] == "idempotency_key"
    # The header and the field are the same key.
    via_header = await client.post(f"{API}/transfers", json={
        "debit_account_id": a_wallet, "credit_account_id": shop, "amount": 100, "currency": "USD"},
        headers={**alice, "Idempotency-Key": k})
    assert via_header.json()["id"] == first.json()["id"]
    clash = await client.post(f"{API}/transfers", json={
        "debit_account_id": a_wallet, "credit_account_id": shop, "amount": 100, "currency": "USD",
        "idempotency_key": "x"}, headers={**alice, "Idempotency-Key": "y"})
    assert clash.status_code == 422 and clash.json()["errors"][0]["field"] == "idempotency_key"
    # Bob's "order-42" is his own.
    bobs = await transfer(client, bob, b_wallet, shop, 100, k=k)
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    assert (await balance_of(client, admin, a_wallet))["posted"] == 900
    assert (await balance_of(client, admin, b_wallet))["posted"] == 900

    # A refused request does not keep its key: the same request succeeds once funds are there.
    k2 = key()
    assert (await transfer(client, alice, a_wallet, shop, 5_000, k=k2)).status_code == 409
    bank = await open_account(client, admin, type="asset", owner="platform")
    assert (await transfer(client, admin, bank, a_wallet, 5_000)).status_code == 201
    assert (await transfer(client, alice, a_wallet, shop, 5_000, k=k2)).status_code == 201

    # Twenty concurrent copies of one request post it once.
    k3 = key()
    copies = await asyncio.gather(*(transfer(client, alice, a_wallet, shop, 7, k=k3) for _ in range(20)))
    assert {r.status_code for r in copies} == {201}
    assert len({r.json()["id"] for r in copies}) == 1
    assert (await balance_of(client, admin, a_wallet))["posted"] == 900 - 7


async def test_owners_and_administrators(client, admin, bearer):
    alice = bearer("commerce:ledger:read", "commerce:ledger:write", subject="alice")
    mallory = bearer("commerce:ledger:read", "commerce:ledger:write", subject="mallory")
    mine = await open_account(client, alice, name="mine")
    got = await client.get(f"{API}/accounts/{mine}", headers=alice)
    assert got.status_code == 200 and got.json()["owner"] == "alice"
    r = await client.post(f"{API}/accounts", json={"name": "x", "type": "asset", "currency": "USD",
                                                   "owner": "platform"}, headers=alice)
    assert r.status_code == 403
    _, a_wallet = await funded_wallet(client, admin, 1_000, owner="alice")
    m_wallet = await open_account(client, mallory)
    for url in (f"/accounts/{a_wallet}", f"/accounts/{a_wallet}/statement"):
        assert (await client.get(API + url, headers=mallory)).status_code == 404
        assert (await client.get(API + url, headers=alice)).status_code == 200
        assert (await client.get(API + url, headers=admin)).status_code == 200
    r = await transfer(client, mallory, a_wallet, m_wallet, 10)  # drawing on another's account
    assert r.status_code == 403 and r.json()["field"] == "debit_account_id"
    # Lines that cancel out on another's account are still drawing on it, line by line; and a refusal says
    # nothing of that account before whose it is (its currency).
    for currency in ("USD", "EUR"):
        r = await client.post(f"{API}/entries", headers=mallory, json={
            "idempotency_key": key(), "lines": [
                {"account_id": a_wallet, "side": "credit", "amount": 10, "currency": currency},
                {"account_id": a_wallet, "side": "debit", "amount": 10, "currency": currency}]})
        assert r.status_code == 403 and r.json()["field"] == "lines.1.account_id", r.text
    assert (await client.get(f"{API}/accounts/{a_wallet}/statement", headers=alice)).json()["items"][-1]["amount"] \
        == 1_000  # only the funding
    entry = (await transfer(client, alice, a_wallet, m_wallet, 10)).json()  # paying someone is fine
    assert (await client.get(f"{API}/entries/{entry['id']}", headers=mallory)).status_code == 200  # payee sees it
    stranger = bearer("commerce:ledger:read", subject="stranger")
    assert (await client.get(f"{API}/entries/{entry['id']}", headers=stranger)).status_code == 404
    assert (await client.get(f"{API}/reconciliation", headers=alice)).status_code == 403
    assert (await client.get(f"{API}/accounts", params={"owner": "alice"}, headers=mallory)).status_code == 403
    listed = await client.get(f"{API}/accounts", headers=alice)
    assert mine in [a["id"] for a in listed.json()["items"]]
    assert (await client.get(f"{API}/accounts/{mine}")).status_code == 401


# -- batches ---------------------------------------------------------------------------------------------


async def test_a_batch_accepts_and_refuses_each_item_on_its_own(client, admin):
    bank, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin)
    eur = await open_account(client, admin, currency="EUR")

    def item(debit, credit, amount, k=None, currency="USD"):
        return {"debit_account_id": debit, "credit_account_id": credit, "amount": amount, "currency": currency,
                "idempotency_key": k or key()}

    dup = key()
    items = [
        item(wallet, shop, 400),                       # 0 posted
        item(wallet, shop, 700),                       # 1 refused: only 600 left
        item(wallet, shop, 600, k=dup),                # 2 posted
        item(wallet, str(uuid.uuid4()), 1),            # 3 refused: no such account
        item(wallet, eur, 1),                          # 4 refused: currency mismatch
        item(wallet, shop, 600, k=dup),                # 5 the same key and body as 2: replayed
        item(wallet, shop, 1, k=dup),                  # 6 the same key, another body: refused
        {**item(bank, wallet, 50), "description": "top-up", "metadata": {"n": 7}},  # 7 posted
    ]
    r = await client.post(f"{API}/transfers/batch", json={"items": items}, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["status"] for x in body["results"]] == [
        "posted", "refused", "posted", "refused", "refused", "replayed", "refused", "posted"]
    assert (body["posted"], body["replayed"], body["refused"]) == (3, 1, 4)
    res = body["results"]
    assert res[1]["error"]["code"] == "insufficient_funds" and res[1]["error"]["status"] == 409
    assert res[3]["error"]["status"] == 404
    assert res[4]["error"]["errors"][0]["field"] == "currency"
    assert res[5]["entry"]["id"] == res[2]["entry"]["id"]
    assert res[6]["error"]["errors"][0]["field"] == "idempotency_key"
    # The answer is written around the entries' JSON, not by the response model: it must be the model's document,
    # and each entry in it the entry as stored.
    assert BatchResult.model_validate_json(r.content).posted == 3  # raises unless the model's document
    assert set(body) == set(BatchResult.model_fields) and all(set(x) == set(ItemResult.model_fields) for x in res)
    for x in (res[0], res[2], res[5], res[7]):
        stored = (await client.get(f"{API}/entries/{x['entry']['id']}", headers=admin)).json()
        assert EntryRead.model_validate(x["entry"]) == EntryRead.model_validate(stored)
    assert (res[7]["entry"]["description"], res[7]["entry"]["metadata"], res[0]["entry"]["description"]) == (
        "top-up", {"n": 7}, "")
    assert (await balance_of(client, admin, wallet))["posted"] == 50
    assert (await balance_of(client, admin, shop))["posted"] == 1_000
    # The whole batch again: everything posted is replayed, nothing twice.
    again = (await client.post(f"{API}/transfers/batch", json={"items": items}, headers=admin)).json()
    assert [x["status"] for x in again["results"]][:3] == ["replayed", "refused", "replayed"]
    for first, replay in zip(res, again["results"], strict=True):  # each key's entry, read back, as first answered
        if first["entry"] is not None:
            assert EntryRead.model_validate(replay["entry"]) == EntryRead.model_validate(first["entry"])
    assert (await balance_of(client, admin, shop))["posted"] == 1_000
    r = await client.post(f"{API}/transfers/batch", json={"items": [{**items[0], "amount": 1.5}]}, headers=admin)
    assert r.status_code == 422 and "amount" in r.json()["errors"][0]["field"]


async def test_a_batch_body_is_read_from_its_bytes_with_the_problems_and_the_document_of_a_declared_one(
        client, admin, apps):
    """The batch route validates its body itself (parse_json_body): the same 422s, and the same OpenAPI document,
    as a body FastAPI reads."""
    _, wallet = await funded_wallet(client, admin, 100)
    shop = await open_account(client, admin)
    good = {"debit_account_id": wallet, "credit_account_id": shop, "amount": 1, "currency": "USD",
            "idempotency_key": key()}
    url = f"{API}/transfers/batch"
    no_amount = {k: v for k, v in good.items() if k != "amount"}
    r = await client.post(url, json={"items": [good, no_amount]}, headers=admin)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["in"], e["type"]) for e in r.json()["errors"]] == [("items[1].amount", "body", "missing")]
    r = await client.post(url, content=b'{"items": [', headers={**admin, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"
    r = await client.post(url, json={"items": [good], "extra": 1}, headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "extra"
    assert (await client.post(url, json={"items": [good]})).status_code == 401  # the guard runs first
    assert (await balance_of(client, admin, shop))["posted"] == 0  # nothing of the refused batches was written
    doc = apps["commerce"].openapi()
    op = doc["paths"]["/v1/ledger/transfers/batch"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/BatchCreate" and op["requestBody"]["required"]
    schema = doc["components"]["schemas"]["BatchCreate"]
    assert schema["required"] == ["items"] and schema["properties"]["items"]["maxItems"] == 2000
    assert "BatchTransfer" in doc["components"]["schemas"]
    assert {"400", "413", "422"} <= set(op["responses"])


async def test_a_batch_with_prefer_return_minimal_answers_entry_ids(client, admin):
    """``Prefer: return=minimal``: each item answered with its entry's id (the entry readable by it), refusals as
    before, replays with the same id; without the header the whole entries, and no Preference-Applied."""
    _, wallet = await funded_wallet(client, admin, 100)
    shop = await open_account(client, admin)
    items = [{"debit_account_id": wallet, "credit_account_id": shop, "amount": 60, "currency": "USD",
              "idempotency_key": key()} for _ in range(2)]
    minimal = {**admin, "Prefer": "handling=lenient, return=minimal"}
    r = await client.post(f"{API}/transfers/batch", json={"items": items}, headers=minimal)
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "return=minimal"
    body = r.json()
    assert BatchSummary.model_validate_json(r.content).posted == 1  # raises unless the model's document
    assert all(set(x) == set(ItemSummary.model_fields) for x in body["results"])
    assert (body["posted"], body["replayed"], body["refused"]) == (1, 0, 1)
    first, second = body["results"]
    assert "entry" not in first and first["status"] == "posted" and first["error"] is None
    entry = (await client.get(f"{API}/entries/{first['entry_id']}", headers=admin)).json()
    assert {(ln["account_id"], ln["side"], ln["amount"]) for ln in entry["lines"]} == {
        (wallet, "debit", 60), (shop, "credit", 60)}
    assert second["status"] == "refused" and second["entry_id"] is None
    assert second["error"]["code"] == "insufficient_funds"
    again = (await client.post(f"{API}/transfers/batch", json={"items": items[:1]}, headers=minimal)).json()
    assert again["results"][0]["status"] == "replayed" and again["results"][0]["entry_id"] == first["entry_id"]
    full = await client.post(f"{API}/transfers/batch", json={"items": items[:1]}, headers=admin)
    assert "preference-applied" not in full.headers
    assert full.json()["results"][0]["entry"]["id"] == first["entry_id"]


async def test_reconciliation_finds_what_is_wrong(client, admin):
    from nexus_ray.stores import postgres

    _, wallet = await funded_wallet(client, admin, 100)
    assert (await reconciled(client, admin))["clean"]
    pg = await postgres.pool()
    # A stored total that no posting explains, and a balance below zero where negatives are forbidden.
    await pg.execute("UPDATE ledger_balances SET debits_posted = debits_posted + 101 WHERE account_id = $1 "
                     "AND shard = 0", uuid.UUID(wallet))
    try:
        report = await reconciled(client, admin)
        assert not report["clean"]
        assert [m["account_id"] for m in report["balance_mismatches"]] == [wallet]
        assert [(n["account_id"], n["available"]) for n in report["negative_accounts"]] == [(wallet, -1)]
    finally:
        await pg.execute("UPDATE ledger_balances SET debits_posted = debits_posted - 101 WHERE account_id = $1 "
                         "AND shard = 0", uuid.UUID(wallet))
    assert (await reconciled(client, admin))["clean"]


# -- under concurrency -----------------------------------------------------------------------------------


def _effect(account_type: str, side: str, amount: int) -> int:
    debit_normal = account_type in ("asset", "expense")
    return amount if (side == "debit") == debit_normal else -amount


async def _storm(client, admin, *, hot: bool, transfers: int = 500) -> None:
    """``transfers`` concurrent transfers among a few accounts (many refused for want of funds), some sent twice
    with the same key, some cancelled mid-flight and retried, and holds placed, captured and voided meanwhile.
    Then: every account's balance is what the distinct posted entries say, and the report is clean."""
    rng = random.Random(7 if hot else 11)
    bank = await open_account(client, admin, type="asset", owner="platform", name="bank")
    wallets = [await open_account(client, admin, name=f"wallet {i}") for i in range(6)]
    fee = await open_account(client, admin, type="revenue", owner="platform", name="fees", shards=8)
    types = {bank: "asset", fee: "revenue", **{w: "liability" for w in wallets}}
    start = {a: 0 for a in types}
    for w in wallets:
        assert (await transfer(client, admin, bank, w, 2_000)).status_code == 201
        start[w] += 2_000
        start[bank] += 2_000
    # Some fees in before the storm, so refunds out of the fee account have something to draw on.
    for w in wallets[:2]:
        assert (await transfer(client, admin, w, fee, 300)).status_code == 201
        start[w] -= 300
        start[fee] += 300

    specs = []
    for _ in range(transfers):
        amount = rng.randint(1, 400)
        if hot:
            w = rng.choice(wallets)
            debit, credit = (fee, w) if rng.random() < 0.1 else (w, fee)  # mostly fees in, some refunds out
        else:
            debit, credit = rng.sample(wallets, 2)
        specs.append({"debit_account_id": debit, "credit_account_id": credit, "amount": amount, "currency": "USD",
                      "idempotency_key": key()})
    twice = set(rng.sample(range(transfers), 50))
    cancelled = set(rng.sample(sorted(set(range(transfers)) - twice), 25))

    # At most 64 requests in flight: a burst of 500 first requests makes the edge's rate limiter open as many
    # Redis connections at once, and on this loaded machine some of those connects time out (not the ledger).
    gate = asyncio.Semaphore(64)

    async def send(i: int):
        async with gate:
            if i in cancelled:  # a client that gives up mid-request: its transaction must be all or nothing
                task = asyncio.ensure_future(client.post(f"{API}/transfers", json=specs[i], headers=admin))
                await asyncio.sleep(rng.uniform(0, 0.05))
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                return None  # retried below with the same key
            return await client.post(f"{API}/transfers", json=specs[i], headers=admin)

    hold_wallets = [rng.choice(wallets) for _ in range(30)]

    async def hold_cycle(n: int, w: str):
        async with gate:
            return await _hold_cycle(n, w)

    async def _hold_cycle(n: int, w: str):
        r = await client.post(f"{API}/holds", json={
            "debit_account_id": w, "credit_account_id": fee if hot else wallets[(wallets.index(w) + 1) % 6],
            "amount": rng.randint(1, 300), "currency": "USD", "idempotency_key": key()}, headers=admin)
        if r.status_code != 201:
            assert r.status_code == 409, r.text
            return None
        h = r.json()
        if n % 2:
            r = await client.post(f"{API}/holds/{h['id']}/capture", json={"idempotency_key": key()}, headers=admin)
        else:
            r = await client.post(f"{API}/holds/{h['id']}/void", headers=admin)
        assert r.status_code == 200, r.text
        return r.json()

    job_specs = list(range(transfers)) + sorted(twice)  # the spec each request sends
    rng.shuffle(job_specs)
    results = await asyncio.gather(*(send(i) for i in job_specs),
                                   *(hold_cycle(n, w) for n, w in enumerate(hold_wallets)))
    answers = results[: len(job_specs)]
    holds = [h for h in results[len(job_specs):] if h is not None]
    retried = await asyncio.gather(*(client.post(f"{API}/transfers", json=specs[i], headers=admin)
                                     for i in sorted(cancelled)))
    cut = sum(1 for r in answers if r is None)
    assert cut == len(cancelled)
    responses = [r for r in answers if r is not None] + list(retried)

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, [r.text for r in responses if r.status_code not in (201, 409)][:3]
    refused = [r.json() for r in responses if r.status_code == 409]
    assert {p["code"] for p in refused} <= {"insufficient_funds"}, refused[:3]
    assert 0 < len(refused) < len(responses)  # the amounts were chosen so that some fail and most do not
    entries = {r.json()["id"]: r.json() for r in responses if r.status_code == 201}
    # Each key that was sent twice posted one entry (both answers carry it, or both were refused).
    answers_by_key: dict[str, list] = {}
    for i, r in zip(job_specs, answers, strict=True):
        if r is not None:
            answers_by_key.setdefault(specs[i]["idempotency_key"], []).append(r)
    for i in twice:
        pair = answers_by_key[specs[i]["idempotency_key"]]
        assert len(pair) == 2
        assert len({r.status_code for r in pair}) == 1 or {r.status_code for r in pair} == {201, 409}
        assert len({r.json().get("id") for r in pair if r.status_code == 201}) <= 1

    # Every balance is its start plus what the distinct posted entries and captured holds say.
    expected = dict(start)
    for e in entries.values():
        for ln in e["lines"]:
            expected[ln["account_id"]] += _effect(types[ln["account_id"]], ln["side"], ln["amount"])
    for h in holds:
        if h["status"] == "captured":
            expected[h["debit_account_id"]] += _effect(types[h["debit_account_id"]], "debit", h["captured_amount"])
            expected[h["credit_account_id"]] += _effect(types[h["credit_account_id"]], "credit",
                                                        h["captured_amount"])
    for account, value in expected.items():
        b = await balance_of(client, admin, account)
        assert (b["posted"], b["pending_out"], b["pending_in"]) == (value, 0, 0), account
        if account != bank:
            assert b["available"] >= 0
    report = await reconciled(client, admin)
    assert report["clean"], report
    assert not report["negative_accounts"] and not report["dangling_holds"] and not report["balance_mismatches"]
    assert all(c["balanced"] for c in report["currencies"])


async def test_concurrent_transfers_keep_the_ledger_whole(client, admin):
    await _storm(client, admin, hot=False)


async def test_concurrent_transfers_through_one_hot_account(client, admin):
    await _storm(client, admin, hot=True)


async def test_racing_debits_on_one_wallet_spend_exactly_its_funds(client, admin):
    """200 debits of 10 race for a wallet of 1,000 (straight to the service, so they overlap in the database):
    exactly 100 are posted and the wallet ends at zero, whatever shard each one's credit side lands on."""
    from nexus_ray.deployments.commerce.ledger import service

    _, wallet = await funded_wallet(client, admin, 1_000)
    shops = [await open_account(client, admin, name=f"shop {i}") for i in range(4)]

    async def spend(i: int):
        req = service.transfer_request(debit_account_id=uuid.UUID(wallet), credit_account_id=uuid.UUID(shops[i % 4]),
                                       amount=10, currency="USD", idempotency_key=key())
        (result,) = await service.post_entries(caller="ledger-ops", privileged=True, requests=[req])
        return result.status

    statuses = await asyncio.gather(*(spend(i) for i in range(200)))
    assert statuses.count("posted") == 100 and statuses.count("refused") == 100
    b = await balance_of(client, admin, wallet)
    assert (b["posted"], b["available"]) == (0, 0)
    assert (await reconciled(client, admin))["clean"]


async def test_racing_batches_on_one_wallet_spend_exactly_its_funds(client, admin):
    """20 batches of 10 debits of 10 race for a wallet of 1,000: each batch decides from totals read without a lock
    and must have that decision confirmed under the lock, so exactly 100 are posted and the wallet ends at zero."""
    from nexus_ray.deployments.commerce.ledger import service

    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin, name="shop")

    async def batch() -> list[str]:
        reqs = [service.transfer_request(debit_account_id=uuid.UUID(wallet), credit_account_id=uuid.UUID(shop),
                                         amount=10, currency="USD", idempotency_key=key()) for _ in range(10)]
        return [r.status for r in await service.post_entries(caller="ledger-ops", privileged=True, requests=reqs)]

    statuses = [s for b in await asyncio.gather(*(batch() for _ in range(20))) for s in b]
    assert statuses.count("posted") == 100 and statuses.count("refused") == 100
    b = await balance_of(client, admin, wallet)
    assert (b["posted"], b["available"]) == (0, 0)
    assert (await reconciled(client, admin))["clean"]


async def test_a_batch_whose_funds_move_before_it_locks_decides_again(client, admin, until):
    """A batch reads a wallet of 1,000 without a lock and plans to spend 600; before it gets the wallet's lock,
    a transfer of 600 that was queued first commits. Under the lock the batch sees 400 left, so it decides again:
    its 600 is refused, its other item posted, and the wallet holds 400."""
    from nexus_ray.deployments.commerce.ledger import service
    from nexus_ray.stores import postgres

    bank, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin, name="shop")
    w, s, b = uuid.UUID(wallet), uuid.UUID(shop), uuid.UUID(bank)
    pool = await postgres.pool()

    async def waiting(n: int) -> bool:  # n transactions wait for the wallet's balance rows
        return n == await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND query LIKE '%FOR UPDATE OF b%'")

    async with pool.acquire() as gate, gate.transaction():
        await gate.execute("SELECT 1 FROM ledger_balances WHERE account_id = $1 FOR UPDATE", w)
        first = asyncio.create_task(service.post_entries(caller="ledger-ops", privileged=True, requests=[
            service.transfer_request(debit_account_id=w, credit_account_id=s, amount=600, currency="USD",
                                     idempotency_key=key())]))
        await until(lambda: waiting(1))
        second = asyncio.create_task(service.post_entries(caller="ledger-ops", privileged=True, requests=[
            service.transfer_request(debit_account_id=w, credit_account_id=s, amount=600, currency="USD",
                                     idempotency_key=key()),
            service.transfer_request(debit_account_id=b, credit_account_id=s, amount=5, currency="USD",
                                     idempotency_key=key())]))
        await until(lambda: waiting(2))
    (one,), (two, three) = await asyncio.gather(first, second)
    assert one.status == "posted"
    assert two.status == "refused" and two.error is not None and two.error["code"] == "insufficient_funds"
    assert two.error["available"] == 400
    assert three.status == "posted"
    bal = await balance_of(client, admin, wallet)
    assert (bal["posted"], bal["available"]) == (400, 400)
    assert (await balance_of(client, admin, shop))["posted"] == 605
    assert (await reconciled(client, admin))["clean"]


async def test_a_transfer_whose_database_connection_is_cut_midway_is_a_503_and_its_retry_posts_once(
        client, admin, until):
    """The backend of a transfer waiting for its wallet's lock is terminated: the client gets a 503 problem with
    Retry-After (not a 500), nothing of the transfer is kept, and the retry with the same key posts it once."""
    from nexus_ray.stores import postgres

    _, wallet = await funded_wallet(client, admin, 1_000)
    shop = await open_account(client, admin, name="shop")
    pool = await postgres.pool()
    k = key()

    async def waiter() -> int | None:
        return await pool.fetchval("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                   "AND query LIKE '%FOR UPDATE OF b%'")

    async with pool.acquire() as gate, gate.transaction():
        await gate.execute("SELECT 1 FROM ledger_balances WHERE account_id = $1 FOR UPDATE", uuid.UUID(wallet))
        request = asyncio.create_task(transfer(client, admin, wallet, shop, 300, k=k))
        pid = await until(waiter)
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        r = await request
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.headers["retry-after"] == "1"
    assert r.json()["code"] == "store_connection_lost"
    assert (await balance_of(client, admin, wallet))["posted"] == 1_000
    again = await transfer(client, admin, wallet, shop, 300, k=k)
    assert again.status_code == 201, again.text
    assert again.headers.get("idempotent-replayed") != "true"
    assert (await balance_of(client, admin, wallet))["posted"] == 700
    assert (await reconciled(client, admin))["clean"]


async def test_a_cursor_that_is_not_ours_names_the_field(client, admin):
    from nexus_ray.deployments.kit.pages import encode_cursor

    _, wallet = await funded_wallet(client, admin, 100)
    for url, bad in ((f"{API}/accounts/{wallet}/statement", ["x"]), (f"{API}/accounts", ["not-a-uuid"]),
                     (f"{API}/accounts/{wallet}/statement", [-1])):
        r = await client.get(url, params={"cursor": encode_cursor(bad)}, headers=admin)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "cursor", r.text


async def test_other_namespaces_call_the_exports(client, admin):
    """finance posts through ``call`` (in-process here, over the commerce DeploymentHandle under Serve)."""
    from nexus_ray.deployments.kit.calls import call
    from nexus_ray.exceptions import Conflict

    _, wallet = await funded_wallet(client, admin, 1_000)
    payee = await open_account(client, admin)
    k = key()
    entry = await call("ledger-mgr", "post_transfer", caller="finance-loans", debit_account_id=wallet,
                       credit_account_id=payee, amount=250, currency="USD", idempotency_key=k)
    again = await call("ledger-mgr", "post_transfer", caller="finance-loans", debit_account_id=wallet,
                       credit_account_id=payee, amount=250, currency="USD", idempotency_key=k)
    assert again.id == entry.id
    hold = await call("ledger-mgr", "place_hold", caller="finance-loans", debit_account_id=wallet,
                      credit_account_id=payee, amount=500, currency="USD", idempotency_key=key())
    assert (await call("ledger-mgr", "balance", account_id=wallet)).available == 250
    with pytest.raises(Conflict):
        await call("ledger-mgr", "place_hold", caller="finance-loans", debit_account_id=wallet,
                   credit_account_id=payee, amount=251, currency="USD", idempotency_key=key())
    captured = await call("ledger-mgr", "capture_hold", caller="finance-loans", hold_id=hold.id,
                          idempotency_key=key())
    assert captured.status == "captured"
    other = await call("ledger-mgr", "place_hold", caller="finance-loans", debit_account_id=wallet,
                       credit_account_id=payee, amount=100, currency="USD", idempotency_key=key())
    assert (await call("ledger-mgr", "void_hold", caller="finance-loans", hold_id=other.id)).status == "voided"
    b = await call("ledger-mgr", "balance", account_id=wallet)
    assert (b.posted, b.available) == (250, 250)
