"""puabomusicchain over HTTP on the real stores: the chain's rows cannot be changed, proofs verify against the
published root, verification points at an altered, a removed and a reordered record (rows tampered with the
trigger disabled, as an attacker with the database's keys would), and a royalty run loses no cent."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from nexus_ray.compute.musicchain import MerkleProof, split_payment, verify_proof

pytestmark = pytest.mark.integration

API = "/finance/v1/music-chain"


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer("finance:music-chain:*", "commerce:ledger:*", subject="registry-ops")


def work_records(work: str, shares: dict[str, int]) -> list[dict]:
    return [{"kind": "rights", "work": work, "holder": next(iter(shares)), "right": "master", "title": "Song"},
            {"kind": "split", "work": work, "shares": shares}]


async def append(client, admin, records: list[dict]) -> list[dict]:
    r = await client.post(f"{API}/records", json={"records": records}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()


async def verification(client, admin) -> dict:
    r = await client.get(f"{API}/verification", headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


async def tamper(*statements: tuple[str, ...]) -> None:
    """Run statements on the chain table with its append-only trigger disabled, then enable it again."""
    from nexus_ray.stores import postgres

    async with postgres.transaction() as conn:
        await conn.execute("ALTER TABLE music_records DISABLE TRIGGER music_records_append_only")
        for sql, *args in statements:
            await conn.execute(sql, *args)
        await conn.execute("ALTER TABLE music_records ENABLE TRIGGER music_records_append_only")


async def test_records_cannot_be_changed_and_splits_must_be_whole(client, admin):
    from nexus_ray.stores import postgres

    (rights, split) = await append(client, admin, work_records(f"w-{uuid.uuid4().hex[:8]}", {"ann": 6000, "bo": 4000}))
    assert split["prev"] == rights["hash"] and split["seq"] == rights["seq"] + 1
    pg = await postgres.pool()
    for sql in ("UPDATE music_records SET kind = 'rights' WHERE seq = $1", "DELETE FROM music_records WHERE seq = $1"):
        with pytest.raises(asyncpg.RestrictViolationError):
            await pg.execute(sql, split["seq"])
    with pytest.raises(asyncpg.RestrictViolationError):
        await pg.execute("TRUNCATE music_records CASCADE")
    bad = await client.post(f"{API}/records", headers=admin, json={"records": [
        {"kind": "split", "work": "w-bad", "shares": {"ann": 5000, "bo": 4000}}]})
    assert bad.status_code == 422
    work = (await client.get(f"{API}/works/{rights['body']['work']}", headers=admin)).json()
    assert work["split"] == {"ann": 6000, "bo": 4000}


async def test_a_proof_takes_a_record_to_the_published_root(client, admin):
    records = await append(client, admin, [r for n in range(5) for r in work_records(f"p-{uuid.uuid4().hex[:6]}-{n}",
                                                                                     {"cy": 5000, "di": 5000})])
    r = await client.post(f"{API}/roots", headers=admin)
    assert r.status_code == 201, r.text
    root = r.json()
    assert root["head"] == records[-1]["hash"] and root["size"] == records[-1]["seq"] + 1
    for rec in (records[0], records[3], records[-1]):
        got = (await client.get(f"{API}/proofs", params={"seq": rec["seq"]}, headers=admin)).json()
        assert got["verified"] and got["root"]["root"] == root["root"]
        proof = MerkleProof.from_json({"index": got["index"], "size": got["size"], "path": got["path"]})
        assert verify_proof(rec["hash"], proof, root["root"])  # checked here, by the client, too
        assert not verify_proof(records[1]["hash"] if rec is not records[1] else records[2]["hash"], proof,
                                root["root"])
        assert got["bytes"] == 33 * len(got["path"])


async def test_verification_points_at_the_altered_removed_and_reordered_record(client, admin):
    from nexus_ray.stores import postgres

    records = await append(client, admin, [r for n in range(6) for r in work_records(f"v-{uuid.uuid4().hex[:6]}-{n}",
                                                                                     {"ed": 3333, "fa": 6667})])
    assert (await client.post(f"{API}/roots", headers=admin)).status_code == 201
    assert (await verification(client, admin))["ok"]
    pg = await postgres.pool()
    altered, removed, moved = records[3], records[6], records[8]  # a split, a rights record, a rights record

    # Altered: a split's shares changed in place, its hash left as it was.
    original = await pg.fetchval("SELECT body FROM music_records WHERE seq = $1", altered["seq"])
    await tamper(("UPDATE music_records SET body = jsonb_set(body, '{shares,ed}', '9000') WHERE seq = $1",
                  altered["seq"]))
    report = await verification(client, admin)
    assert [(d["kind"], d["seq"]) for d in report["damages"]] == [("altered", altered["seq"])]
    await tamper(("UPDATE music_records SET body = $2 WHERE seq = $1", altered["seq"], original))
    assert (await verification(client, admin))["ok"]

    # Removed: one record deleted from the middle.
    row = await pg.fetchrow("SELECT * FROM music_records WHERE seq = $1", removed["seq"])
    await tamper(("DELETE FROM music_records WHERE seq = $1", removed["seq"]))
    report = await verification(client, admin)
    assert [(d["kind"], d["seq"]) for d in report["damages"]] == [("removed", removed["seq"])]
    await tamper(("INSERT INTO music_records (pos, seq, prev, kind, body, hash, created_by, created_at) "
                  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", *row.values()))

    # Reordered: two neighbours swap places in storage order.
    a, b = moved["seq"], moved["seq"] + 1
    await tamper(("UPDATE music_records SET pos = -1 WHERE pos = $1", a),
                 ("UPDATE music_records SET pos = $1 WHERE pos = $2", a, b),
                 ("UPDATE music_records SET pos = $1 WHERE pos = -1", b))
    report = await verification(client, admin)
    assert report["damages"] and {d["kind"] for d in report["damages"]} == {"reordered"}
    assert {d["seq"] for d in report["damages"]} <= {a, b}
    await tamper(("UPDATE music_records SET pos = -1 WHERE pos = $1", a),
                 ("UPDATE music_records SET pos = $1 WHERE pos = $2", a, b),
                 ("UPDATE music_records SET pos = $1 WHERE pos = -1", b))
    assert (await verification(client, admin))["ok"]


async def test_a_royalty_run_loses_no_cent(client, bearer, admin):
    from nexus_ray.stores import postgres

    tag = uuid.uuid4().hex[:6]
    splits = {f"r-{tag}-a": {f"gus-{tag}": 3333, f"hal-{tag}": 3333, f"ida-{tag}": 3334},
              f"r-{tag}-b": {f"gus-{tag}": 1, f"hal-{tag}": 9999},
              f"r-{tag}-c": {f"ida-{tag}": 7000, f"jo-{tag}": 2999, f"gus-{tag}": 1}}
    for work, shares in splits.items():
        await append(client, admin, work_records(work, shares))
    payments = [{"work": f"r-{tag}-a", "amount": 100}, {"work": f"r-{tag}-b", "amount": 1},
                {"work": f"r-{tag}-c", "amount": 99_999}, {"work": f"r-{tag}-a", "amount": 1}]
    body = {"currency": "EUR", "payments": payments, "idempotency_key": f"run-{tag}"}
    r = await client.post(f"{API}/royalty-runs", json=body, headers=admin)
    assert r.status_code == 201, r.text
    run = r.json()
    total = sum(p["amount"] for p in payments)
    assert (run["status"], run["paid_in"], run["paid_out"], run["works"]) == ("posted", total, total, 3)

    expected: dict[str, int] = {}
    for p in payments:
        for holder, cents in split_payment(p["amount"], splits[p["work"]]).items():
            expected[holder] = expected.get(holder, 0) + cents
    assert sum(expected.values()) == total
    pg = await postgres.pool()
    credited = {}
    for holder in expected:
        account = await pg.fetchval("SELECT account_id FROM music_ledger_accounts WHERE key = $1",
                                    f"royalties:{holder}:EUR")
        got = await client.get(f"/commerce/v1/ledger/accounts/{account}", headers=admin)
        credited[holder] = got.json()["balance"]["posted"]
    assert credited == expected  # every cent on the ledger, none made up

    again = await client.post(f"{API}/royalty-runs", json=body, headers=admin)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json()["id"] == run["id"]
    mine = await client.get(f"{API}/royalties", headers=bearer("finance:music-chain:read", subject=f"ida-{tag}"))
    assert sum(x["amount"] for x in mine.json()["items"]) == expected[f"ida-{tag}"]
    unknown = await client.post(f"{API}/royalty-runs", headers=admin, json={
        "currency": "EUR", "payments": [{"work": "never-registered", "amount": 5}], "idempotency_key": key()})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "payments.0.work"


def key() -> str:
    return uuid.uuid4().hex
