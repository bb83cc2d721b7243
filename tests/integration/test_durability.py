"""What "acknowledged" means for actor state and revocations (README, "Durability"), on the embedded Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from nexus_ray.actors import PersistentActor
from nexus_ray.edge import revocations
from nexus_ray.runtime import embedded
from nexus_ray.stores import cache

pytestmark = pytest.mark.integration


class Register(PersistentActor):
    kind = "test-durability"

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        return {**state, data["name"]: data["value"]}


async def test_embedded_redis_keeps_an_append_only_file_fsynced_every_second(stores):
    client = aioredis.Redis.from_url(stores.redis_url, decode_responses=True)
    try:
        settings = {k: v for name in ("appendonly", "appendfsync", "maxmemory-policy")
                    for k, v in (await client.config_get(name)).items()}
    finally:
        await client.aclose()
    assert settings == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}


@pytest.fixture
def lone_redis(tmp_path):
    """A Redis of this test's own with the embedded configuration (the test kills it); stopped by pid after."""
    started: list[int] = []

    def start(port: int | None = None) -> tuple[int, str]:
        pid, url = embedded.start_redis(tmp_path / "redis", port=port)
        started.append(pid)
        return pid, url

    yield start
    for pid in started:
        embedded.stop_redis(pid, kill=True)


async def test_acknowledged_commits_and_revocations_survive_a_redis_crash(lone_redis, monkeypatch):
    pid, url = lone_redis()
    monkeypatch.setattr(cache, "_client", aioredis.Redis.from_url(url))
    register = await Register.open("crash")
    for i in range(150):  # past a snapshot (every 100 ops) and into the journal after it
        await register.commit("set", name=f"k{i % 7}", value=i)
    await revocations.revoke_token("jti-crash")
    await revocations.revoke_subject("user-crash")
    expected = register.state
    await cache.close_redis()

    embedded.stop_redis(pid, kill=True)  # no shutdown: only what the append-only file holds comes back
    _pid, again = lone_redis(port=int(url.rsplit(":", 1)[1].split("/")[0]))
    assert again == url
    monkeypatch.setattr(cache, "_client", aioredis.Redis.from_url(again))
    try:
        assert (await Register.open("crash")).state == expected
        client = cache.redis_client()
        assert await client.exists(revocations.token_key("jti-crash"), revocations.subject_key("user-crash")) == 2
        assert 0 < await client.ttl(revocations.token_key("jti-crash")) <= 3600 + 30
    finally:
        await cache.close_redis()
