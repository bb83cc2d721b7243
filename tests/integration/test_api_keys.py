"""API-key verification at the edge under a flood of made-up keys: a bounded cache, bounded look-ups."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from nexus_ray.config import get_settings
from nexus_ray.edge import apikeys

pytestmark = pytest.mark.integration

URL = "/platform/v1/gateway/notice"


def made_up() -> dict[str, str]:
    return {"X-API-Key": f"nxk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"}


@pytest.fixture
def settings(monkeypatch):
    s = get_settings()
    return lambda **values: [monkeypatch.setattr(s, k, v) for k, v in values.items()]


async def test_the_cache_is_bounded_and_remembers_unknown_ids(client, settings):
    """Every made-up key id used to stay in an unbounded dict (and a made-up id cost a query per request)."""
    settings(api_key_cache_size=5)
    apikeys.forget_all()
    _, key = await apikeys.create(principal="svc-cache", name="t", scopes=["platform:gateway:read"])
    assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 200
    unknown = made_up()
    for _ in range(3):
        assert (await client.get(URL, headers=unknown)).status_code == 401
    unknown_id = unknown["X-API-Key"].split("_")[1]
    assert apikeys._cache[unknown_id][1] is None  # remembered as unknown: no query until it expires
    for _ in range(20):
        assert (await client.get(URL, headers=made_up())).status_code == 401
    assert len(apikeys._cache) == 5
    assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 200  # looked up again


async def test_lookups_beyond_the_bound_are_refused_at_once_and_cached_keys_keep_working(client, settings, until):
    """Made-up key ids used to take a pool connection each, for as many as arrived at once."""
    settings(api_key_max_lookups=1)
    apikeys.forget_all()
    _, key = await apikeys.create(principal="svc-flood", name="t", scopes=["platform:gateway:read"])
    assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 200  # cached from here on
    slots = apikeys._semaphore()
    await slots.acquire()  # the one look-up slot is busy
    try:
        queued = [asyncio.create_task(client.get(URL, headers=made_up())) for _ in range(4)]
        await until(lambda: apikeys._waiting == 4)
        over = await client.get(URL, headers=made_up())
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert over.headers["content-type"] == "application/problem+json"
        assert (await client.get(URL, headers={"X-API-Key": key})).status_code == 200
    finally:
        slots.release()
    assert [r.status_code for r in await asyncio.gather(*queued)] == [401] * 4

