"""PersistentActor without Ray, against the session's real Redis: journal, replay, snapshots, trimming.

An integration test (it needs a Redis server, and unit tests start none): each test's actor has a key of
its own, so the shared store is no trouble.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from nexus_ray.actors import PersistentActor
from nexus_ray.stores import cache

pytestmark = pytest.mark.integration


class Ledger(PersistentActor):
    """Named integer values: enough ops (set, add, delete, refuse) to exercise replay."""

    kind = "test-ledger"
    snapshot_every = 5

    def initial_state(self) -> dict[str, Any]:
        return {"values": {}, "ops": 0}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        values = dict(state["values"])
        if op == "set":
            values[data["name"]] = data["value"]
        elif op == "add":
            values[data["name"]] = values.get(data["name"], 0) + data["amount"]
        elif op == "delete":
            if data["name"] not in values:
                raise KeyError(data["name"])
            del values[data["name"]]
        else:
            raise ValueError(f"unknown op {op!r}")
        return {"values": values, "ops": state["ops"] + 1}


@pytest.fixture
def store(stores):
    """The process-wide Redis client, on the session's embedded Redis."""
    return cache.redis_client()


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


@pytest.mark.asyncio
async def test_commit_applies_and_journals_each_op(store, key):
    ledger = await Ledger.open(key)
    await ledger.commit("set", name="a", value=1)
    entry_id = await ledger.commit("add", name="a", amount=41)

    assert ledger.state == {"values": {"a": 42}, "ops": 2}
    entries = await store.xrange(ledger.journal_key)
    assert [fields[b"op"] for _, fields in entries] == [b"set", b"add"]
    assert entries[-1][0].decode() == entry_id


@pytest.mark.asyncio
async def test_new_instance_restores_state_by_replaying_the_journal(store, key):
    ledger = await Ledger.open(key)
    await ledger.commit("set", name="a", value=1)
    await ledger.commit("set", name="b", value=(1, 2))  # JSON turns it into a list, live and on replay
    await ledger.commit("add", name="a", amount=2)
    assert await store.get(ledger.snapshot_key) is None  # fewer ops than snapshot_every

    restored = await Ledger.open(key)
    assert restored.state == ledger.state == {"values": {"a": 3, "b": [1, 2]}, "ops": 3}


@pytest.mark.asyncio
async def test_snapshot_trims_the_journal_and_restore_replays_only_what_follows(store, key):
    ledger = await Ledger.open(key)
    for i in range(Ledger.snapshot_every):
        await ledger.commit("add", name="n", amount=i)
    # The fifth op wrote a snapshot and trimmed everything it covers.
    assert await store.xlen(ledger.journal_key) == 0
    assert await store.exists(ledger.snapshot_key)

    await ledger.commit("set", name="after", value="x")
    last_id = await ledger.commit("add", name="n", amount=100)
    assert await store.xlen(ledger.journal_key) == 2

    restored = await Ledger.open(key)
    assert restored.state == ledger.state == {"values": {"n": 110, "after": "x"}, "ops": 7}

    # The restored instance knows where the journal stands: its snapshot covers the last op.
    assert await restored.snapshot_now() == last_id
    assert await store.xlen(restored.journal_key) == 0
    assert (await Ledger.open(key)).state == restored.state


@pytest.mark.asyncio
async def test_many_ops_across_snapshots_restore_identically(store, key):
    ledger = await Ledger.open(key)
    for i in range(23):
        await ledger.commit("set", name=f"k{i % 7}", value=i)
        if i % 4 == 0:
            await ledger.commit("add", name="total", amount=i)
    assert await store.xlen(ledger.journal_key) < Ledger.snapshot_every

    restored = await Ledger.open(key)
    assert restored.state == ledger.state
    assert restored.state["ops"] == 23 + 6


@pytest.mark.asyncio
async def test_refused_op_is_not_journaled(store, key):
    ledger = await Ledger.open(key)
    await ledger.commit("set", name="a", value=1)
    with pytest.raises(KeyError):
        await ledger.commit("delete", name="missing")
    with pytest.raises(TypeError):
        await ledger.commit("set", name="a", value=object())  # not JSON-able

    assert await store.xlen(ledger.journal_key) == 1
    assert (await Ledger.open(key)).state == ledger.state == {"values": {"a": 1}, "ops": 1}


@pytest.mark.asyncio
async def test_instances_are_isolated_by_key_and_erase_forgets(store, key):
    one, other = await Ledger.open(key), await Ledger.open(key + "-other")
    await one.commit("set", name="a", value=1)
    await other.commit("set", name="a", value=2)
    await one.snapshot_now()

    await one.erase()
    assert one.state == Ledger(key).initial_state()
    assert not await store.exists(one.journal_key, one.snapshot_key)
    assert (await Ledger.open(key)).state == {"values": {}, "ops": 0}
    assert (await Ledger.open(key + "-other")).state == {"values": {"a": 2}, "ops": 1}


@pytest.mark.asyncio
async def test_snapshot_of_an_untouched_actor_writes_nothing(store, key):
    ledger = await Ledger.open(key)
    assert await ledger.snapshot_now() is None
    assert not await store.exists(ledger.journal_key, ledger.snapshot_key)


def test_a_subclass_must_declare_its_kind():
    class Nameless(PersistentActor):
        pass

    with pytest.raises(TypeError, match="kind"):
        Nameless("k")
    assert Ledger("k").pid() > 0
