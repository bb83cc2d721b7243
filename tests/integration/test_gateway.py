"""backend-api: the platform notice and the OpenAPI index."""

from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.integration

URL = "/platform/v1/gateway/notice"


async def test_notice_set_read_clear(client, bearer):
    admin = bearer("platform:gateway:admin", subject="ops-1")
    reader = bearer("platform:gateway:read")
    r = await client.put(URL, json={"message": "maintenance at 02:00", "severity": "warning"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["set_by"] == "ops-1"
    got = (await client.get(URL, headers=reader)).json()["notice"]
    assert got["message"] == "maintenance at 02:00" and got["severity"] == "warning"
    assert (await client.put(URL, json={"message": "x"}, headers=reader)).status_code == 403
    assert (await client.delete(URL, headers=admin)).status_code == 204
    assert (await client.get(URL, headers=reader)).json() == {"notice": None}


async def test_notice_expires_with_until(client, bearer):
    from nexus_ray.stores.cache import redis_client

    admin = bearer("platform:gateway:admin")
    until = (datetime.now(UTC) + timedelta(seconds=120)).isoformat()
    assert (await client.put(URL, json={"message": "soon", "until": until}, headers=admin)).status_code == 200
    ttl = await redis_client().ttl("nexus:platform:notice")
    assert 100 <= ttl <= 120


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": ""}, "message"),
        ({"message": "x" * 501}, "message"),
        ({"message": "ok", "severity": "apocalyptic"}, "severity"),
        ({"message": "ok", "until": "2001-01-01T00:00:00Z"}, "until"),
        ({}, "message"),
    ],
)
async def test_notice_bad_input_names_the_field(client, bearer, body, field):
    r = await client.put(URL, json=body, headers=bearer("platform:gateway:admin"))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]


async def test_openapi_index_is_public_and_complete(client):
    r = await client.get("/platform/v1/gateway/openapi")
    assert r.status_code == 200
    body = r.json()
    assert len(body["namespaces"]) == 9
    assert sum(len(n["services"]) for n in body["namespaces"]) == 44
    doc = await client.get("/commerce/openapi.json")
    assert doc.status_code == 200
    paths = doc.json()["paths"]
    assert "/v1/order-processor/health/ready" in paths


async def test_dead_letters_are_listed_and_replayed_by_an_admin(client, bearer):
    import uuid
    from datetime import UTC, datetime

    from nexus_ray.stores import events

    async def failing(conn, event):
        raise KeyError("customer")

    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = events.EventConsumer(group, ["test.gateway"], failing, max_attempts=1)
    for n in range(3):
        event = events.Event(uuid.uuid4(), "test.gateway", None, {"n": n}, datetime.now(UTC), {})
        assert await consumer.handle(event) == "dead-lettered"

    admin = bearer("platform:gateway:admin", subject="ops-1")
    url = "/platform/v1/gateway/dead-letters"
    assert (await client.get(url, headers=bearer("platform:gateway:read"))).status_code == 403
    seen, cursor = [], None
    while True:
        params = {"consumer": group, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(url, params=params, headers=admin)).json()
        seen += [(d["data"]["n"], d["status"], d["error_type"]) for d in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == [(0, "dead", "KeyError"), (1, "dead", "KeyError"), (2, "dead", "KeyError")]

    first = (await client.get(url, params={"consumer": group, "limit": 1}, headers=admin)).json()["items"][0]
    one = await client.get(f"{url}/{first['id']}", headers=admin)
    assert one.status_code == 200 and one.json()["event_id"] == first["event_id"]
    replayed = await client.post(f"{url}/{first['id']}/replay", headers=admin)
    assert replayed.status_code == 200 and replayed.json()["status"] == "replaying"
    again = await client.post(f"{url}/{first['id']}/replay", headers=admin)
    assert again.json()["status"] == "replaying"  # asking twice is one replay
    missing = await client.get(f"{url}/987654321", headers=admin)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    bad = await client.get(f"{url}/0", headers=admin)
    assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["dead_letter_id"]
