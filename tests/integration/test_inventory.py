"""inventory-mgr over HTTP on the real stores: no oversell under 200 concurrent reservations, all lines or none,
holds that expire, idempotent reserve/commit/release, low-stock events once per crossing, and a movement history
that replays to the stock."""

from __future__ import annotations

import asyncio
import uuid

import pytest

pytestmark = pytest.mark.integration

API = "/commerce/v1/inventory"


@pytest.fixture(scope="module")
def ops(bearer):
    return bearer("commerce:inventory:*", subject="inventory-ops")


@pytest.fixture(scope="module")
def svc(bearer):
    """A service acting for orders: it reserves, commits and releases, and administers nothing."""
    return bearer("commerce:inventory:read", "commerce:inventory:write", subject="order-service")


def new_sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:10]}"


async def warehouse(client, ops, priority=100) -> str:
    wid = f"wh-{uuid.uuid4().hex[:8]}"
    r = await client.post(f"{API}/warehouses", json={"id": wid, "name": wid, "priority": priority}, headers=ops)
    assert r.status_code == 201, r.text
    return wid


async def restock(client, ops, sku, wid, quantity, **extra):
    r = await client.post(f"{API}/stock/restock", json={"sku": sku, "warehouse_id": wid, "quantity": quantity,
                                                        **extra}, headers=ops)
    assert r.status_code == 200, r.text
    return r.json()


async def stock_of(client, svc, sku) -> dict:
    r = await client.get(f"{API}/stock", params={"sku": sku}, headers=svc)
    assert r.status_code == 200, r.text
    (found,) = r.json()
    return found


async def reserve(client, headers, lines, *, key=None, ttl_s=600, reference="order-1"):
    body = {"reference": reference, "lines": lines, "ttl_s": ttl_s, "idempotency_key": key or uuid.uuid4().hex}
    return await client.post(f"{API}/reservations", json=body, headers=headers)


async def movements(client, ops, sku) -> list[dict]:
    out, cursor = [], None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        r = await client.get(f"{API}/skus/{sku}/movements", params=params, headers=ops)
        assert r.status_code == 200, r.text
        out += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


async def assert_history_explains_stock(client, ops, svc, sku) -> list[dict]:
    """Summing the movements of each warehouse gives its on-hand and reserved units, exactly."""
    from nexus_ray.stores import postgres

    history = await movements(client, ops, sku)
    replayed: dict[str, list[int]] = {}
    for m in history:
        t = replayed.setdefault(m["warehouse_id"], [0, 0])
        t[0] += m["on_hand_delta"]
        t[1] += m["reserved_delta"]
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT warehouse_id, on_hand, reserved FROM inventory_stock WHERE sku = $1", sku)
    assert {r["warehouse_id"]: [r["on_hand"], r["reserved"]] for r in rows} == replayed
    return history


async def test_no_oversell_200_concurrent_reservations_for_50_units(client, ops, svc):
    sku = new_sku()
    near, far = await warehouse(client, ops, priority=1), await warehouse(client, ops, priority=2)
    await restock(client, ops, sku, near, 30)
    await restock(client, ops, sku, far, 20)

    results = await asyncio.gather(*(reserve(client, svc, [{"sku": sku, "quantity": 1}], reference=f"o{i}")
                                     for i in range(200)))
    codes = [r.status_code for r in results]
    assert codes.count(201) == 50 and codes.count(409) == 150, sorted(set(codes))
    refused = next(r.json() for r in results if r.status_code == 409)
    assert refused["code"] == "insufficient_stock" and refused["sku"] == sku
    assert refused["errors"][0]["field"] == "lines.0.sku"
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"], s["available"]) == (50, 50, 0)
    # The nearer warehouse (lower priority number) is drawn first.
    taken = {}
    for r in results:
        if r.status_code == 201:
            for ln in r.json()["lines"]:
                taken[ln["warehouse_id"]] = taken.get(ln["warehouse_id"], 0) + ln["quantity"]
    assert taken == {near: 30, far: 20}

    # Half the orders go out, a quarter come back, and the history still explains every unit.
    held = [r.json()["id"] for r in results if r.status_code == 201]
    done = await asyncio.gather(*(client.post(f"{API}/reservations/{rid}/commit", headers=svc) for rid in held[:25]),
                                *(client.post(f"{API}/reservations/{rid}/release", headers=svc) for rid in held[25:]))
    assert all(r.status_code == 200 for r in done)
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"], s["available"]) == (25, 0, 25)
    history = await assert_history_explains_stock(client, ops, svc, sku)
    kinds = [m["kind"] for m in history]
    assert (kinds.count("restock"), kinds.count("reserve"), kinds.count("commit"), kinds.count("release")) == (
        2, 50, 25, 25)


async def test_all_lines_or_none_and_adjustments_never_below_reserved(client, ops, svc):
    a, b = new_sku(), new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, a, wid, 5)
    await restock(client, ops, b, wid, 1)
    r = await reserve(client, svc, [{"sku": a, "quantity": 2}, {"sku": b, "quantity": 2}])
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "lines.1.sku", r.text
    assert (await stock_of(client, svc, a))["available"] == 5  # the line that fitted was not held either
    r = await reserve(client, svc, [{"sku": a, "quantity": 4}, {"sku": new_sku(), "quantity": 1}])
    assert r.status_code == 409 and r.json()["available"] == 0  # an unknown SKU has no stock

    r = await reserve(client, svc, [{"sku": a, "quantity": 4}])
    assert r.status_code == 201
    bad = await client.post(f"{API}/stock/adjustments", json={"sku": a, "warehouse_id": wid, "delta": -2,
                                                              "reason": "damaged"}, headers=ops)
    assert bad.status_code == 409 and bad.json()["available"] == 1, bad.text
    ok = await client.post(f"{API}/stock/adjustments", json={"sku": a, "warehouse_id": wid, "delta": -1,
                                                             "reason": "damaged"}, headers=ops)
    assert ok.status_code == 200 and ok.json()["available"] == 0, ok.text
    # Administration is the operators': a service with write scope cannot restock.
    denied = await client.post(f"{API}/stock/restock", json={"sku": a, "warehouse_id": wid, "quantity": 1},
                               headers=svc)
    assert denied.status_code == 403
    await assert_history_explains_stock(client, ops, svc, a)


async def test_a_hold_expires_and_its_stock_returns(client, ops, svc, until):
    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 3)
    r = await reserve(client, svc, [{"sku": sku, "quantity": 3}], ttl_s=1)
    assert r.status_code == 201 and r.json()["status"] == "held"
    rid = r.json()["id"]
    assert (await stock_of(client, svc, sku))["available"] == 0

    async def swept() -> bool:
        return any(m["kind"] == "expire" for m in await movements(client, ops, sku))

    await until(swept, within_s=15, every=0.2)  # the background sweep released it
    got = await client.get(f"{API}/reservations/{rid}", headers=svc)
    assert got.json()["status"] == "expired" and got.json()["resolved_at"] is not None
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"], s["available"]) == (3, 0, 3)
    late = await client.post(f"{API}/reservations/{rid}/commit", headers=svc)
    assert late.status_code == 409 and late.json()["code"] == "reservation_not_held"
    # The units can be held again.
    assert (await reserve(client, svc, [{"sku": sku, "quantity": 3}])).status_code == 201
    await assert_history_explains_stock(client, ops, svc, sku)


async def test_reads_and_new_reservations_treat_a_lapsed_hold_as_released(client, ops, svc):
    """Before any sweep: a hold past its expiry no longer counts, for a read or for a new reservation."""
    from nexus_ray.stores import postgres

    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 2)
    r = await reserve(client, svc, [{"sku": sku, "quantity": 2}])
    rid = r.json()["id"]
    pg = await postgres.pool()
    # Its clock ran out (as if the ttl had passed) and no sweep has run yet.
    await pg.execute("UPDATE inventory_reservations SET expires_at = now() - interval '1 second' WHERE id = $1",
                     uuid.UUID(rid))
    assert (await stock_of(client, svc, sku))["available"] == 2
    assert (await client.get(f"{API}/reservations/{rid}", headers=svc)).json()["status"] == "expired"
    again = await reserve(client, svc, [{"sku": sku, "quantity": 2}])
    assert again.status_code == 201, again.text
    assert (await stock_of(client, svc, sku))["available"] == 0
    await assert_history_explains_stock(client, ops, svc, sku)


async def test_a_new_reservation_waits_for_a_lapsed_hold_that_the_sweep_is_ending_instead_of_refusing(
    client, ops, svc, until
):
    """The sweep has locked a lapsed hold and is ending it when a reservation of the same units comes: the
    reservation waits for it and gets the units, where it used to skip the locked hold and answer 409."""
    from nexus_ray.deployments.commerce.inventory import service
    from nexus_ray.stores import postgres

    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 2)
    rid = uuid.UUID((await reserve(client, svc, [{"sku": sku, "quantity": 2}])).json()["id"])
    pg = await postgres.pool()
    await pg.execute("UPDATE inventory_reservations SET expires_at = now() - interval '1 second' WHERE id = $1", rid)

    async def blocked() -> bool:  # the reservation waits on the hold's row lock
        return 1 == await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE '%inventory_reservations r WHERE r.status%'")

    async with pg.acquire() as sweep, sweep.transaction():  # what the sweep does, held open at its first step
        held = await sweep.fetch(f"SELECT {service._RES_COLUMNS} FROM inventory_reservations WHERE id = $1 "
                                 "FOR UPDATE SKIP LOCKED", rid)
        again = asyncio.ensure_future(reserve(client, svc, [{"sku": sku, "quantity": 2}]))
        await until(blocked, within_s=15, every=0.02)
        await service._finish(sweep, "inventory-sweep", held, "expired")
    r = await again
    assert r.status_code == 201, r.text
    assert (await client.get(f"{API}/reservations/{rid}", headers=svc)).json()["status"] == "expired"
    assert (await stock_of(client, svc, sku))["available"] == 0
    history = await assert_history_explains_stock(client, ops, svc, sku)
    assert [m["kind"] for m in history].count("expire") == 1  # ended once, by the sweep


async def test_a_commit_locks_its_reservation_before_it_waits_for_the_sku_and_then_commits(client, ops, svc, until):
    """A commit locks its reservations and then their SKUs in one statement: while another transaction holds the
    SKU, the commit waits there with the reservation already locked (as every transaction that touches
    reservations locks them before their SKUs); once the SKU is free it commits, the stock taken once."""
    import asyncpg

    from nexus_ray.stores import postgres

    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 3)
    rid = (await reserve(client, svc, [{"sku": sku, "quantity": 2}])).json()["id"]
    pg = await postgres.pool()

    async def waiting() -> bool:  # the commit waits on the SKU's row lock
        return 1 == await pg.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE '%SELECT DISTINCT sku FROM locked%'")

    async with pg.acquire() as other, other.transaction():
        await other.execute("SELECT 1 FROM inventory_skus WHERE sku = $1 FOR UPDATE", sku)
        commit = asyncio.ensure_future(client.post(f"{API}/reservations/{rid}/commit", headers=svc))
        await until(waiting, within_s=15, every=0.02)
        async with pg.acquire() as probe:
            with pytest.raises(asyncpg.LockNotAvailableError):  # locked by the waiting commit
                await probe.fetch("SELECT 1 FROM inventory_reservations WHERE id = $1 FOR UPDATE NOWAIT",
                                  uuid.UUID(rid))
    r = await commit
    assert r.status_code == 200 and r.json()["status"] == "committed", r.text
    found = await stock_of(client, svc, sku)
    assert (found["on_hand"], found["reserved"], found["available"]) == (1, 0, 1)
    await assert_history_explains_stock(client, ops, svc, sku)


async def test_reserve_commit_and_release_are_idempotent(client, ops, svc, bearer):
    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 10)
    key = uuid.uuid4().hex
    lines = [{"sku": sku, "quantity": 4}]
    first = await reserve(client, svc, lines, key=key)
    assert first.status_code == 201
    # Ten retries at once, and one later: the same reservation, held once.
    again = await asyncio.gather(*(reserve(client, svc, lines, key=key) for _ in range(10)))
    assert {r.json()["id"] for r in again} == {first.json()["id"]}
    assert all(r.status_code == 200 and r.headers["idempotent-replayed"] == "true" for r in again)
    assert (await stock_of(client, svc, sku))["reserved"] == 4
    other = await reserve(client, svc, [{"sku": sku, "quantity": 5}], key=key)
    assert other.status_code == 409 and other.json()["errors"][0]["field"] == "idempotency_key"
    # Keys belong to their caller: another caller's same key is another reservation.
    elsewhere = bearer("commerce:inventory:read", "commerce:inventory:write", subject="other-service")
    assert (await reserve(client, elsewhere, lines, key=key)).json()["id"] != first.json()["id"]
    # ...and the first caller's reservation is not the other's to see or touch.
    rid = first.json()["id"]
    assert (await client.get(f"{API}/reservations/{rid}", headers=elsewhere)).status_code == 404
    assert (await client.post(f"{API}/reservations/{rid}/release", headers=elsewhere)).status_code == 404

    commits = await asyncio.gather(*(client.post(f"{API}/reservations/{rid}/commit", headers=svc) for _ in range(5)))
    assert all(r.status_code == 200 and r.json()["status"] == "committed" for r in commits)
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"]) == (6, 4)  # 4 committed left; the other caller's 4 still held
    # Released after commit: a return, once, however often it is asked.
    returns = await asyncio.gather(*(client.post(f"{API}/reservations/{rid}/release", headers=svc)
                                     for _ in range(5)))
    assert all(r.json()["status"] == "released" and r.json()["returned"] for r in returns)
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"]) == (10, 4)
    kinds = [m["kind"] for m in await assert_history_explains_stock(client, ops, svc, sku)]
    assert kinds.count("commit") == 1 and kinds.count("return") == 1

    # Releasing a hold twice returns it twice; committing a released one is a conflict.
    r = await reserve(client, svc, [{"sku": sku, "quantity": 1}])
    rid = r.json()["id"]
    for _ in range(2):
        rel = await client.post(f"{API}/reservations/{rid}/release", headers=svc)
        assert rel.status_code == 200 and rel.json()["status"] == "released"
    assert (await client.post(f"{API}/reservations/{rid}/commit", headers=svc)).status_code == 409


async def test_reservations_asked_at_once_are_made_together_and_each_held_or_refused_alone(client, ops, svc):
    """Reservations asked at the same moment are one transaction, each allocated from what the ones before it left
    and refused alone: of 10 units, 4, 4 and 1 are held and the third 4 refused (leaving no reservation); a key
    sent twice is held once and replayed; a key reused with another body is refused."""
    from nexus_ray.deployments.commerce.inventory import service
    from nexus_ray.exceptions import Conflict
    from nexus_ray.stores import postgres

    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 10)
    keys = [uuid.uuid4().hex for _ in range(4)]

    def ask(key: str, quantity: int):
        return service.reserve(caller="order-service", reference=f"order-{key[:6]}", ttl_s=600, idempotency_key=key,
                               lines=[{"sku": sku, "quantity": quantity}])

    out = await asyncio.gather(ask(keys[0], 4), ask(keys[1], 4), ask(keys[2], 4), ask(keys[3], 1), ask(keys[1], 4),
                               ask(keys[0], 2), return_exceptions=True)
    assert [type(o).__name__ for o in out] == ["tuple", "tuple", "Conflict", "tuple", "tuple", "Conflict"], out
    (a, a_again), (b, b_again), short, (c, c_again), (replay, replayed), reused = out
    assert not (a_again or b_again or c_again) and replayed and replay == b
    assert [r.lines[0].quantity for r in (a, b, c)] == [4, 4, 1]
    assert isinstance(short, Conflict) and short.extra["code"] == "insufficient_stock" and short.extra["available"] == 2
    assert isinstance(reused, Conflict) and reused.extra["code"] == "idempotency_key_reused"
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT idempotency_key, xmin::text AS tx FROM inventory_reservations "
                          "WHERE caller = 'order-service' AND idempotency_key = ANY($1)", keys)
    assert sorted(r["idempotency_key"] for r in rows) == sorted([keys[0], keys[1], keys[3]])  # the short one: none
    assert len({r["tx"] for r in rows}) == 1  # one transaction
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"], s["available"]) == (10, 9, 1)
    kinds = [m["kind"] for m in await assert_history_explains_stock(client, ops, svc, sku)]
    assert kinds.count("reserve") == 3
    with pytest.raises(Conflict) as refused:  # the refused key kept nothing: its retry runs again
        await ask(keys[2], 4)
    assert refused.value.extra["code"] == "insufficient_stock" and refused.value.extra["available"] == 1
    last, last_again = await ask(keys[2], 1)  # and it may be used for what the stock can hold
    assert not last_again and last.lines[0].quantity == 1


async def test_commits_asked_at_once_are_made_together_and_decided_each_alone(client, ops, svc):
    """Commits asked at the same moment are one transaction, and each is answered as it would be alone: two held
    reservations committed (one of them asked for twice: committed once, both asks answered), a lapsed one expired
    and refused, a released one refused, a stranger's reported missing and left as it is."""
    from nexus_ray.deployments.commerce.inventory import service
    from nexus_ray.exceptions import Conflict, NotFound
    from nexus_ray.stores import postgres

    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 20)
    rids = []
    for q in (1, 2, 3, 4):
        r = await reserve(client, svc, [{"sku": sku, "quantity": q}])
        assert r.status_code == 201, r.text
        rids.append(uuid.UUID(r.json()["id"]))
    held, twice, lapsed, released = rids
    pg = await postgres.pool()
    await pg.execute("UPDATE inventory_reservations SET expires_at = now() - interval '1 second' WHERE id = $1",
                     lapsed)
    assert (await client.post(f"{API}/reservations/{released}/release", headers=svc)).status_code == 200

    def commit(rid: uuid.UUID, caller: str = "order-service"):
        return service.commit_reservation(reservation_id=rid, caller=caller, privileged=False)

    out = await asyncio.gather(commit(held), commit(twice), commit(twice), commit(lapsed), commit(released),
                               commit(held, "someone-else"), return_exceptions=True)
    first, again, second, expired, not_held, stranger = out
    assert (first.status, first.lines[0].quantity) == ("committed", 1)
    assert second.status == again.status == "committed" and second == again
    assert isinstance(expired, Conflict) and expired.extra["code"] == "reservation_expired"
    assert isinstance(not_held, Conflict) and not_held.extra["status"] == "released"
    assert isinstance(stranger, NotFound)
    rows = await pg.fetch("SELECT id, status, xmin::text AS tx FROM inventory_reservations WHERE id = ANY($1)", rids)
    status = {r["id"]: r["status"] for r in rows}
    assert [status[r] for r in rids] == ["committed", "committed", "expired", "released"]
    assert len({r["tx"] for r in rows if r["id"] in (held, twice, lapsed)}) == 1  # one transaction
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"], s["available"]) == (17, 0, 17)
    kinds = [m["kind"] for m in await assert_history_explains_stock(client, ops, svc, sku)]
    assert kinds.count("commit") == 2 and kinds.count("expire") == 1


async def test_every_change_of_a_reservation_is_one_event_that_reads_as_the_reservation_does(client, ops, svc, until):
    """Held, committed, returned; and another held then released: each change is one ``reservation.*`` event, in
    order, whose payload is the reservation as it reads right after (status, returned, resolved_at, lines). Two holds
    that lapse together are expired by one sweep, an ``reservation.expired`` event each."""
    from nexus_ray.deployments.commerce.inventory import service
    from nexus_ray.stores import postgres

    pg = await postgres.pool()

    async def events_of(rid: str) -> list[tuple[str, dict]]:
        rows = await pg.fetch("SELECT topic, payload FROM outbox WHERE key = $1 AND topic LIKE 'reservation.%' "
                              "ORDER BY id", rid)
        return [(r["topic"], r["payload"]) for r in rows]

    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 10)
    rid = (await reserve(client, svc, [{"sku": sku, "quantity": 3}])).json()["id"]
    committed = (await client.post(f"{API}/reservations/{rid}/commit", headers=svc)).json()
    returned = (await client.post(f"{API}/reservations/{rid}/release", headers=svc)).json()
    read = (await client.get(f"{API}/reservations/{rid}", headers=svc)).json()
    got = await events_of(rid)
    assert [t for t, _ in got] == ["reservation.held", "reservation.committed", "reservation.returned"]
    assert got[1][1] == committed and got[1][1]["status"] == "committed" and got[1][1]["resolved_at"]
    assert got[2][1] == returned == read and read["status"] == "released" and read["returned"] is True
    assert read["lines"] == [{"sku": sku, "warehouse_id": wid, "quantity": 3}]

    rid = (await reserve(client, svc, [{"sku": sku, "quantity": 1}])).json()["id"]
    released = (await client.post(f"{API}/reservations/{rid}/release", headers=svc)).json()
    assert [t for t, _ in await events_of(rid)] == ["reservation.held", "reservation.released"]
    assert (await events_of(rid))[1][1] == released and released["returned"] is False

    lapsing = [(await reserve(client, svc, [{"sku": sku, "quantity": 1}], ttl_s=1)).json()["id"] for _ in range(2)]
    await pg.execute("UPDATE inventory_reservations SET expires_at = now() - interval '1 second' "
                     "WHERE id = ANY($1::uuid[])", [uuid.UUID(r) for r in lapsing])

    async def expired() -> bool:  # the session's own sweep may take them first: either way, one event each
        await service.expire_reservations()
        topics = [[t for t, _ in await events_of(r)] for r in lapsing]
        return all(t == ["reservation.held", "reservation.expired"] for t in topics)

    await until(expired, within_s=10, every=0.2)
    for r in lapsing:
        (_, payload) = (await events_of(r))[1]
        assert payload == (await client.get(f"{API}/reservations/{r}", headers=svc)).json()
    s = await stock_of(client, svc, sku)
    assert (s["on_hand"], s["reserved"]) == (10, 0)


async def test_idempotent_restock(client, ops, svc):
    sku = new_sku()
    wid = await warehouse(client, ops)
    key = uuid.uuid4().hex
    results = await asyncio.gather(*(client.post(f"{API}/stock/restock", headers={**ops, "Idempotency-Key": key},
                                                 json={"sku": sku, "warehouse_id": wid, "quantity": 7})
                                     for _ in range(5)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert (await stock_of(client, svc, sku))["on_hand"] == 7
    missing = await client.post(f"{API}/stock/restock", json={"sku": sku, "warehouse_id": "nowhere",
                                                              "quantity": 1}, headers=ops)
    assert missing.status_code == 404 and missing.json()["field"] == "warehouse_id"


async def test_low_stock_event_once_per_crossing(client, ops, svc):
    from nexus_ray.stores import postgres

    sku = new_sku()
    wid = await warehouse(client, ops)
    r = await client.put(f"{API}/skus/{sku}/threshold", json={"low_threshold": 5}, headers=ops)
    assert r.status_code == 200 and r.json()["low"] is True, r.text  # no stock at all: below from the start
    await restock(client, ops, sku, wid, 10)  # 10: back above

    async def events() -> list[tuple[str, int]]:
        pg = await postgres.pool()
        rows = await pg.fetch("SELECT topic, payload FROM outbox WHERE key = $1 AND topic LIKE 'stock.%' "
                              "ORDER BY id", sku)
        return [(r["topic"], r["payload"]["available"]) for r in rows]

    assert await events() == [("stock.low", 0), ("stock.replenished", 10)]
    for q in (3, 3, 1):  # 7 (above), 4 (crosses below), 3 (still below: no second event)
        assert (await reserve(client, svc, [{"sku": sku, "quantity": q}])).status_code == 201
    assert await events() == [("stock.low", 0), ("stock.replenished", 10), ("stock.low", 4)]
    await restock(client, ops, sku, wid, 10)  # 13
    r = await reserve(client, svc, [{"sku": sku, "quantity": 9}])  # 4: crosses again
    assert r.status_code == 201
    assert await events() == [("stock.low", 0), ("stock.replenished", 10), ("stock.low", 4),
                              ("stock.replenished", 13), ("stock.low", 4)]
    assert (await stock_of(client, svc, sku))["low"] is True


async def test_exports_follow_the_contract(client, ops, svc):
    """The functions the order saga calls: keyword arguments, pydantic reads, idempotent, scoped by caller."""
    from nexus_ray.deployments.kit.calls import call
    from nexus_ray.exceptions import Conflict, NotFound

    name = "puabo-nuki-inventory-mgr"
    sku = new_sku()
    wid = await warehouse(client, ops)
    await restock(client, ops, sku, wid, 2)
    res = await call(name, "reserve", caller="orders", reference="order-x", lines=[{"sku": sku, "quantity": 2}],
                     ttl_s=60, idempotency_key="order-x:reserve")
    assert res.status == "held" and res.reference == "order-x" and res.lines[0].warehouse_id == wid
    again = await call(name, "reserve", caller="orders", reference="order-x", lines=[{"sku": sku, "quantity": 2}],
                       ttl_s=60, idempotency_key="order-x:reserve")
    assert again.id == res.id
    with pytest.raises(Conflict):
        await call(name, "reserve", caller="orders", reference="order-y", lines=[{"sku": sku, "quantity": 1}],
                   ttl_s=60, idempotency_key="order-y:reserve")
    with pytest.raises(NotFound):
        await call(name, "commit_reservation", caller="someone-else", reservation_id=str(res.id))
    done = await call(name, "commit_reservation", caller="orders", reservation_id=str(res.id))
    assert done.status == "committed"
    back = await call(name, "release_reservation", caller="orders", reservation_id=str(res.id))
    assert back.status == "released" and back.returned
    assert (await stock_of(client, svc, sku))["available"] == 2
