"""Shard actors' logic on the real Redis, without Ray: many entities in one shard, eviction, restore."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from nexus_ray.actors.base import PersistentActor
from nexus_ray.actors.shards import EntityShard, shard_of

pytestmark = pytest.mark.integration


class Tally(PersistentActor):
    """Named marks per entity; `opened` counts restores so a test can see one."""

    kind = "test-tally"
    opened = 0

    def initial_state(self) -> dict[str, Any]:
        return {"marks": []}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        if op != "mark":
            raise ValueError(f"unknown op {op!r}")
        return {"marks": [*state["marks"], data["name"]]}

    async def restore(self) -> None:
        type(self).opened += 1
        await super().restore()

    async def mark(self, name: str) -> list[str]:
        await self.commit("mark", name=name)
        return self.state["marks"]

    def marks(self) -> list[str]:
        return self.state["marks"]


def keys_of_shard(index: int, shards: int, n: int) -> list[str]:
    found: list[str] = []
    while len(found) < n:
        key = uuid.uuid4().hex
        if shard_of(key, shards) == index:
            found.append(key)
    return found


def test_shard_of_is_stable_and_spreads():
    keys = [f"user-{i}" for i in range(4000)]
    assert [shard_of(k, 8) for k in keys] == [shard_of(k, 8) for k in keys]
    counts = [sum(1 for k in keys if shard_of(k, 8) == i) for i in range(8)]
    assert min(counts) > 400  # about 500 each: no shard is starved or flooded


async def test_one_shard_holds_many_entities_each_with_its_own_state(stores):
    shard = EntityShard(Tally, 0, 2, max_resident=1000)
    keys = keys_of_shard(0, 2, 50)
    await asyncio.gather(*(shard.call(k, "mark", (f"first-{k}",)) for k in keys))
    await asyncio.gather(*(shard.call(k, "mark", (f"second-{k}",)) for k in keys))
    for k in keys:
        assert await shard.call(k, "marks") == [f"first-{k}", f"second-{k}"]
    assert shard.stats()["resident"] == 50


async def test_evicted_entities_come_back_from_redis(stores):
    shard = EntityShard(Tally, 1, 2, max_resident=5)
    keys = keys_of_shard(1, 2, 20)
    for k in keys:
        await shard.call(k, "mark", ("a",))
    assert shard.stats()["resident"] == 5  # the least recently used idle ones were dropped from memory
    before = Tally.opened
    assert await shard.call(keys[0], "marks") == ["a"]  # restored from its journal
    assert Tally.opened == before + 1


async def test_concurrent_first_calls_share_one_restore(stores):
    shard = EntityShard(Tally, 0, 1, max_resident=10)
    key = uuid.uuid4().hex
    before = Tally.opened
    results = await asyncio.gather(*(shard.call(key, "mark", (f"m{i}",)) for i in range(20)))
    assert Tally.opened == before + 1
    assert sorted(max(results, key=len)) == sorted(f"m{i}" for i in range(20))


async def test_a_restarted_shard_finds_every_acknowledged_write(stores):
    keys = keys_of_shard(0, 1, 10)
    first = EntityShard(Tally, 0, 1, max_resident=100)
    for k in keys:
        await first.call(k, "mark", ("kept",))
    second = EntityShard(Tally, 0, 1, max_resident=100)  # as Ray's restart would: a fresh, empty shard
    for k in keys:
        assert await second.call(k, "marks") == ["kept"]


async def test_forget_erases_the_entity(stores):
    shard = EntityShard(Tally, 0, 1, max_resident=100)
    key = uuid.uuid4().hex
    await shard.call(key, "mark", ("x",))
    await shard.forget(key)
    fresh = EntityShard(Tally, 0, 1, max_resident=100)
    assert await fresh.call(key, "marks") == []


async def test_refuses_foreign_keys_and_internal_methods(stores):
    shard = EntityShard(Tally, 0, 2, max_resident=10)
    foreign = keys_of_shard(1, 2, 1)[0]
    with pytest.raises(ValueError, match="does not belong"):
        await shard.call(foreign, "marks")
    own = keys_of_shard(0, 2, 1)[0]
    for method in ("commit", "_restore_locked", "erase"):
        with pytest.raises(ValueError, match="not an entity operation"):
            await shard.call(own, method)
