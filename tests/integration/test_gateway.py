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
