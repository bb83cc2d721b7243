"""The shared store machinery on the real embedded servers: migrations, transactions, outbox, consumers."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from nexus_ray.config import get_settings
from nexus_ray.stores import events, postgres

pytestmark = pytest.mark.integration


async def test_migrations_applied_once_under_concurrency(migrated):
    url = get_settings().postgres_url
    pools = [await asyncpg.create_pool(url, min_size=1, max_size=2) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(postgres.migrate(p) for p in pools))
        assert applied == [[], [], [], []]  # the session pool applied them already; nobody re-applies
        p = await postgres.pool()
        versions = [r["version"] for r in await p.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [v for v, _ in postgres.migration_files()]
    finally:
        for p in pools:
            await p.close()


async def test_fresh_database_migrates_once_when_replicas_race(migrated):
    admin = await asyncpg.connect(get_settings().postgres_url)
    name = f"race_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        url = get_settings().postgres_url.rsplit("/", 1)[0] + f"/{name}"
        pools = [await asyncpg.create_pool(url, min_size=1, max_size=2) for _ in range(4)]
        try:
            applied = await asyncio.gather(*(postgres.migrate(p) for p in pools))
            every = [v for v, _ in postgres.migration_files()]
            assert sorted(applied, key=len) == [[], [], [], every]
        finally:
            for p in pools:
                await p.close()
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_transaction_rolls_back_change_and_event(migrated):
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_rollback (id text PRIMARY KEY)")
    marker = uuid.uuid4().hex
    with pytest.raises(RuntimeError, match="boom"):
        async with postgres.transaction() as conn:
            await conn.execute("INSERT INTO t_rollback VALUES ($1)", marker)
            await events.emit(conn, "test.rollback", {"marker": marker})
            raise RuntimeError("boom")
    assert await p.fetchval("SELECT count(*) FROM t_rollback WHERE id = $1", marker) == 0
    assert await p.fetchval("SELECT count(*) FROM outbox WHERE payload->>'marker' = $1", marker) == 0


async def test_emit_outside_transaction_refused(migrated):
    p = await postgres.pool()
    async with p.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await events.emit(conn, "test.x", {})


async def _emit_n(topic: str, n: int) -> list[uuid.UUID]:
    ids = []
    async with postgres.transaction() as conn:
        for i in range(n):
            ids.append(await events.emit(conn, topic, {"i": i}, key=f"k{i % 3}"))
    return ids


@pytest.fixture
async def relay(migrated):
    r = events.OutboxRelay(poll_s=0.2, check_s=0.5, standby_s=0.2)
    task = asyncio.create_task(r.run())
    yield r
    r.stop()
    await asyncio.wait_for(task, 30)


async def test_relay_publishes_and_consumer_is_idempotent(relay, until):
    topic = f"test.orders.{uuid.uuid4().hex[:6]}"
    seen: list[tuple[uuid.UUID, int]] = []

    async def handler(conn, event):
        seen.append((event.id, event.data["i"]))

    consumer = events.EventConsumer(f"g-{uuid.uuid4().hex[:6]}", [topic], handler,
                                    session_timeout_ms=6000, heartbeat_interval_ms=500)
    task = asyncio.create_task(consumer.run())
    try:
        ids = await _emit_n(topic, 10)
        await until(lambda: len(seen) == 10)
        assert sorted(i for _, i in seen) == list(range(10))
        assert {e for e, _ in seen} == set(ids)
        # Redelivery of an already-processed event is skipped, not applied twice.
        p = await postgres.pool()
        row = await p.fetchrow("SELECT * FROM outbox WHERE event_id = $1", ids[0])
        from datetime import datetime

        again = events.Event(ids[0], topic, row["key"], row["payload"], datetime.now(), {})
        assert await consumer.handle(again) is False
        assert len(seen) == 10 and consumer.skipped >= 1
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def test_failed_handler_leaves_nothing_and_event_comes_again(relay, until):
    topic = f"test.flaky.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_effects (event_id uuid PRIMARY KEY)")
    attempts = {"n": 0}

    async def handler(conn, event):
        await conn.execute("INSERT INTO t_effects VALUES ($1)", event.id)
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("transient failure")

    consumer = events.EventConsumer(f"g-{uuid.uuid4().hex[:6]}", [topic], handler,
                                    session_timeout_ms=6000, heartbeat_interval_ms=500)
    (event_id,) = await _emit_n(topic, 1)
    # First run: the handler fails; the run stops with the error and nothing of it is kept.
    with pytest.raises(RuntimeError, match="transient"):
        await asyncio.wait_for(consumer.run(), 60)
    assert attempts["n"] == 1
    assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = $1", event_id) == 0
    assert await p.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 0
    # A new run gets the same event again (its offset was never committed) and applies it once.
    task = asyncio.create_task(consumer.run())
    try:
        await until(lambda: attempts["n"] == 2, within_s=60)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
    assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = $1", event_id) == 1


async def test_broker_restart_loses_no_committed_event(relay, data_dir, until):
    from nexus_ray.runtime import embedded

    topic = f"test.durable.{uuid.uuid4().hex[:6]}"
    before = await _emit_n(topic, 5)
    p = await postgres.pool()
    await until(lambda: p.fetchval("SELECT count(*) = 5 FROM outbox WHERE topic = $1 AND published_at IS NOT NULL",
                                   topic))
    await asyncio.to_thread(embedded.restart_kafka, data_dir)  # the broker's memory is gone
    after = await _emit_n(topic, 3)
    seen: set[uuid.UUID] = set()

    async def handler(conn, event):
        seen.add(event.id)

    consumer = events.EventConsumer(f"g-{uuid.uuid4().hex[:6]}", [topic], handler,
                                    session_timeout_ms=6000, heartbeat_interval_ms=500)
    task = asyncio.create_task(consumer.run())
    try:
        # The consumer joined after the restart: it can only see `before` if the outbox replayed it.
        await until(lambda: seen >= set(before) | set(after), within_s=60)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def test_only_one_relay_leads(migrated, until):
    a = events.OutboxRelay(poll_s=0.2, standby_s=0.2)
    b = events.OutboxRelay(poll_s=0.2, standby_s=0.2)
    ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
    p = await postgres.pool()
    holders = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1"
    try:
        # Other relays of this session (the apps') may lead; exactly one session holds the lock.
        await until(lambda: p.fetchval(holders, events._RELAY_LOCK & 0xFFFFFFFF))
        for _ in range(10):
            assert await p.fetchval(holders, events._RELAY_LOCK & 0xFFFFFFFF) == 1
            assert not (a.is_leader and b.is_leader)
            await asyncio.sleep(0.1)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb), 30)
