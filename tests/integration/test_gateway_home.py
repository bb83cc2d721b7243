"""backend-api's home view on the in-process platform: every source asked at once, each one marked.

A source with a ``home_summary`` export answers (chat-service's from the document store; order-processor's,
puabo-nexus's and notification-service's from PostgreSQL); a service without one is ``absent``; a source
past the deadline is ``timeout``. None of it
is a 5xx, and ``partial`` says whether anything is missing.
"""

from __future__ import annotations

import uuid

import pytest

from nexus_ray.deployments.platform.gateway import home
from nexus_ray.stores.documents import database

pytestmark = pytest.mark.integration

HOME = "/platform/v1/gateway/home"


@pytest.fixture
async def user_with_a_room(migrated):
    """A user who is a member of one chat room (its document, as the room entity mirrors it)."""
    user_id, room_id = f"home-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    rooms = database()["chat_rooms"]
    await rooms.insert_one({"_id": room_id, "name": "Lobby", "created_by": user_id, "members": [user_id]})
    yield user_id, room_id
    await rooms.delete_one({"_id": room_id})


async def test_home_gathers_each_source_and_marks_the_rest(client, bearer, user_with_a_room):
    user_id, room_id = user_with_a_room
    r = await client.get(HOME, headers=bearer("platform:gateway:read", subject=user_id))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user_id and set(body["sources"]) == set(home.SOURCES)
    chat = body["sources"]["chat"]
    assert chat["status"] == "ok" and chat["data"] == {"rooms": [{"room_id": room_id, "name": "Lobby"}], "count": 1}
    statuses = {s["status"] for s in body["sources"].values()}
    assert statuses <= {"ok", "timeout", "unavailable", "absent"}
    assert body["partial"] is (statuses != {"ok"})
    for source in body["sources"].values():
        assert (source["data"] is not None) is (source["status"] == "ok")

    # Someone else's home holds none of this user's rooms; no credential, no home.
    other = (await client.get(HOME, headers=bearer("platform:gateway:read", subject="someone-else"))).json()
    assert other["sources"]["chat"]["data"] == {"rooms": [], "count": 0}
    assert (await client.get(HOME)).status_code == 401


async def test_absent_and_slow_sources_are_marked_not_fatal(migrated, user_with_a_room):
    user_id, _ = user_with_a_room
    # session-mgr exports no home_summary: absent; chat answers.
    view = await home.home(user_id=user_id, sources={"chat": "chat-service", "sessions": "session-mgr"})
    assert (view.sources["chat"].status, view.sources["sessions"].status) == ("ok", "absent")
    assert view.partial is True and view.sources["sessions"].data is None
    only_chat = await home.home(user_id=user_id, sources={"chat": "chat-service"})
    assert only_chat.partial is False

    # A deadline no store round trip can meet: the source is marked timeout, the view still answers.
    late = await home.home(user_id=user_id, sources={"chat": "chat-service"}, deadline_s=1e-6)
    assert late.sources["chat"].status == "timeout" and late.partial is True and late.deadline_ms == 0


async def test_orders_deliveries_and_notifications_fill_the_home(client, bearer):
    """A user who placed an order (declined: it ends failed), sent a delivery and got a message sees each in
    their home, newest first, with the counts; another user's home has none of it."""
    user_id = f"home-{uuid.uuid4().hex[:10]}"
    shopper = bearer("commerce:order-processor:read", "commerce:order-processor:write",
                     "logistics:deliveries:read", "logistics:deliveries:write", subject=user_id)
    order = {"lines": [{"sku": f"NO-SUCH-{uuid.uuid4().hex[:8]}", "quantity": 1}], "currency": "EUR",
             "payment_method": "pm_card_visa_chargeDeclined",
             "shipping_address": {"name": "Ada", "line1": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115",
                                  "country": "DE"}}
    r = await client.post("/commerce/v1/order-processor/orders", json=order,
                          headers={**shopper, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 422 and r.json()["order_status"] == "failed", r.text  # the catalog sells no such SKU
    order_id = r.json()["order_id"]
    r = await client.post("/logistics/v1/deliveries/deliveries", headers=shopper, json={
        "pickup": {"lat": 52.5, "lon": 13.4}, "dropoff": {"lat": 52.52, "lon": 13.41, "address": "Mitte 1"},
        "weight_kg": 1.0, "driver_fee": 500, "currency": "EUR"})
    assert r.status_code == 201, r.text
    delivery_id = r.json()["id"]
    notif_admin = bearer("platform:notifications:*", subject="home-test")
    r = await client.put(f"/platform/v1/notifications/users/{user_id}/preferences", headers=notif_admin,
                         json={"email": f"{user_id}@shop.test"})
    assert r.status_code == 200, r.text
    r = await client.post("/platform/v1/notifications/messages", headers=notif_admin, json={
        "client_message_id": f"hello-{user_id}", "channel": "email", "user_id": user_id,
        "data": {"subject": "Hello", "text": "hi"}})
    assert r.status_code == 201, r.text
    message_id = r.json()["id"]

    body = (await client.get(HOME, headers=bearer("platform:gateway:read", subject=user_id))).json()
    orders, deliveries = body["sources"]["orders"], body["sources"]["deliveries"]
    assert orders["status"] == "ok", orders
    assert orders["data"]["count"] == 1 and [o["order_id"] for o in orders["data"]["latest"]] == [order_id]
    assert orders["data"]["open"] == 0 and orders["data"]["latest"][0]["status"] == "failed"
    assert deliveries["status"] == "ok", deliveries
    assert deliveries["data"]["count"] == 1 and deliveries["data"]["active"] == 1
    assert [d["delivery_id"] for d in deliveries["data"]["latest"]] == [delivery_id]
    notifications = body["sources"]["notifications"]
    assert notifications["status"] == "ok", notifications
    assert notifications["data"]["last_30_days"] >= 1  # the order's own e-mails may have been queued too
    assert message_id in [m["message_id"] for m in notifications["data"]["latest"]]

    other = (await client.get(HOME, headers=bearer("platform:gateway:read", subject="someone-else"))).json()
    assert other["sources"]["notifications"]["data"] == {"last_30_days": 0, "latest": []}
    assert other["sources"]["orders"]["data"] == {"count": 0, "open": 0, "latest": []}
    assert other["sources"]["deliveries"]["data"] == {"count": 0, "active": 0, "latest": []}
