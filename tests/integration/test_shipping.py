"""puabo-nuki-shipping-service on the real stores: quotes per zone and weight band, shipments idempotent on the
order (export, HTTP and the order.paid event alike), the state machine's 409s, labels whose barcode reads back as
the tracking number, and logistics' delivery.status events (through the outbox and Kafka) on the timeline."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pdfread
import pytest

from nexus_ray.compute.pdf import decode_code128
from nexus_ray.deployments.kit.calls import call
from nexus_ray.exceptions import Conflict, ValidationFailed

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("client")]

API = "/commerce/v1/shipping"
SERVICE = "puabo-nuki-shipping-service"
ADDRESS = {"name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London", "postal_code": "SW1Y 4JH",
           "country": "GB"}


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer("commerce:shipping:*", subject="shipping-ops")


def order() -> str:
    return f"ord-{uuid.uuid4().hex[:12]}"


async def ship(order_id=None, *, key=None, address=ADDRESS, weight_g=1200, level="standard", customer="cust-ship"):
    return await call(SERVICE, "request_shipment", caller="order-processor", order_id=order_id or order(),
                      address=address, weight_g=weight_g, service_level=level, customer=customer,
                      idempotency_key=key or uuid.uuid4().hex)


async def emit_event(topic: str, data: dict, key: str | None = None) -> uuid.UUID:
    from nexus_ray.stores import postgres
    from nexus_ray.stores.events import emit

    async with postgres.transaction() as conn:
        return await emit(conn, topic, data, key=key or str(data.get("shipment_id") or data.get("order_id")))


# -- rates -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("weight_g", "country", "level", "zone", "amount", "days"), [
    (0, "US", "standard", "domestic", 500, 3),            # weight unknown: the lightest band
    (400, "US", "standard", "domestic", 500, 3),          # band <= 500 g
    (500, "US", "standard", "domestic", 500, 3),          # the bound belongs to the band
    (501, "US", "standard", "domestic", 800, 3),          # next band (<= 1000 g)
    (501, "US", "express", "domestic", 1600, 1),
    (1500, "CA", "standard", "north-america", 1900, 6),  # <= 2000 g
    (2000, "DE", "standard", "europe", 2500, 8),
    (30000, "JP", "standard", "world", 10500, 12),       # unlisted country: world; the last band
])
async def test_a_quote_is_the_band_of_the_zone(client, bearer, weight_g, country, level, zone, amount, days):
    r = await client.get(f"{API}/quotes", params={"weight_g": weight_g, "country": country, "service_level": level},
                         headers=bearer("commerce:shipping:read"))
    assert r.status_code == 200, r.text
    q = r.json()
    assert (q["zone"], q["amount"], q["currency"], q["estimated_days"]) == (zone, amount, "USD", days)
    exported = await call(SERVICE, "quote", weight_g=weight_g, country=country, service_level=level)
    assert exported.model_dump() == q


async def test_a_parcel_past_the_heaviest_band_or_a_bad_country_is_a_422():
    with pytest.raises(ValidationFailed) as err:
        await call(SERVICE, "quote", weight_g=30001, country="US")
    assert err.value.extra["errors"][0]["field"] == "weight_g"
    with pytest.raises(ValidationFailed) as err:
        await call(SERVICE, "quote", weight_g=100, country="us")
    assert err.value.extra["errors"][0]["field"] == "country"


# -- shipments ------------------------------------------------------------------------------------------------------


async def test_one_shipment_per_order_however_often_and_concurrently_asked(client, admin):
    from nexus_ray.stores import postgres

    order_id = order()
    results = await asyncio.gather(*[ship(order_id) for _ in range(8)])  # eight keys, one order
    assert len({s.id for s in results}) == 1
    shipment = results[0]
    assert shipment.status == "label_created" and shipment.tracking_number.startswith("NX")
    assert shipment.zone == "europe" and shipment.rate_amount == 2500
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT count(*) FROM outbox WHERE topic = 'shipment.created' AND key = $1",
                             order_id) == 1
    event = await pg.fetchval("SELECT payload FROM outbox WHERE topic = 'shipment.created' AND key = $1", order_id)
    assert event["shipment_id"] == str(shipment.id) and event["address"]["city"] == "London"
    # A key replays its shipment; reused for another order it is a 409 naming it.
    key = uuid.uuid4().hex
    first = await ship(key=key)
    assert (await ship(first.order_id, key=key)).id == first.id
    with pytest.raises(Conflict) as err:
        await ship(key=key)
    assert err.value.extra["errors"][0]["field"] == "idempotency_key"
    # A retry is answered with its shipment even when the parcel it names could not be quoted now; a new request
    # for such a parcel is the quote's 422.
    assert (await ship(first.order_id, key=key, weight_g=999_999)).id == first.id
    with pytest.raises(ValidationFailed) as err:
        await ship(weight_g=999_999)
    assert err.value.extra["errors"][0]["field"] == "weight_g"
    # Over HTTP: the back office's; asking again for the order answers the same shipment, marked replayed.
    body = {"order_id": first.order_id, "address": ADDRESS, "weight_g": 100, "idempotency_key": uuid.uuid4().hex}
    r = await client.post(f"{API}/shipments", json=body, headers=admin)
    assert r.status_code == 201 and r.json()["id"] == str(first.id) and r.headers["Idempotent-Replayed"] == "true"
    bad = await client.post(f"{API}/shipments", json={**body, "order_id": order(), "address": {**ADDRESS,
                                                                                             "country": "Britain"}},
                            headers=admin)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "address.country"


async def test_one_key_sent_at_once_for_many_orders_ships_one_of_them(client):
    """Eight requests with one key for eight orders, all at once: whichever way they interleave (the key found
    before the insert, or taken by another request while it ran), exactly one order gets a shipment; the others
    get the 409 naming the key and leave no shipment, tracking event or event behind."""
    from nexus_ray.exceptions import Conflict
    from nexus_ray.stores import postgres

    key, orders = uuid.uuid4().hex, [order() for _ in range(8)]
    outcomes = await asyncio.gather(*(ship(o, key=key) for o in orders), return_exceptions=True)
    shipped = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(shipped) == 1 and len(refused) == 7, outcomes
    assert all(err.extra["errors"][0]["field"] == "idempotency_key" for err in refused)
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT count(*) FROM shipments WHERE order_id = ANY($1::text[])", orders) == 1
    assert await pg.fetchval("SELECT count(*) FROM shipment_events e JOIN shipments s ON s.id = e.shipment_id "
                             "WHERE s.order_id = ANY($1::text[])", orders) == 1
    assert await pg.fetchval("SELECT count(*) FROM outbox WHERE topic = 'shipment.created' AND key = ANY($1::text[])",
                             orders) == 1


async def test_shipments_requested_at_once_are_one_transaction_and_each_answered_as_alone(client):
    """Requests of a moment are made in one statement: two new shipments in one transaction, with a retry of one of
    them (its first shipment) and a parcel no rate holds (422) beside them. Then a batch with a new key for an order
    that has its shipment (which fails the batch's statement on the key's reference) is made one at a time: each
    request still gets its answer, and that order its one shipment."""
    from nexus_ray.exceptions import ValidationFailed
    from nexus_ray.stores import postgres

    a, b, c = order(), order(), order()
    key_a = uuid.uuid4().hex
    first = await asyncio.gather(ship(a, key=key_a), ship(b), ship(a, key=key_a), ship(order(), weight_g=999_999),
                                 return_exceptions=True)
    made_a, made_b, again_a, too_heavy = first
    assert (made_a.order_id, made_b.order_id) == (a, b) and again_a == made_a
    assert isinstance(too_heavy, ValidationFailed) and too_heavy.extra["errors"][0]["field"] == "weight_g"
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT order_id, xmin::text AS tx FROM shipments WHERE order_id = ANY($1::text[])", [a, b])
    assert len(rows) == 2 and len({r["tx"] for r in rows}) == 1  # one transaction for both
    again_b, made_c = await asyncio.gather(ship(b), ship(c))  # a new key for b, which has its shipment
    assert again_b.id == made_b.id and made_c.order_id == c
    assert await pg.fetchval("SELECT count(*) FROM shipments WHERE order_id = ANY($1::text[])", [a, b, c]) == 3
    assert await pg.fetchval("SELECT count(*) FROM outbox WHERE topic = 'shipment.created' AND key = ANY($1::text[])",
                             [a, b, c]) == 3


async def test_the_state_machine_refuses_invalid_transitions_with_409(client, admin):
    from nexus_ray.stores import postgres

    s = (await ship()).id

    async def report(status: str):
        return await client.post(f"{API}/shipments/{s}/events", json={"status": status, "location": "Hub 4"},
                                 headers=admin)

    assert (await report("picked_up")).json()["status"] == "picked_up"
    r = await client.post(f"{API}/shipments/{s}/cancel", headers=admin)  # cancelling after pickup
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
    assert (await report("label_created")).status_code == 409  # backwards
    assert (await report("in_transit")).status_code == 200
    assert (await report("in_transit")).json()["status"] == "in_transit"  # a scan: on the timeline, no change
    assert (await report("exception")).json()["status"] == "exception"
    assert (await report("out_for_delivery")).json()["status"] == "out_for_delivery"  # back into the flow
    assert (await report("delivered")).json()["status"] == "delivered"
    for status in ("in_transit", "delivered", "exception", "cancelled"):
        r = await report(status)
        assert r.status_code == 409, (status, r.text)
    timeline = await client.get(f"{API}/shipments/{s}/events", headers=admin)
    assert [e["status"] for e in timeline.json()] == ["label_created", "picked_up", "in_transit", "in_transit",
                                                      "exception", "out_for_delivery", "delivered"]
    pg = await postgres.pool()
    statuses = await pg.fetch("SELECT payload->>'status' AS s FROM outbox WHERE topic = 'shipment.status' "
                              "AND payload->>'shipment_id' = $1 ORDER BY id", str(s))
    assert [r["s"] for r in statuses] == ["picked_up", "in_transit", "exception", "out_for_delivery", "delivered"]
    # Before pickup, cancelling works and is idempotent.
    other = await ship()
    for _ in range(2):
        cancelled = await call(SERVICE, "cancel_shipment", caller="order-processor", shipment_id=other.id)
        assert cancelled.status == "cancelled"


async def test_the_label_is_a_pdf_whose_barcode_reads_back_as_the_tracking_number(client, admin, bearer):
    shipment = await ship(customer="cust-label")
    owner = bearer("commerce:shipping:read", subject="cust-label")
    r = await client.get(f"{API}/shipments/{shipment.id}/label", headers=owner)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    shown = pdfread.texts(r.content)
    assert shipment.tracking_number in shown and "Ada Lovelace" in shown and "SW1Y 4JH London" in shown
    assert decode_code128(pdfread.barcode_runs(r.content)) == shipment.tracking_number
    assert (await client.get(f"{API}/shipments/{shipment.id}/label", headers=owner)).content == r.content
    other = bearer("commerce:shipping:read", subject="someone-else")
    assert (await client.get(f"{API}/shipments/{shipment.id}/label", headers=other)).status_code == 404
    assert (await client.get(f"{API}/shipments/{shipment.id}", headers=other)).status_code == 404
    mine = await client.get(f"{API}/shipments", headers=owner)
    assert [s["id"] for s in mine.json()["items"]] == [str(shipment.id)]


# -- events ---------------------------------------------------------------------------------------------------------


async def test_delivery_status_events_from_logistics_move_the_shipment_and_its_public_tracking(client, until):
    shipment = await ship()
    start = datetime.now(UTC)
    sent = []
    for i, status in enumerate(("created", "assigned", "picked_up", "in_transit", "delivered")):
        at = (start + timedelta(minutes=i + 1)).isoformat()
        sent.append(await emit_event("delivery.status", {"delivery_id": str(uuid.uuid4()),
                                                         "shipment_id": str(shipment.id), "status": status, "at": at}))

    async def tracked() -> dict | None:
        r = await client.get(f"{API}/tracking/{shipment.tracking_number}")  # public: no credentials
        return r.json() if r.status_code == 200 and r.json()["status"] == "delivered" else None

    public = await until(tracked)
    assert [e["status"] for e in public["events"]] == ["label_created", "picked_up", "in_transit", "delivered"]
    # Logistics' "created" and "assigned" change nothing here: passed over, with no transaction or record for them.
    from nexus_ray.deployments.commerce.shipping.service import CONSUMER_GROUP
    from nexus_ray.stores import postgres

    recorded = await (await postgres.pool()).fetch(
        "SELECT event_id FROM processed_events WHERE consumer = $1 AND event_id = ANY($2::uuid[])", CONSUMER_GROUP,
        sent)
    assert {r["event_id"] for r in recorded} == set(sent[2:])
    # Nothing personal in the public view.
    assert set(public) == {"tracking_number", "status", "service_level", "destination_country", "events"}
    assert all(set(e) == {"status", "description", "occurred_at"} for e in public["events"])
    assert "Ada" not in str(public) and shipment.order_id not in str(public)
    # A late event the state machine refuses is dropped, not retried forever.
    await emit_event("delivery.status", {"shipment_id": str(shipment.id), "status": "in_transit"})
    marker = await ship()
    # Same key, so same partition: handled after the late event, which has been dealt with once this one is.
    await emit_event("delivery.status", {"shipment_id": str(marker.id), "status": "picked_up"}, key=str(shipment.id))

    async def marker_moved() -> bool:
        r = await client.get(f"{API}/tracking/{marker.tracking_number}")
        return r.json()["status"] == "picked_up"

    await until(marker_moved)
    r = await client.get(f"{API}/tracking/{shipment.tracking_number}")
    assert r.json()["status"] == "delivered" and len(r.json()["events"]) == 4
    assert (await client.get(f"{API}/tracking/NX00000000000000")).status_code == 404


async def test_an_order_paid_event_that_asks_for_shipping_creates_its_shipment_once(client, admin, until):
    from nexus_ray.stores import postgres

    order_id, plain = order(), order()
    await emit_event("order.paid", {"order_id": plain, "customer": "cust-7", "total": 100, "currency": "USD",
                                    "status": "paid"})
    await emit_event("order.paid", {"order_id": order_id, "customer": "cust-7", "total": 4200, "currency": "USD",
                                    "status": "paid", "shipping": {"address": {**ADDRESS, "country": "US"},
                                                                   "weight_g": 800, "service_level": "express"}})
    pg = await postgres.pool()

    async def created():
        return await pg.fetchrow("SELECT id, service_level, zone, owner FROM shipments WHERE order_id = $1", order_id)

    row = await until(created)
    assert (row["service_level"], row["zone"], row["owner"]) == ("express", "domestic", "cust-7")
    assert await pg.fetchval("SELECT count(*) FROM shipments WHERE order_id = $1", plain) == 0
    # The saga's own request for the order finds the same shipment.
    assert (await ship(order_id)).id == row["id"]


async def test_an_order_cancelled_event_cancels_its_shipment_before_pickup_only(client, admin, until):
    waiting, moving = await ship(), await ship()
    r = await client.post(f"{API}/shipments/{moving.id}/events", json={"status": "picked_up"}, headers=admin)
    assert r.status_code == 200
    for s in (moving, waiting):  # the same key: one partition, handled in this order
        await emit_event("order.cancelled", {"order_id": s.order_id, "customer": "cust-ship", "total": 1,
                                             "currency": "USD", "status": "cancelled"}, key="cancel-test")

    async def cancelled() -> bool:
        r = await client.get(f"{API}/shipments/{waiting.id}", headers=admin)
        return r.json()["status"] == "cancelled"

    await until(cancelled)
    assert (await client.get(f"{API}/shipments/{moving.id}", headers=admin)).json()["status"] == "picked_up"
