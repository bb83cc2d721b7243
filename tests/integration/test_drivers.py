"""driver-app-backend on the in-process platform (served by uvicorn for its socket), real stores, no Ray:
offers pushed to the driver's socket and answered there or over HTTP, pending offers on connect, withdrawals,
and a driver seeing only their own things. (Locations reaching the fleet need the fleet's actor: e2e.)"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from websockets.asyncio.client import connect

from nexus_ray.deployments.kit.calls import call

pytestmark = pytest.mark.integration

API = "/logistics/v1/drivers"
LIVE = f"{API}/drivers/me/live"
SCOPES = ("logistics:drivers:read", "logistics:drivers:write")
SERVICE = "puabo-nexus-driver-app-backend"


@pytest.fixture
async def driver(client, bearer):
    OPS = bearer("logistics:drivers:*", "logistics:fleet:*", subject="fleet-ops")
    r = await client.post("/logistics/v1/fleet/fleets", headers=OPS, json={"fleet_id": "berlin", "name": "Berlin"})
    assert r.status_code in (201, 409), r.text  # the operator's fleet, created by the first test that needs it

    """``await driver()``: a registered driver on shift; returns (driver id, headers, raw token)."""

    async def make(*, shift: bool = True) -> tuple[str, dict[str, str], str]:
        subject = f"driver-{uuid.uuid4().hex[:8]}"
        headers = bearer(*SCOPES, subject=subject)
        r = await client.post(f"{API}/drivers", headers=OPS, json={  # the fleet's operator registers its drivers
            "user_id": subject, "name": "Ada", "fleet_id": "berlin", "vehicle_id": f"van-{uuid.uuid4().hex[:6]}",
            "vehicle_type": "van", "capacity_kg": 800})
        assert r.status_code == 201, r.text
        driver_id = r.json()["id"]
        if shift:
            r = await client.post(f"{API}/drivers/{driver_id}/shifts", headers=headers, json={"hours": 4})
            assert r.status_code == 201, r.text
        return driver_id, headers, headers["Authorization"].split()[1]

    return make


async def offer(driver_id: str, *, job_id: str | None = None) -> str:
    offer_id = f"offer-{uuid.uuid4().hex[:10]}"
    made = await call(SERVICE, "offer_job", driver_id=driver_id, offer_id=offer_id,
                      job={"job_id": job_id or f"job-{uuid.uuid4().hex[:8]}", "pickup": {"lat": 52.5, "lon": 13.4}},
                      expires_at=datetime.now(UTC) + timedelta(minutes=5))
    assert made.id == offer_id and made.status == "pending"
    return offer_id


async def next_of(ws, kind: str) -> dict:
    """The next message of type ``kind`` (skipping others)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] == kind:
            return message


async def ready(ws) -> None:
    """A ping answered: the server is past its subscription, so a push now reaches this socket."""
    await ws.send(json.dumps({"type": "ping"}))
    await next_of(ws, "pong")


async def test_an_offer_pushed_to_the_socket_is_accepted_there(client, served, driver):
    driver_id, headers, token = await driver()
    async with connect(served + LIVE, subprotocols=["nexus.bearer", token]) as ws:
        await ready(ws)
        offer_id = await offer(driver_id, job_id="job-accept-1")
        pushed = await next_of(ws, "offer")
        assert pushed["offer"]["id"] == offer_id and pushed["offer"]["job"]["job_id"] == "job-accept-1"

        await ws.send(json.dumps({"type": "accept", "offer_id": offer_id}))
        answered = await next_of(ws, "offer.answered")
        assert answered["offer"]["status"] == "accepted"

        # Busy now: dispatch no longer sees the driver, and a second acceptance is refused on the socket.
        me = (await client.get(f"{API}/drivers/{driver_id}", headers=headers)).json()
        assert me["busy_job"] == "job-accept-1"
        second = await offer(driver_id)
        await next_of(ws, "offer")
        await ws.send(json.dumps({"type": "accept", "offer_id": second}))
        refused = await next_of(ws, "error")
        assert refused["status"] == 409 and refused["ref"] == second

        await ws.send(json.dumps({"type": "accept"}))  # no offer_id: a 422 message, the socket stays open
        assert (await next_of(ws, "error"))["status"] == 422
        await ready(ws)


async def test_pending_offers_on_connect_withdrawal_and_http_answers(client, served, driver):
    driver_id, headers, token = await driver()
    waiting, other = await offer(driver_id), await offer(driver_id)
    async with connect(served + LIVE, subprotocols=["nexus.bearer", token]) as ws:
        got = {(await next_of(ws, "offer"))["offer"]["id"], (await next_of(ws, "offer"))["offer"]["id"]}
        assert got == {waiting, other}
        await call(SERVICE, "withdraw_offer", offer_id=waiting)
        assert (await next_of(ws, "offer.withdrawn"))["offer_id"] == waiting

    # The HTTP fallback: list, reject (idempotent), and no other answer afterwards.
    r = await client.get(f"{API}/drivers/{driver_id}/offers", params={"pending": "true"}, headers=headers)
    assert [o["id"] for o in r.json()["items"]] == [other]
    reject = f"{API}/drivers/{driver_id}/offers/{other}/reject"
    r = await client.post(reject, json={"reason": "too far"}, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["reason"] == "too far"
    assert (await client.post(reject, json={}, headers=headers)).json()["status"] == "rejected"
    r = await client.post(f"{API}/drivers/{driver_id}/offers/{other}/accept", headers=headers)
    assert r.status_code == 409
    r = await client.post(f"{API}/drivers/{driver_id}/offers/{waiting}/accept", headers=headers)
    assert r.status_code == 409 and "withdrawn" in r.json()["detail"]


async def test_a_driver_sees_and_answers_only_their_own_offers(client, served, driver):
    a_id, a_headers, _ = await driver()
    b_id, b_headers, b_token = await driver()
    a_offer = await offer(a_id)
    # Nor can a driver enrol in a fleet that is not theirs (the operator's "berlin" fleet here).
    r = await client.post(f"{API}/drivers", headers=b_headers, json={
        "name": "Eve", "fleet_id": "berlin", "vehicle_id": "van-x", "vehicle_type": "van"})
    assert r.status_code == 404
    assert (await client.get(f"{API}/drivers/{a_id}/offers", headers=b_headers)).status_code == 404
    assert (await client.get(f"{API}/drivers/{a_id}", headers=b_headers)).status_code == 404
    assert (await client.post(f"{API}/drivers/{a_id}/offers/{a_offer}/accept", headers=b_headers)).status_code == 404
    assert (await client.post(f"{API}/drivers/{b_id}/offers/{a_offer}/accept", headers=b_headers)).status_code == 404
    async with connect(served + LIVE, subprotocols=["nexus.bearer", b_token]) as ws:
        await ready(ws)  # B's socket got no offer of A's: the pong came first
        await ws.send(json.dumps({"type": "accept", "offer_id": a_offer}))
        assert (await next_of(ws, "error"))["status"] == 404
    mine = (await client.get(f"{API}/drivers/{a_id}/offers", headers=a_headers)).json()["items"]
    assert [o["id"] for o in mine] == [a_offer] and mine[0]["status"] == "pending"


async def test_a_shift_is_opened_once_and_not_ended_during_a_job(client, driver):
    driver_id, headers, _ = await driver()
    r = await client.post(f"{API}/drivers/{driver_id}/shifts", headers=headers, json={"hours": 2})
    assert r.status_code == 409
    offer_id = await offer(driver_id, job_id="job-shift-1")
    r = await client.post(f"{API}/drivers/{driver_id}/offers/{offer_id}/accept", headers=headers)
    assert r.status_code == 200
    assert (await client.post(f"{API}/drivers/{driver_id}/shifts/end", headers=headers)).status_code == 409
    earning = await call(SERVICE, "job_finished", driver_id=driver_id, job_id="job-shift-1", amount=750,
                         currency="USD")
    assert earning.amount == 750
    r = await client.post(f"{API}/drivers/{driver_id}/shifts/end", headers=headers)
    assert r.status_code == 200 and r.json()["ended_at"] is not None
    r = await client.get(f"{API}/drivers/{driver_id}/earnings", headers=headers)
    assert [(e["job_id"], e["amount"], e["currency"]) for e in r.json()["items"]] == [("job-shift-1", 750, "USD")]


async def test_an_earning_is_posted_once_to_the_drivers_payable_account(client, driver, monkeypatch):
    from nexus_ray.deployments.kit.settings import settings_of
    from nexus_ray.deployments.logistics.drivers.settings import DriverSettings
    from nexus_ray.stores import postgres

    expense = await call("ledger-mgr", "open_account", caller="tests", owner="platform", name="driver earnings",
                         type="expense", currency="EUR")
    monkeypatch.setattr(settings_of(DriverSettings), "drivers_earnings_debit_account", expense.id)
    driver_id, headers, _ = await driver()
    offer_id = await offer(driver_id, job_id="job-ledger-1")
    r = await client.post(f"{API}/drivers/{driver_id}/offers/{offer_id}/accept", headers=headers)
    assert r.status_code == 200

    earning = await call(SERVICE, "job_finished", driver_id=driver_id, job_id="job-ledger-1", amount=1200,
                         currency="EUR")
    assert earning.entry_id is not None and earning.posted_at is not None
    again = await call(SERVICE, "job_finished", driver_id=driver_id, job_id="job-ledger-1", amount=1200,
                       currency="EUR")
    assert (again.id, again.entry_id) == (earning.id, earning.entry_id)  # one earning, one entry

    accounts = await (await postgres.pool()).fetchval("SELECT payable_accounts FROM drivers WHERE id = $1",
                                                      uuid.UUID(driver_id))
    payable = await call("ledger-mgr", "balance", account_id=accounts["EUR"])
    spent = await call("ledger-mgr", "balance", account_id=expense.id)
    assert (payable.posted, spent.posted) == (1200, 1200)
