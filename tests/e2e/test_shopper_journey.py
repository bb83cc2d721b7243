"""A shopper's journey through the public entrypoint (HAProxy, the deployed namespaces), HTTP only: register, sign
in, find a product by searching the catalog, order it with an idempotency key, and find the order's stock taken,
its payment captured and posted to the ledger in balanced entries, its invoice issued as a PDF, its shipment
requested, and its events consumed. A declined card gives the stock back and moves no money. And 200 orders at
once for 50 units: exactly 50 are taken, the other 150 are refused with a 409 naming the stock, and sending all
200 again with their keys makes nothing more.

The shopper's and the merchant's every call is HTTP to the deployed platform. What no route shows a shopper (the
consumers' record of the events they processed, which ledger entry a capture posted) is read from the store.
Failures later in the saga and their compensation are shown in process by ``tests/integration/test_order_saga.py``
and ``bench/orders_storm.py``.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests import pdfread

pytestmark = pytest.mark.e2e

USERS = "/auth/v1/users"
AUTH = "/auth/v1/auth"
CATALOG = "/commerce/v1/catalog"
INV = "/commerce/v1/inventory"
ORDERS = "/commerce/v1/order-processor/orders"
BILLING = "/commerce/v1/billing"
LEDGER = "/commerce/v1/ledger"
INVOICES = "/commerce/v1/invoices"
SHIPPING = "/commerce/v1/shipping"
ADDRESS = {"name": "Ada", "line1": "Hauptstr. 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}
#: The consumer groups of the order flow: notifications (order.created, order.paid) and shipping (shipments).
ORDER_FLOW_GROUPS = ("notification-service", "puabo-nexus")


async def sell(c: httpx.AsyncClient, merchant: dict, ops: dict, *, title: str, units: int) -> str:
    """A product of one variant (12.50 EUR, standard rate) with ``units`` in a new warehouse: its SKU."""
    sku = f"SKU-{uuid.uuid4().hex[:10]}"
    product = {"title": title, "description": "Stoneware, 350 ml", "brand": "Acme", "category": "kitchen",
               "attributes": {}, "status": "active",
               "variants": [{"sku": sku, "prices": {"EUR": 1250}, "tax_category": "standard", "weight_g": 300}]}
    r = await c.post(f"{CATALOG}/products", json=product, headers=merchant)
    assert r.status_code == 201, r.text
    wid = f"wh-{uuid.uuid4().hex[:8]}"
    r = await c.post(f"{INV}/warehouses", json={"id": wid, "name": wid}, headers=ops)
    assert r.status_code == 201, r.text
    r = await c.post(f"{INV}/stock/restock", json={"sku": sku, "warehouse_id": wid, "quantity": units}, headers=ops)
    assert r.status_code == 200, r.text
    return sku


async def stock(c: httpx.AsyncClient, ops: dict, sku: str) -> dict:
    r = await c.get(f"{INV}/stock", params={"sku": sku}, headers=ops)
    assert r.status_code == 200, r.text
    return r.json()[0]


def body(sku: str, quantity: int = 1, payment_method: str = "pm_card_visa") -> dict:
    return {"lines": [{"sku": sku, "quantity": quantity}], "currency": "EUR", "payment_method": payment_method,
            "shipping_address": ADDRESS}


async def test_a_shopper_registers_signs_in_finds_and_orders_and_every_service_does_its_part(
        platform, bearer, edge_knows, until):
    from nexus_ray.stores import postgres

    await edge_knows(platform, f"{CATALOG}/search", "commerce:catalog:read")  # the commerce replicas
    run = uuid.uuid4().hex[:8]
    merchant = bearer("commerce:catalog:read", "commerce:catalog:write", subject=f"merchant-{run}")
    ops = bearer("commerce:inventory:*", "commerce:billing:*", "commerce:ledger:*", subject=f"ops-{run}")
    word = f"zephyr{run}"  # a word only this product has
    async with httpx.AsyncClient(base_url=platform, timeout=60) as c:
        sku = await sell(c, merchant, ops, title=f"Mug {word}", units=10)

        # Register and sign in: a session, exchanged for an access token with the scopes of a registered person.
        password = f"correct horse {uuid.uuid4().hex}"
        r = await c.post(USERS, json={"username": f"shopper{run}", "email": f"shopper{run}@example.org",
                                      "password": password})
        assert r.status_code == 201, r.text
        user_id = r.json()["user_id"]
        r = await c.post(f"{AUTH}/login", json={"username": f"shopper{run}", "password": password, "device": "web"})
        assert r.status_code == 200, r.text
        r = await c.post(f"{AUTH}/exchange", json={"session_token": r.json()["session_token"]})
        assert r.status_code == 200, r.text
        assert {"commerce:catalog:read", "commerce:order-processor:write"} <= set(r.json()["scope"].split())
        me = {"Authorization": f"Bearer {r.json()['access_token']}"}

        # Search the catalog (each replica's index follows the store's change stream: the product shows up there).
        async def found() -> dict | None:
            r = await c.get(f"{CATALOG}/search", params={"q": word, "currency": "EUR"}, headers=me)
            assert r.status_code == 200, r.text
            return r.json() if r.json()["total"] == 1 else None

        page = await until(found, within_s=30, every=0.2)
        assert page["items"][0]["title"] == f"Mug {word}" and page["items"][0]["price"] == 1250
        assert page["facets"]["brand"] == [{"value": "Acme", "count": 1}], page["facets"]
        r = await c.get(f"{CATALOG}/products/{page['items'][0]['id']}", headers=me)
        assert r.status_code == 200 and r.json()["variants"][0]["sku"] == sku, r.text

        # Order two with an idempotency key; the same request again is the same order, not a second one.
        key = uuid.uuid4().hex
        r = await c.post(ORDERS, json=body(sku, 2), headers={**me, "Idempotency-Key": key})
        assert r.status_code == 201, r.text
        order = r.json()
        assert order["status"] == "completed" and order["customer"] == user_id, order
        assert order["total"] == 2 * 1250 + 475  # DE, standard rate 19 %
        again = await c.post(ORDERS, json=body(sku, 2), headers={**me, "Idempotency-Key": key})
        assert again.status_code == 200 and again.json()["id"] == order["id"], again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        r = await c.get(ORDERS, headers=me)
        assert [o["id"] for o in r.json()["items"]] == [order["id"]]

        # Stock taken for good: two of ten, none held any more.
        s = await stock(c, ops, sku)
        assert (s["on_hand"], s["reserved"], s["available"]) == (8, 0, 8)

        # Payment captured, for the order's total, and posted to the ledger in a balanced entry.
        r = await c.get(f"{BILLING}/payment_intents/{order['payment_intent_id']}", headers=ops)
        assert r.status_code == 200, r.text
        intent = r.json()
        assert (intent["status"], intent["amount_captured"], intent["currency"]) == ("captured", order["total"], "EUR")
        pg = await postgres.pool()

        async def posted() -> list:
            rows = await pg.fetch("SELECT entry_id FROM billing_ledger_postings WHERE payment_intent_id = $1 "
                                  "AND status = 'posted'", uuid.UUID(intent["id"]))
            return rows

        (posting,) = await until(posted, within_s=30)
        r = await c.get(f"{LEDGER}/entries/{posting['entry_id']}", headers=ops)
        assert r.status_code == 200, r.text
        lines = r.json()["lines"]
        debits = sum(x["amount"] for x in lines if x["side"] == "debit")
        credits = sum(x["amount"] for x in lines if x["side"] == "credit")
        assert debits == credits == order["total"] and {x["currency"] for x in lines} == {"EUR"}
        r = await c.get(f"{LEDGER}/reconciliation", headers=ops)
        assert r.status_code == 200 and r.json()["unbalanced_entries"] == [], r.text

        # The invoice, issued to the shopper, as a PDF that states its number and total.
        r = await c.get(f"{INVOICES}/invoices/{order['invoice_id']}", headers=me)
        assert r.status_code == 200, r.text
        invoice = r.json()
        assert invoice["total"] == order["total"]
        r = await c.get(f"{INVOICES}/invoices/{order['invoice_id']}/pdf", headers=me)
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text[:200]
        shown = " ".join(pdfread.texts(r.content))
        assert invoice["display_number"] in shown and "29.75 EUR" in shown, shown

        # The shipment requested, to the order's address, with its label.
        r = await c.get(f"{SHIPPING}/shipments", headers=me)
        assert r.status_code == 200, r.text
        (shipment,) = [s for s in r.json()["items"] if s["id"] == order["shipment_id"]]
        assert shipment["order_id"] == order["id"], shipment
        r = await c.get(f"{SHIPPING}/shipments/{shipment['id']}/label", headers=me)
        assert r.status_code == 200 and r.content.startswith(b"%PDF"), r.text[:200]

        # The order's events consumed by every group of the order flow.
        async def consumed() -> bool:
            n = await pg.fetchval(
                "SELECT count(DISTINCT p.consumer) FROM outbox e JOIN processed_events p ON p.event_id = e.event_id "
                "WHERE (e.key = $1 OR e.payload->>'order_id' = $1) AND p.consumer = ANY($2::text[])",
                order["id"], list(ORDER_FLOW_GROUPS))
            return n == len(ORDER_FLOW_GROUPS)

        await until(consumed, within_s=60, every=0.5)

        # A declined card: the order fails with the decline, the stock comes back, and no money moves.
        r = await c.post(ORDERS, json=body(sku, 1, "pm_card_visa_chargeDeclined"),
                         headers={**me, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 402 and r.json()["code"] == "payment_declined", r.text
        s = await stock(c, ops, sku)
        assert (s["on_hand"], s["reserved"], s["available"]) == (8, 0, 8)
        failed = [o for o in (await c.get(ORDERS, headers=me)).json()["items"] if o["id"] != order["id"]]
        assert [o["status"] for o in failed] == ["failed"], failed
        assert failed[0]["failure"]["problem"]["code"] == "payment_declined", failed
        (declined,) = await pg.fetch("SELECT id FROM billing_payment_intents WHERE metadata->>'order_id' = $1",
                                     failed[0]["id"])
        r = await c.get(f"{BILLING}/payment_intents/{declined['id']}", headers=ops)
        assert r.status_code == 200 and r.json()["amount_captured"] == 0 and r.json()["decline_code"], r.text
        assert await pg.fetchval("SELECT count(*) FROM billing_ledger_postings WHERE payment_intent_id = $1",
                                 declined["id"]) == 0


async def test_200_orders_at_once_for_50_units_take_exactly_50_and_sent_again_make_nothing_more(
        platform, bearer, edge_knows):
    from nexus_ray.stores import postgres

    await edge_knows(platform, f"{CATALOG}/search", "commerce:catalog:read")  # the commerce replicas
    run = uuid.uuid4().hex[:8]
    merchant = bearer("commerce:catalog:read", "commerce:catalog:write", subject=f"merchant-{run}")
    ops = bearer("commerce:inventory:*", subject=f"ops-{run}")
    buyers = [bearer("commerce:order-processor:read", "commerce:order-processor:write", subject=f"buyer-{run}-{i}")
              for i in range(8)]
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=platform, timeout=120, limits=limits) as c:
        sku = await sell(c, merchant, ops, title=f"Last mugs {run}", units=50)
        keys = [uuid.uuid4().hex for _ in range(200)]

        async def place(i: int) -> httpx.Response:
            return await c.post(ORDERS, json=body(sku), headers={**buyers[i % 8], "Idempotency-Key": keys[i]})

        first = await asyncio.gather(*(place(i) for i in range(200)))
        codes = [r.status_code for r in first]
        assert codes.count(201) == 50 and codes.count(409) == 150, sorted(set(codes))
        assert all(r.json()["status"] == "completed" for r in first if r.status_code == 201)
        refused = [r for r in first if r.status_code == 409]
        assert all(r.headers["content-type"] == "application/problem+json" for r in refused)
        assert {r.json()["code"] for r in refused} == {"insufficient_stock"}, refused[0].text
        s = await stock(c, ops, sku)
        assert (s["on_hand"], s["reserved"], s["available"]) == (0, 0, 0)

        pg = await postgres.pool()
        made = await pg.fetch("SELECT id, status FROM orders WHERE idempotency_key = ANY($1::text[])", keys)
        assert len(made) == 200 and sum(o["status"] == "completed" for o in made) == 50

        # Every request again, with its key: the same answers, replayed, and nothing made twice.
        second = await asyncio.gather(*(place(i) for i in range(200)))
        assert [r.status_code for r in second] == [200 if r.status_code == 201 else 409 for r in first]
        assert all(r.headers["Idempotent-Replayed"] == "true" for r in second)
        assert [r.json()["id"] for r in second if r.status_code == 200] == [
            r.json()["id"] for r in first if r.status_code == 201]
        again = await pg.fetch("SELECT id, status FROM orders WHERE idempotency_key = ANY($1::text[])", keys)
        assert sorted(map(tuple, again)) == sorted(map(tuple, made))
        s = await stock(c, ops, sku)
        assert (s["on_hand"], s["reserved"], s["available"]) == (0, 0, 0)
