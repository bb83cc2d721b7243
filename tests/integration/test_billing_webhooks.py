"""billing-service's webhooks against a real HTTP receiver on a local port: signed deliveries that the
receiver verifies, retried with backoff after a 500 and a timeout until delivered, given up after the most
attempts, every attempt recorded; endpoints belong to their merchant; the secret is shown once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest

from nexus_ray.runtime.embedded import free_port

pytestmark = pytest.mark.integration

API = "/commerce/v1/billing"
RW = ("commerce:billing:read", "commerce:billing:write")


class Receiver:
    """A minimal HTTP/1.1 server: answers each request with the next scripted status (or no answer at all)."""

    def __init__(self, script: list[int | None]) -> None:
        self.script = script  # None: never answer (the sender times out); past the end: 200
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self._hung: list[asyncio.Future[None]] = []

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks"

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for f in self._hung:
            f.cancel()
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            n = len(self.requests)
            self.requests.append((headers, body))
            status = self.script[n] if n < len(self.script) else 200
            if status is None:
                hung: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._hung.append(hung)
                with contextlib.suppress(asyncio.CancelledError):
                    await hung
                return
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()


async def _endpoint(client, headers, url, events, k=None):
    h = {**headers, **({"Idempotency-Key": k} if k else {})}
    r = await client.post(f"{API}/webhook_endpoints", json={"url": url, "events": events}, headers=h)
    assert r.status_code == 201, r.text
    return r


async def _paid(client, headers, amount=2_000):
    r = await client.post(f"{API}/payment_intents", json={"amount": amount, "currency": "USD",
                                                          "payment_method": "pm_card_visa"},
                          headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = await client.post(f"{API}/payment_intents/{pid}/capture",
                          headers={**headers, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 200, r.text
    return pid


async def _deliveries(client, headers, endpoint_id):
    r = await client.get(f"{API}/webhook_endpoints/{endpoint_id}/deliveries", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_a_delivery_is_retried_after_a_500_and_a_timeout_then_delivered_signed(
        client, bearer, until):
    from nexus_ray.deployments.commerce.billing import verify_signature

    shop = bearer(*RW, subject="hook-shop")
    async with Receiver([500, None]) as receiver:
        created = (await _endpoint(client, shop, receiver.url, ["payment_intent.succeeded", "charge.refunded"])).json()
        secret = created["secret"]
        assert secret.startswith("whsec_")
        shown = (await client.get(f"{API}/webhook_endpoints/{created['id']}", headers=shop)).json()
        assert "secret" not in shown and shown["url"] == receiver.url

        pid = await _paid(client, shop)

        async def delivered():
            items = await _deliveries(client, shop, created["id"])
            return items if items and all(d["status"] == "delivered" for d in items) else None

        (delivery,) = await until(delivered, within_s=20)
        assert delivery["event_type"] == "payment_intent.succeeded" and delivery["attempts"] == 3
        history = delivery["history"]
        assert [(a["attempt"], a["status_code"], a["error"]) for a in history] == [
            (1, 500, "HTTP 500"), (2, None, "timeout"), (3, 200, None)]
        assert len(receiver.requests) == 3
        bodies = {body for _, body in receiver.requests}
        assert len(bodies) == 1  # the same event each time; receivers deduplicate by its id
        headers, body = receiver.requests[-1]
        assert verify_signature(body, headers["nexus-signature"], secret, 300) > 0
        event = json.loads(body)
        assert event["type"] == "payment_intent.succeeded" and event["data"]["object"]["id"] == pid
        assert event["id"] == delivery["event_id"]

        # Only the types the endpoint asked for: the refund arrives as charge.refunded, the authorisation never.
        r = await client.post(f"{API}/payment_intents/{pid}/refunds", json={"amount": 500},
                              headers={**shop, "Idempotency-Key": uuid.uuid4().hex})
        assert r.status_code == 201

        async def refunded():
            items = await _deliveries(client, shop, created["id"])
            done = [d for d in items if d["event_type"] == "charge.refunded" and d["status"] == "delivered"]
            return done or None

        (refund_delivery,) = await until(refunded, within_s=20)
        assert refund_delivery["attempts"] == 1
        types = sorted(d["event_type"] for d in await _deliveries(client, shop, created["id"]))
        assert types == ["charge.refunded", "payment_intent.succeeded"]
        headers, body = receiver.requests[-1]
        assert json.loads(body)["data"]["object"]["amount"] == 500
        verify_signature(body, headers["nexus-signature"], secret, 300)


async def test_a_delivery_that_keeps_failing_is_given_up_after_the_most_attempts(client, bearer, until):
    shop = bearer(*RW, subject="hook-shop-down")
    dead = f"http://127.0.0.1:{free_port()}/hooks"  # a port nothing listens on: every attempt is refused
    endpoint = (await _endpoint(client, shop, dead, ["*"])).json()
    await _paid(client, shop, amount=300)

    async def given_up():
        items = await _deliveries(client, shop, endpoint["id"])
        return items if len(items) == 3 and all(d["status"] == "failed" for d in items) else None

    items = await until(given_up, within_s=20)  # created, authorized, succeeded
    for d in items:
        assert d["attempts"] == 3 and [a["status_code"] for a in d["history"]] == [None, None, None]
        assert all(a["error"] for a in d["history"])


async def test_endpoints_belong_to_their_merchant_and_a_replayed_creation_hides_the_secret(client, bearer):
    alice = bearer(*RW, subject="hook-alice")
    bob = bearer(*RW, subject="hook-bob")
    k = uuid.uuid4().hex
    first = await _endpoint(client, alice, "https://example.test/a", ["*"], k=k)
    again = await _endpoint(client, alice, "https://example.test/a", ["*"], k=k)
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert "secret" in first.json() and "secret" not in again.json()  # shown once, never stored in clear
    eid = first.json()["id"]
    for path in (f"{API}/webhook_endpoints/{eid}", f"{API}/webhook_endpoints/{eid}/deliveries"):
        assert (await client.get(path, headers=bob)).status_code == 404
    assert (await client.delete(f"{API}/webhook_endpoints/{eid}", headers=bob)).status_code == 404
    listed = (await client.get(f"{API}/webhook_endpoints", headers=bob)).json()["items"]
    assert eid not in {e["id"] for e in listed}
    # Bob's payments are not delivered to Alice's endpoint.
    await _paid(client, bob, amount=100)
    assert await _deliveries(client, alice, eid) == []
    assert (await client.delete(f"{API}/webhook_endpoints/{eid}", headers=alice)).status_code == 204
    assert (await client.get(f"{API}/webhook_endpoints/{eid}", headers=alice)).status_code == 404
    r = await client.post(f"{API}/webhook_endpoints", json={"url": "ftp://x.test", "events": ["*"]}, headers=alice)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "url"
    r = await client.post(f"{API}/webhook_endpoints", json={"url": "https://x.test", "events": ["order.paid"]},
                          headers=alice)
    assert r.status_code == 422 and r.json()["errors"][0]["field"].startswith("events")
