"""A delivery's life through the public entrypoint (HAProxy, the deployed namespaces), as a shop and a driver app
drive it: a shipment made by shipping becomes a delivery (shipping's ``shipment.created`` event), an operator
hands it to dispatch with the coordinates shipping does not know, the dispatch loop offers it to the one driver
near the pickup, the driver accepts on their socket, sends locations on it (the fleet sees them), picks it up,
delivers it with a signed proof, shipping consumes the delivery's events onto the shipment's timeline, and the
notification service tells the shipment's customer of each move (by e-mail, the address they gave).

Every call is HTTP or WebSocket to the deployed platform; nothing is called in-process. The place is one no
other test uses (Melbourne), so the loop has no other driver within its pickup radius to offer the job to.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect

pytestmark = pytest.mark.e2e

SHIPPING = "/commerce/v1/shipping"
DELIVERIES = "/logistics/v1/deliveries"
DRIVERS = "/logistics/v1/drivers"
DISPATCH = "/logistics/v1/dispatch"
FLEET = "/logistics/v1/fleet"
NOTIFICATIONS = "/platform/v1/notifications"
PICKUP = {"lat": -37.8136, "lon": 144.9631}  # the shop's depot
DROPOFF = {"lat": -37.8300, "lon": 144.9800}
DRIVER_AT = {"lat": -37.8150, "lon": 144.9650}  # a few hundred metres from the pickup
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


async def next_of(ws, kind: str, within_s: float = 60) -> dict:
    """The next socket message of type ``kind`` (others skipped)."""
    async def read() -> dict:
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                return message

    return await asyncio.wait_for(read(), within_s)


async def test_a_delivery_from_shipment_to_proof_through_the_entrypoint(platform, bearer, edge_knows, until):
    await edge_knows(platform)
    run = uuid.uuid4().hex[:8]
    ops = bearer("commerce:shipping:*", "logistics:deliveries:*", "logistics:dispatch:*", "logistics:drivers:*",
                 "logistics:fleet:*", subject=f"ops-{run}")
    subject = f"driver-{run}"
    driver = bearer("logistics:drivers:read", "logistics:drivers:write", "logistics:deliveries:read",
                    "logistics:deliveries:write", subject=subject)
    fleet_id, vehicle_id = f"mel-{run}", f"van-{run}"
    customer = f"cust-{run}"
    shopper = bearer("platform:notifications:read", "platform:notifications:write", subject=customer)

    async with httpx.AsyncClient(base_url=platform, timeout=30) as c:
        # The shop's customer gave an e-mail address for news of their deliveries.
        r = await c.put(f"{NOTIFICATIONS}/users/{customer}/preferences", headers=shopper,
                        json={"email": f"{customer}@example.test", "channels": {"deliveries": ["email"]}})
        assert r.status_code == 200, r.text
        # The fleet's operator registers the driver; the driver starts a shift.
        r = await c.post(f"{FLEET}/fleets", headers=ops, json={"fleet_id": fleet_id, "name": "Melbourne"})
        assert r.status_code == 201, r.text
        r = await c.post(f"{DRIVERS}/drivers", headers=ops, json={
            "user_id": subject, "name": "Mel", "fleet_id": fleet_id, "vehicle_id": vehicle_id,
            "vehicle_type": "van", "capacity_kg": 500})
        assert r.status_code == 201, r.text
        driver_id = r.json()["id"]
        r = await c.post(f"{DRIVERS}/drivers/{driver_id}/shifts", headers=driver, json={"hours": 4})
        assert r.status_code == 201, r.text

        token = driver["Authorization"].split()[1]
        ws_url = platform.replace("http://", "ws://") + f"{DRIVERS}/drivers/me/live"
        async with connect(ws_url, subprotocols=["nexus.bearer", token]) as ws:
            # The driver app reports where it is; the fleet's vehicle follows.
            await ws.send(json.dumps({"type": "location", **DRIVER_AT}))
            assert (await next_of(ws, "location.ack"))["applied"] == 1
            vehicle = (await c.get(f"{FLEET}/fleets/{fleet_id}/vehicles/{vehicle_id}", headers=ops)).json()
            assert (vehicle["lat"], vehicle["lon"], vehicle["driver_id"]) == (DRIVER_AT["lat"], DRIVER_AT["lon"],
                                                                               driver_id)

            # Shipping makes the shipment; logistics makes its delivery from shipping's event.
            order_id = f"ord-{run}"
            r = await c.post(f"{SHIPPING}/shipments", headers={**ops, "Idempotency-Key": f"ship-{run}"}, json={
                "order_id": order_id, "weight_g": 2400, "customer": customer,
                "address": {"name": "Kim", "line1": "1 Flinders St", "city": "Melbourne", "country": "AU"}})
            assert r.status_code == 201, r.text
            shipment = r.json()

            async def made() -> dict | None:
                r = await c.get(f"{DELIVERIES}/deliveries", headers=ops, params={"all": "true", "limit": 100})
                return next((d for d in r.json()["items"] if d["shipment_id"] == shipment["id"]), None)

            delivery = await until(made, within_s=60, every=0.2)
            assert (delivery["status"], delivery["order_id"], delivery["weight_kg"]) == ("created", order_id, 2.4)
            assert delivery["dispatch_state"] == "manual"  # shipping's address has no coordinates to route by

            # The operator hands it to dispatch with the coordinates; the loop offers it to the driver near it.
            r = await c.post(f"{DISPATCH}/jobs", headers=ops, json={
                "job_id": delivery["id"], "pickup": PICKUP, "dropoff": DROPOFF, "weight_kg": 2.4,
                "reference": {"delivery_id": delivery["id"], "shipment_id": shipment["id"]}})
            assert r.status_code == 200, r.text
            offer = (await next_of(ws, "offer"))["offer"]
            assert offer["job"]["job_id"] == delivery["id"]
            await ws.send(json.dumps({"type": "accept", "offer_id": offer["id"]}))
            assert (await next_of(ws, "offer.answered"))["offer"]["status"] == "accepted"

            async def assigned() -> dict | None:
                d = (await c.get(f"{DELIVERIES}/deliveries/{delivery['id']}", headers=driver)).json()
                return d if d["status"] == "assigned" else None

            got = await until(assigned, within_s=60, every=0.2)
            assert got["driver_id"] == driver_id
            job = (await c.get(f"{DISPATCH}/jobs/{delivery['id']}", headers=ops)).json()
            assert job["status"] == "assigned"

            # On the way: locations over the socket, the pickup, the proof, the handover.
            for lat, lon in ((-37.8140, 144.9635), (-37.8200, 144.9700)):
                await ws.send(json.dumps({"type": "location", "lat": lat, "lon": lon}))
                assert (await next_of(ws, "location.ack"))["applied"] == 1
        r = await c.post(f"{DELIVERIES}/deliveries/{delivery['id']}/pickup", headers=driver, json=PICKUP)
        assert r.status_code == 200 and r.json()["status"] == "picked_up", r.text
        r = await c.post(f"{DELIVERIES}/deliveries/{delivery['id']}/deliver", headers=driver, json=DROPOFF)
        assert r.status_code == 409  # not without a proof of delivery
        digest = hashlib.sha256(PNG).hexdigest()
        r = await c.put(f"{DELIVERIES}/deliveries/{delivery['id']}/proof", params={"kind": "signature"},
                        content=PNG, headers={**driver, "Content-Type": "image/png", "X-Checksum-SHA256": digest})
        assert r.status_code == 200 and r.json()["sha256"] == digest, r.text
        r = await c.post(f"{DELIVERIES}/deliveries/{delivery['id']}/deliver", headers=driver, json=DROPOFF)
        assert r.status_code == 200 and r.json()["status"] == "delivered", r.text

        timeline = (await c.get(f"{DELIVERIES}/deliveries/{delivery['id']}/timeline", headers=ops)).json()
        assert [t["status"] for t in timeline] == ["created", "assigned", "picked_up", "delivered"]

        # Shipping consumed the delivery's events: the shipment is delivered, logistics said so.
        async def delivered() -> dict | None:
            s = (await c.get(f"{SHIPPING}/shipments/{shipment['id']}", headers=ops)).json()
            return s if s["status"] == "delivered" else None

        await until(delivered, within_s=60, every=0.2)
        events = (await c.get(f"{SHIPPING}/shipments/{shipment['id']}/events", headers=ops)).json()
        from_logistics = [e["status"] for e in events if e["source"] == "logistics"]
        assert from_logistics == ["picked_up", "delivered"]

        # The customer was told of each move, by e-mail.
        async def told() -> list | None:
            r = await c.get(f"{NOTIFICATIONS}/users/{customer}/messages", headers=shopper, params={"limit": 20})
            assert r.status_code == 200, r.text
            items = [m for m in r.json()["items"] if m["category"] == "deliveries"]
            return items if len(items) == 4 else None

        news = await until(told, within_s=60, every=0.2)
        assert {(m["channel"], m["recipient"]) for m in news} == {("email", f"{customer}@example.test")}
        assert sorted(m["body_text"].split(" is now ")[1].split(".")[0] for m in news) == [
            "assigned", "created", "delivered", "picked_up"]

        # The driver is free again and was paid the delivery's fee for this job.
        async def earned() -> list | None:
            r = await c.get(f"{DRIVERS}/drivers/{driver_id}/earnings", headers=driver)
            return r.json()["items"] or None

        earnings = await until(earned, within_s=60, every=0.2)
        assert [(e["job_id"], e["amount"]) for e in earnings] == [(delivery["id"], delivery["driver_fee"])]
        me = (await c.get(f"{DRIVERS}/drivers/{driver_id}", headers=driver)).json()
        assert me["busy_job"] is None
