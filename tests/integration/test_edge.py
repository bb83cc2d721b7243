"""The edge on every route of every service, in-process on the real stores.

The authorization sweep walks the whole route table (derived from the catalog), so
every route a service adds is covered the day it is added.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from nexus_ray.config import get_settings
from nexus_ray.deployments.specialized import keys
from nexus_ray.edge import apikeys, tokens
from nexus_ray.edge.security import api_routes, authorize, check_route_security, public, route_guard

pytestmark = pytest.mark.integration


def _route_table(apps):
    """(namespace, method, concrete path, guard) of every API route of every namespace app."""
    table = []
    for ns, app in apps.items():
        for r in api_routes(app.routes):
            path = r.path
            for p in r.dependant.path_params:
                path = path.replace("{" + p.name + "}", "x1")
            for method in sorted(r.methods - {"HEAD"}):
                table.append((ns, method, f"/{ns}{path}", route_guard(r)))
    return table


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def _bad_tokens() -> dict[str, str]:
    s = get_settings()
    key = await keys.current_signer("ES256")
    now = int(time.time())
    base = {"iss": s.jwt_issuer, "aud": s.jwt_audience, "sub": "u1", "scope": "*", "iat": now, "exp": now + 60}
    good = tokens.issue("u1", ["*"])
    head, body, sig = good.split(".")
    return {
        "bad signature": f"{head}.{body}.{sig[:-6]}AAAAAA",
        "expired": jwt.encode({**base, "exp": now - 300}, key.private_key, algorithm="ES256",
                              headers={"kid": key.kid}),
        "alg none": _b64({"alg": "none"}) + "." + _b64(base) + ".",
        "wrong audience": jwt.encode({**base, "aud": "elsewhere"}, key.private_key, algorithm="ES256",
                                     headers={"kid": key.kid}),
        "garbage": "abc.def",
    }


async def test_every_route_is_guarded_or_explicitly_public(apps):
    table = _route_table(apps)
    assert len(table) > 9 * 2
    assert all(guard is not None for *_x, guard in table)


async def test_unguarded_route_refused_at_build():
    router = APIRouter()

    @router.get("/open")
    async def open_route():
        return {}

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(RuntimeError, match="without authorize"):
        check_route_security(app.routes)


async def test_authorization_sweep(client, apps, bearer):
    """No token, bad signature, expired, alg none, wrong audience, wrong scope: 401/403 everywhere."""
    bad = await _bad_tokens()
    checked = 0
    for _ns, method, path, guard in _route_table(apps):
        if guard[0] == "public":
            continue
        scopes = guard[1]
        r = await client.request(method, path)
        assert r.status_code == 401, (path, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["www-authenticate"] == "Bearer"
        for name, t in bad.items():
            r = await client.request(method, path, headers={"Authorization": f"Bearer {t}"})
            assert r.status_code == 401, (path, name, r.status_code)
        r = await client.request(method, path, headers={"X-API-Key": "nxk_deadbeef_notarealkeynotarealkey00"})
        assert r.status_code == 401, (path, "unknown api key")
        r = await client.request(method, path, headers=bearer("nothing:useful"))
        assert r.status_code == 403, (path, r.status_code)
        assert r.json()["required_scopes"] == list(scopes)
        checked += 1
    assert checked >= 1


async def test_directory_lists_all_44_services_ready(client, bearer):
    r = await client.get("/platform/v1/gateway/services", headers=bearer("platform:gateway:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 44
    assert body["ready"] == 44, [s for s in body["services"] if not s["ready"]]
    assert r.headers["x-request-id"]


async def test_health_of_every_service(client):
    from nexus_ray.catalog import SERVICES

    for s in SERVICES:
        for v in s.versions:
            live = await client.get(f"{s.path(v)}/health/live")
            assert live.status_code == 200, s.name
            ready = await client.get(f"{s.path(v)}/health/ready")
            assert ready.status_code == 200 and ready.json()["ready"], (s.name, ready.text)


async def test_api_key_scopes(client, migrated):
    _kid, key = await apikeys.create(principal="svc-reporting", name="t", scopes=["platform:gateway:read"])
    r = await client.get("/platform/v1/gateway/services", headers={"X-API-Key": key})
    assert r.status_code == 200
    _kid2, narrow = await apikeys.create(principal="svc-other", name="t", scopes=["commerce:orders:read"])
    r = await client.get("/platform/v1/gateway/services", headers={"X-API-Key": narrow})
    assert r.status_code == 403
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    r = await client.get("/platform/v1/gateway/services", headers={"X-API-Key": forged})
    assert r.status_code == 401
    assert await apikeys.revoke(key_id=_kid2)
    apikeys._cache.clear()
    r = await client.get("/platform/v1/gateway/services", headers={"X-API-Key": narrow})
    assert r.status_code == 401


async def test_unknown_version_and_route_are_problems(client, bearer):
    r = await client.get("/platform/v3/gateway/services", headers=bearer("*"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert "v3" in r.json()["detail"] and r.json()["supported_versions"] == ["v1", "v2"]
    r = await client.get("/platform/v1/no-such-service/x")
    assert r.status_code == 404 and r.json()["status"] == 404


async def test_request_id_propagates(client):
    r = await client.get("/platform/health/live", headers={"X-Request-ID": "trace-abc.1"})
    assert r.headers["x-request-id"] == "trace-abc.1"
    r = await client.get("/platform/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32


class _Item(BaseModel):
    sku: str = Field(min_length=3)
    qty: int = Field(gt=0)


class _Order(BaseModel):
    items: list[_Item]


@pytest.fixture(scope="module")
async def probe_client(migrated):
    """A small app on the real edge (same middleware, errors and guards) with a body-taking route."""
    import httpx

    from nexus_ray.edge import errors
    from nexus_ray.edge.middleware import EdgeMiddleware

    app = FastAPI()
    errors.install(app)

    @app.post("/v1/probe/orders", dependencies=[authorize("probe:orders:write")], status_code=201)
    async def create(order: _Order):
        return {"n": len(order.items)}

    @app.get("/v1/probe/limited", dependencies=[public()])
    async def limited():
        return {"ok": True}

    check_route_security(app.routes)
    app.add_middleware(EdgeMiddleware, namespace="probe", max_body_bytes=2048)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as c:
        yield c


async def test_validation_error_names_the_field(probe_client, bearer):
    h = bearer("probe:orders:write")
    r = await probe_client.post("/v1/probe/orders", json={"items": [{"sku": "abc", "qty": 0}]}, headers=h)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in r.json()["errors"]]
    assert fields == ["items[0].qty"]
    r = await probe_client.post(
        "/v1/probe/orders", content=b"{not json", headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    r = await probe_client.post("/v1/probe/orders", json={"items": [{"sku": "abcd", "qty": 2}]}, headers=h)
    assert r.status_code == 201 and r.json() == {"n": 1}


async def test_body_limit(probe_client, bearer):
    h = bearer("probe:orders:write")
    big = {"items": [{"sku": "x" * 100, "qty": 1}] * 40}
    r = await probe_client.post("/v1/probe/orders", json=big, headers=h)
    assert r.status_code == 413
    assert r.json()["max_bytes"] == 2048


async def test_rate_limit_per_principal_and_address(probe_client, bearer, monkeypatch):
    from nexus_ray.stores.cache import redis_client

    s = get_settings()
    monkeypatch.setattr(s, "rate_limit_per_address", 5)
    await redis_client().delete(*[k async for k in redis_client().scan_iter("nexus:rl:address:198.51.100.9:*")])
    codes = [(await probe_client.get("/v1/probe/limited")).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    r = await probe_client.get("/v1/probe/limited")
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 61
    assert r.json()["limit_scope"] == "address"
    monkeypatch.setattr(s, "rate_limit_per_address", 100000)
    monkeypatch.setattr(s, "rate_limit_per_principal", 3)
    h = bearer("probe:orders:write", subject="greedy-user")
    body = {"items": [{"sku": "abcd", "qty": 1}]}
    codes = [(await probe_client.post("/v1/probe/orders", json=body, headers=h)).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]
    other = bearer("probe:orders:write", subject="patient-user")
    assert (await probe_client.post("/v1/probe/orders", json=body, headers=other)).status_code == 201


async def test_metrics_label_full_route_templates(apps):
    from nexus_ray.edge.middleware import EdgeMiddleware

    app = apps["platform"]
    stack = app.middleware_stack or app.build_middleware_stack()
    edge = stack
    while not isinstance(edge, EdgeMiddleware):
        edge = edge.app
    assert "/v1/gateway/notice" in edge.templates.values()
    assert "/v1/sessions/health/ready" in edge.templates.values()
