"""CORS at the edge: allowed origins get the headers, others none; off when no origin is configured."""

import httpx
import pytest

from nexus_ray.config import get_settings
from nexus_ray.deployments.app import build_app


@pytest.fixture
def cors_app(monkeypatch):
    monkeypatch.setattr(get_settings(), "cors_origins", ["https://app.example"])
    return build_app("platform")


async def _preflight(app, origin: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nexus.test") as c:
        return await c.options(
            "/v1/gateway/notice",
            headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"},
        )


async def test_allowed_origin_preflight(cors_app):
    r = await _preflight(cors_app, "https://app.example")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


async def test_other_origin_refused(cors_app):
    r = await _preflight(cors_app, "https://evil.example")
    assert "access-control-allow-origin" not in r.headers


async def test_no_cors_without_configured_origins(monkeypatch):
    monkeypatch.setattr(get_settings(), "cors_origins", [])
    r = await _preflight(build_app("platform"), "https://app.example")
    assert "access-control-allow-origin" not in r.headers
