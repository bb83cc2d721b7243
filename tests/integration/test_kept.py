"""Reads kept until PostgreSQL's notification drops them (nexus_ray.stores.kept), on the real server: another
process's change reaches this one, a read that overlapped a drop is not kept, and nothing kept is used while the
process is not listening."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from nexus_ray.config import get_settings
from nexus_ray.stores import kept

pytestmark = pytest.mark.integration


def a_kept() -> kept.Kept[str, int]:
    return kept.Kept("test_" + uuid.uuid4().hex[:8], max_items=3)


async def listening(until, k: kept.Kept) -> None:
    """Wait until values are kept (the listener answered), with ``k`` emptied again."""
    async def keeps() -> bool:
        k.keep("probe", 0, k.stamp())
        return k.get("probe") == 0
    await until(keeps, within_s=20)
    k.drop()


async def notify_from_elsewhere(topic: str) -> None:
    """What another process's writer does: the notification, on a connection of its own."""
    conn = await asyncpg.connect(get_settings().postgres_url)
    try:
        await conn.execute(f"SELECT {kept.notify_sql(topic)}")
    finally:
        await conn.close()


async def test_a_value_is_kept_until_another_process_notifies_its_topic(migrated, until):
    k, other = a_kept(), a_kept()
    await listening(until, k)
    k.keep("a", 1, k.stamp())
    other.keep("a", 2, other.stamp())
    assert (k.get("a"), other.get("a")) == (1, 2)
    await notify_from_elsewhere(k.topic)
    await until(lambda: k.get("a") is None, within_s=10)
    assert other.get("a") == 2  # another topic's values stay


async def test_a_read_that_overlapped_a_drop_is_not_kept_and_the_oldest_go_first(migrated, until):
    k = a_kept()
    await listening(until, k)
    stamp = k.stamp()
    k.drop()  # a change committed while the read was under way: it may have read the old value
    k.keep("a", 1, stamp)
    assert k.get("a") is None
    for n, key in enumerate("abcd"):
        k.keep(key, n, k.stamp())
    assert [k.get(key) for key in "abcd"] == [None, 1, 2, 3]  # at most three: the first read went
    with pytest.raises(ValueError):
        kept.Kept("no spaces")


async def test_nothing_kept_is_used_while_the_process_is_not_listening(migrated, until):
    k = a_kept()
    await listening(until, k)
    k.keep("a", 1, k.stamp())
    listener = kept._listener._conn
    assert listener is not None
    # The listening connection is cut (as when the server restarts): notifications could be missed from then on.
    admin = await asyncpg.connect(get_settings().postgres_url)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    finally:
        await admin.close()
    await until(lambda: k.get("a") is None, within_s=10)
    # It listens again by itself, with nothing from before kept, and values are kept again.
    await listening(until, k)
    assert kept._listener._conn is not listener
    k.keep("a", 2, k.stamp())
    await notify_from_elsewhere(k.topic)
    await until(lambda: k.get("a") is None, within_s=10)
