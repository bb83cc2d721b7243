"""The edge on every route of every service, in-process on the real stores.

The authorization sweep walks the whole route table (derived from the catalog), so
every route a service adds is covered the day it is added.
"""

from __future__ import annotations

import json

import pytest
import sweep
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from nexus_ray.config import get_settings
from nexus_ray.edge import apikeys
from nexus_ray.edge.security import authorize, check_route_security, public

pytestmark = pytest.mark.integration


async def test_every_route_is_guarded_or_explicitly_public(apps):
    table = sweep.route_table(apps)
    assert len(table) > 9 * 2
    assert all(route.guard is not None for route in table)


async def test_every_operation_declares_its_problems(apps):
    """What the edge can answer is in each OpenAPI document: problem+json with its schema, by guard and input."""
    for ns, app in apps.items():
        doc = app.openapi()
        schemas = doc["components"]["schemas"]
        assert {"ProblemDetails", "ValidationProblem", "FieldError"} <= set(schemas), ns
        assert "HTTPValidationError" not in json.dumps(doc), ns
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                where, responses = (ns, method, path), op["responses"]
                for status, response in responses.items():
                    if status >= "400" and not (path == "/health/ready" and status == "503"):
                        assert list(response["content"]) == ["application/problem+json"], (where, status)
                if "x-required-scopes" in op:
                    assert {"401", "403", "429", "503"} <= set(responses), where
                    assert "WWW-Authenticate" in responses["401"]["headers"], where
                params = {p["in"] for p in op.get("parameters", [])}
                if params or "requestBody" in op:
                    ref = responses["422"]["content"]["application/problem+json"]["schema"]["$ref"]
                    assert ref.endswith("/ValidationProblem"), where
                if "requestBody" in op:
                    assert {"400", "404", "413"} <= set(responses), where
                if "path" in params:
                    assert "404" in responses, where
    login = apps["auth"].openapi()["paths"]["/v1/auth/login"]["post"]["responses"]
    assert {"401", "423", "429"} <= set(login) and "403" in login  # its own declarations, as problems too
    assert "x-required-scopes" not in apps["auth"].openapi()["paths"]["/v1/auth/logout"]["post"]


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
    """No token, bad signature, expired, alg none, wrong audience, wrong scope: 401/403 on every guarded route;
    every public one is on the allowlist. Every operation of the route table is checked, and the table holds
    every operation of every namespace's OpenAPI document."""
    table = sweep.route_table(apps)
    documented = {(m.upper(), f"/{ns}{path}") for ns, app in apps.items()
                  for path, ops in app.openapi()["paths"].items() for m in ops}
    assert documented <= {(r.method, r.public_path) for r in table}
    checked = await sweep.sweep_credentials(client, table, bearer)
    assert checked == len(table)


async def test_a_new_public_route_must_be_listed(client, apps, bearer):
    """The allowlist is what makes a route public in the sweep: one more public() route fails it."""
    table = sweep.route_table(apps)
    extra = sweep.Route("platform", "GET", "/v1/gateway/openapi-extra", ("public", ()), ())
    with pytest.raises(AssertionError, match=r"not on the allowlist.*openapi-extra"):
        await sweep.sweep_credentials(client, [*table[:1], extra], bearer)


async def test_another_users_objects_are_refused(client, apps, bearer):
    """User B, holding every non-administrative scope, on each route that takes an object id of user A: 403/404.

    Known failing on this branch until the services' ownership fixes land: DELETE /auth/v1/auth/sessions/{id}
    and the pv-keys asset and access-key routes (issue 6, "Objects belong to someone", "pv-keys")."""
    table = sweep.route_table(apps)
    result = await sweep.sweep_ownership(client, apps, table, bearer)
    assert result["checked"] == result["routes"] == sum(1 for r in table if r.params) + len(result["by body"])
    assert "POST /specialized/v1/pv-keys/access-keys" in result["by body"]
    # The generic creation found real objects of A for the routes it should (session-mgr needs Ray: not here).
    for route in ("GET /auth/v1/users/{user_id}", "DELETE /auth/v1/auth/sessions/{session_id}",
                  "GET /specialized/v1/pv-keys/assets/{asset_id}",
                  "GET /specialized/v1/pv-keys/access-keys/{key_id}/status",
                  "DELETE /auth/v1/users/{user_id}/api-keys/{key_id}"):
        assert route in result["owned"], (route, result["not created"])
    assert not result["failures"], "\n".join(result["failures"])


async def test_directory_lists_all_44_services_ready(client, bearer):
    r = await client.get("/platform/v1/gateway/services", headers=bearer("platform:gateway:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 44
    assert body["ready"] == 44, [s for s in body["services"] if not s["ready"]]
    assert r.headers["x-request-id"]


async def test_directory_shows_the_routes_each_service_serves(client, bearer):
    """A service that answers only health reads "health only", not "ready" like one that serves its API."""
    from nexus_ray.catalog import service
    from nexus_ray.deployments.health import route_count

    r = await client.get("/platform/v1/gateway/services", headers=bearer("platform:gateway:read"))
    services = {s["name"]: s for s in r.json()["services"]}
    for name in ("auth-service", "auth-service-v2", "user-auth", "backend-api", "key-service"):
        assert services[name]["routes"] > 0 and services[name]["state"] == "ready", services[name]
    health_only = [s for s in services.values() if s["routes"] == 0]
    assert health_only and all(s["state"] == "health only" for s in health_only)
    assert all(s["routes"] == route_count(service(name)) for name, s in services.items())


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
