"""puabo-nexus (deliveries) on the in-process platform and real stores: the state machine and its 409s, the
timeline and delivery.status events, proof of delivery with its checksum, who sees what, and deliveries made
from shipping's shipment.created events (exactly one per shipment) moved by dispatch's dispatch.assigned."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest
import statements

from nexus_ray.stores import events, postgres

pytestmark = pytest.mark.integration

API = "/logistics/v1/deliveries"
DRIVERS = "/logistics/v1/drivers"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer("logistics:deliveries:*", subject="deliveries-ops")


@pytest.fixture
def user(bearer):
    """``user()``: headers of a fresh account with the deliveries' and drivers' read/write scopes."""
    def make() -> dict[str, str]:
        return bearer("logistics:deliveries:read", "logistics:deliveries:write", "logistics:drivers:read",
                      "logistics:drivers:write", subject=f"u-{uuid.uuid4().hex[:8]}")
    return make


async def new_driver(client, headers) -> str:
    """Registers the account of ``headers`` as a driver (as the fleet's operators do); returns the driver id."""
    from nexus_ray.deployments.logistics.drivers import service as drivers
    from nexus_ray.deployments.logistics.fleet import service as fleets
    from nexus_ray.exceptions import Conflict

    try:
        await fleets.create_fleet(caller="deliveries-ops", privileged=True, fleet_id="berlin", name="Berlin",
                                  owner="fleet-ops")
    except Conflict:
        pass  # made by an earlier test
    created = await drivers.create_driver(
        caller="deliveries-ops", privileged=True, user_id=subject_of(headers), name="Bo", fleet_id="berlin",
        vehicle_id=f"bike-{uuid.uuid4().hex[:6]}", vehicle_type="bike", capacity_kg=20)
    return str(created.id)


async def new_delivery(client, headers, **extra) -> dict:
    body = {"pickup": {"lat": 52.5, "lon": 13.4}, "dropoff": {"lat": 52.52, "lon": 13.41, "address": "Mitte 1"},
            "weight_kg": 2.5, "driver_fee": 650, "currency": "EUR", **extra}
    r = await client.post(f"{API}/deliveries", headers=headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def move(client, headers, delivery_id: str, action: str, **body):
    return await client.post(f"{API}/deliveries/{delivery_id}/{action}", headers=headers, json=body)


async def upload(client, headers, delivery_id: str, data: bytes = PNG, content_type: str = "image/png", **extra):
    return await client.put(f"{API}/deliveries/{delivery_id}/proof", params={"kind": "signature"}, content=data,
                            headers={**headers, "Content-Type": content_type, **extra})


async def status_events(delivery_id: str) -> list[str]:
    rows = await (await postgres.pool()).fetch(
        "SELECT payload FROM outbox WHERE topic = 'delivery.status' AND key = $1 ORDER BY id", delivery_id)
    return [r["payload"]["status"] for r in rows]


async def test_the_state_machine_refuses_invalid_moves_with_409(client, admin, user):
    owner, driver = user(), user()
    driver_id = await new_driver(client, driver)
    d = await new_delivery(client, owner)
    assert (d["status"], d["dispatch_state"], d["owner"]) == ("created", "pending", subject_of(owner))
    for action in ("pickup", "deliver"):
        r = await move(client, admin, d["id"], action)
        assert r.status_code == 409 and r.json()["status"] == "created", r.text
    r = await move(client, admin, d["id"], "assign", driver_id=driver_id)
    assert r.status_code == 200 and r.json()["status"] == "assigned" and r.json()["driver_id"] == driver_id
    r = await move(client, admin, d["id"], "assign", driver_id=driver_id)
    assert r.status_code == 409 and r.json()["allowed"] == ["picked_up", "failed"]

    assert (await move(client, driver, d["id"], "pickup", lat=52.5, lon=13.4)).json()["status"] == "picked_up"
    r = await move(client, driver, d["id"], "deliver")
    assert r.status_code == 409 and "proof" in r.json()["detail"]
    assert (await upload(client, driver, d["id"])).status_code == 200
    assert (await move(client, driver, d["id"], "deliver", note="at the door")).json()["status"] == "delivered"
    r = await move(client, driver, d["id"], "fail")
    assert r.status_code == 409 and r.json()["allowed"] == []
    assert (await upload(client, driver, d["id"])).status_code == 409  # the proof is final once delivered

    timeline = (await client.get(f"{API}/deliveries/{d['id']}/timeline", headers=owner)).json()
    assert [t["status"] for t in timeline] == ["created", "assigned", "picked_up", "delivered"]
    # Each move's event names the delivery's customer (its owner, for one made through the API): the notification
    # service tells them.
    moved = await (await postgres.pool()).fetch(
        "SELECT payload FROM outbox WHERE topic = 'delivery.status' AND key = $1 ORDER BY id", d["id"])
    assert {m["payload"]["customer"] for m in moved} == {subject_of(owner)} and len(moved) == 4
    assert timeline[2]["lat"] == 52.5 and timeline[3]["note"] == "at the door"
    assert await status_events(d["id"]) == ["created", "assigned", "picked_up", "delivered"]
    # The driver was paid for the job: their earning is the delivery's fee.
    r = await client.get(f"{DRIVERS}/drivers/{driver_id}/earnings", headers=driver)
    assert [(e["job_id"], e["amount"], e["currency"]) for e in r.json()["items"]] == [(d["id"], 650, "EUR")]


def subject_of(headers: dict[str, str]) -> str:
    """The ``sub`` of the bearer token in ``headers``."""
    payload = headers["Authorization"].split()[1].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


async def test_proof_of_delivery_is_stored_with_its_checksum_and_checked(client, admin, user):
    driver = user()
    driver_id = await new_driver(client, driver)
    d = await new_delivery(client, admin)
    await move(client, admin, d["id"], "assign", driver_id=driver_id)
    assert (await upload(client, driver, d["id"])).status_code == 409  # not picked up yet
    await move(client, driver, d["id"], "pickup")

    r = await upload(client, driver, d["id"], **{"X-Checksum-SHA256": "0" * 64})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "x-checksum-sha256"
    r = await upload(client, driver, d["id"], content_type="text/plain")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "content-type"
    r = await upload(client, driver, d["id"], data=b"GIF89a not a png", content_type="image/png")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"
    r = await upload(client, driver, d["id"], data=PNG + b"\0" * (600 * 1024))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"

    digest = hashlib.sha256(PNG).hexdigest()
    r = await upload(client, driver, d["id"], **{"X-Checksum-SHA256": digest.upper()})
    assert r.status_code == 200, r.text
    assert (r.json()["sha256"], r.json()["size_bytes"], r.json()["kind"]) == (digest, len(PNG), "signature")
    r = await client.get(f"{API}/deliveries/{d['id']}/proof/content", headers=admin)
    assert r.content == PNG and r.headers["X-Checksum-SHA256"] == digest
    assert r.headers["content-type"] == "image/png"
    stored = await (await postgres.pool()).fetchval("SELECT data FROM delivery_proofs WHERE delivery_id = $1",
                                                    uuid.UUID(d["id"]))
    assert hashlib.sha256(stored).hexdigest() == digest


async def test_a_delivery_is_seen_by_its_owner_its_driver_and_admins_only(client, admin, user):
    owner, driver, other_driver, stranger = user(), user(), user(), user()
    driver_id = await new_driver(client, driver)
    await new_driver(client, other_driver)
    d = await new_delivery(client, owner)
    mine_too = await new_delivery(client, admin)
    await move(client, admin, d["id"], "assign", driver_id=driver_id)

    for headers in (owner, driver, admin):
        assert (await client.get(f"{API}/deliveries/{d['id']}", headers=headers)).status_code == 200
    for headers in (stranger, other_driver):
        assert (await client.get(f"{API}/deliveries/{d['id']}", headers=headers)).status_code == 404
        assert (await client.get(f"{API}/deliveries/{d['id']}/timeline", headers=headers)).status_code == 404
        assert (await move(client, headers, d["id"], "pickup")).status_code == 404
    assert (await move(client, owner, d["id"], "pickup")).status_code == 403  # sees it, does not drive it
    listed = (await client.get(f"{API}/deliveries", headers=driver)).json()["items"]
    assert [x["id"] for x in listed] == [d["id"]]
    assert (await client.get(f"{API}/deliveries", headers=other_driver)).json()["items"] == []
    everyone = (await client.get(f"{API}/deliveries", params={"all": "true", "limit": 500}, headers=admin)).json()
    assert {d["id"], mine_too["id"]} <= {x["id"] for x in everyone["items"]}


async def test_one_delivery_per_shipment_and_dispatch_assigns_it(client, admin, user, until):
    driver_id = await new_driver(client, user())
    shipment_id = f"shp-{uuid.uuid4().hex[:10]}"
    fact = {"shipment_id": shipment_id, "order_id": "ord-1", "customer": "cust-41", "weight_g": 1500,
            "address": {"line1": "Unter den Linden 1", "city": "Berlin", "lat": 52.517, "lon": 13.389}}
    async with postgres.transaction() as conn:  # shipping's fact, said twice (as a redelivery would)
        first = await events.emit(conn, "shipment.created", fact, key=shipment_id)
        second = await events.emit(conn, "shipment.created", fact, key=shipment_id)
    pg = await postgres.pool()

    async def both_handled() -> bool:
        n = await pg.fetchval("SELECT count(*) FROM processed_events WHERE consumer = 'puabo-nexus' "
                              "AND event_id = ANY($1::uuid[])", [first, second])
        return n == 2

    await until(both_handled, within_s=60, every=0.2)
    rows = await pg.fetch("SELECT * FROM deliveries WHERE shipment_id = $1", shipment_id)
    assert len(rows) == 1
    delivery = rows[0]
    assert (delivery["status"], delivery["order_id"], delivery["weight_kg"]) == ("created", "ord-1", 1.5)
    assert (delivery["dropoff"]["lat"], delivery["dropoff"]["lon"]) == (52.517, 13.389)
    assert delivery["dispatch_state"] == "manual"  # no depot configured: no pickup coordinates to cost it by
    assert await status_events(str(delivery["id"])) == ["created"]
    created = await pg.fetchval("SELECT payload FROM outbox WHERE topic = 'delivery.status' AND key = $1",
                                str(delivery["id"]))
    # The order's customer, whom the notification service tells how the parcel moves.
    assert (created["shipment_id"], created["order_id"], created["customer"]) == (shipment_id, "ord-1", "cust-41")

    async with postgres.transaction() as conn:
        await events.emit(conn, "dispatch.assigned", {"job_id": str(delivery["id"]), "driver_id": driver_id,
                                                      "offer_id": "offer-x"})

    async def assigned() -> dict | None:
        r = await client.get(f"{API}/deliveries/{delivery['id']}", headers=admin)
        return r.json() if r.json()["status"] == "assigned" else None

    got = await until(assigned, within_s=60, every=0.2)
    assert (got["driver_id"], got["offer_id"]) == (driver_id, "offer-x")
    moved = await pg.fetch("SELECT payload FROM outbox WHERE topic = 'delivery.status' AND key = $1 ORDER BY id",
                           str(delivery["id"]))
    assert [(m["payload"]["status"], m["payload"]["customer"]) for m in moved] == [("created", "cust-41"),
                                                                                 ("assigned", "cust-41")]


async def test_a_fetchs_shipments_become_deliveries_in_one_statement(client, admin):
    """The consumer's handler takes a fetch's events at once: a delivery for each new shipment, each with its
    timeline entry and its event, in one statement; a shipment that has its delivery already makes none, and the
    same events again make nothing."""
    from datetime import UTC, datetime

    from nexus_ray.deployments.logistics.deliveries import service
    from nexus_ray.stores.events import Event

    shipments = [f"shp-{uuid.uuid4().hex[:10]}" for _ in range(3)]

    def shipped(shipment_id: str, customer: str) -> Event:
        return Event(id=uuid.uuid4(), topic="shipment.created", key=shipment_id, occurred_at=datetime.now(UTC),
                     headers={}, data={"shipment_id": shipment_id, "order_id": f"ord-{shipment_id}",
                                       "customer": customer, "weight_g": 250,
                                       "address": {"city": "Berlin", "lat": 52.5, "lon": 13.4}})

    async with postgres.transaction() as conn:  # the first shipment's delivery, made by an earlier fetch
        await service.on_events(conn, [shipped(shipments[0], "cust-0")])
    batch = [shipped(s, f"cust-{n}") for n, s in enumerate(shipments)]
    sent = await statements.sent_in_transaction(lambda conn: service.on_events(conn, batch))
    assert len(sent) == 1, sent
    pg = await postgres.pool()
    rows = {r["shipment_id"]: r for r in await pg.fetch(
        "SELECT * FROM deliveries WHERE shipment_id = ANY($1::text[])", shipments)}
    assert set(rows) == set(shipments)
    for n, shipment_id in enumerate(shipments):
        row = rows[shipment_id]
        assert (row["customer"], row["order_id"], row["weight_kg"]) == (f"cust-{n}", f"ord-{shipment_id}", 0.25)
        assert await status_events(str(row["id"])) == ["created"]
        timeline = await pg.fetch("SELECT status FROM delivery_events WHERE delivery_id = $1", row["id"])
        assert [t["status"] for t in timeline] == ["created"]
    async with postgres.transaction() as conn:  # the same events again (a redelivery)
        await service.on_events(conn, batch)
    assert await pg.fetchval("SELECT count(*) FROM deliveries WHERE shipment_id = ANY($1::text[])", shipments) == 3
    for row in rows.values():
        assert await status_events(str(row["id"])) == ["created"]
