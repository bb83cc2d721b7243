"""The shared store machinery on the real embedded servers: migrations, transactions, outbox, consumers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest

from nexus_ray.config import get_settings
from nexus_ray.exceptions import NotFound, ValidationFailed
from nexus_ray.stores import events, postgres
from nexus_ray.stores.together import GroupCommit

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


async def test_json_columns_give_back_exactly_the_value_written(migrated):
    """The pool's JSON codec (orjson, the standard library where orjson would read or write otherwise) gives back
    what was written: integers beyond 64 bits stay exact integers, keys that are not strings become strings as
    the standard library makes them, non-ASCII text and nesting survive, in json and jsonb columns alike."""
    import json

    p = await postgres.pool()
    values = [
        {"amount": 2201, "lines": [{"sku": "A-1", "q": 2, "price": 12.5}], "note": None, "ok": True},
        {"account": 123456789012345678901234567890, "negative": -(2**70), "small": -(2**63)},
        {1: "one", "2": "two"},
        {"name": "Zoë — 東京", "nested": {"deep": [[1, [2, [3]]]]}},
        [],
        "plain text",
    ]
    for column in ("json", "jsonb"):
        back = [await p.fetchval(f"SELECT $1::{column}", v) for v in values]
        assert back == [json.loads(json.dumps(v)) for v in values], column
    assert type((await p.fetchval("SELECT $1::jsonb", {"n": 2**70}))["n"]) is int
    assert await p.fetchval("SELECT '{\"n\": 1e400}'::json") == {"n": float("inf")}  # as json.loads reads it


async def _plans_of_a_batch_statement(conn: asyncpg.Connection) -> dict[str, int]:
    """Run one prepared statement six times on ``conn`` with arrays of other lengths: how PostgreSQL planned it."""
    statement = "SELECT count(*) FROM unnest($1::int8[]) AS u(n) WHERE u.n > $2"
    for k in range(1, 7):
        await conn.fetchval(statement, list(range(k)), 0)
    row = await conn.fetchrow(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1", statement)
    return dict(row)


async def test_a_group_commits_statements_are_planned_once_and_the_rest_for_their_parameters(migrated):
    """A group commit's writer gets the batch pool (postgres.pool inside it): PostgreSQL plans its statements once,
    for any parameters. Everything else keeps plans made for each call's parameters."""

    async def writer(_key: None, items: list[int]) -> list[dict[str, int]]:
        async with (await postgres.pool()).acquire() as conn:
            return [await _plans_of_a_batch_statement(conn) for _ in items]

    assert await GroupCommit(writer).submit(None, 1) == {"generic_plans": 6, "custom_plans": 0}
    async with (await postgres.pool()).acquire() as conn:
        assert (await _plans_of_a_batch_statement(conn))["custom_plans"] >= 5  # PostgreSQL's default: 5 at least
    async with postgres.transaction() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "auto"


async def test_relaxed_work_commits_without_waiting_for_the_disk_and_a_batch_only_when_all_of_it_may(migrated):
    """Where ``postgres.relaxed`` is set, the pool's commits do not wait for the WAL flush, in a transaction and in
    a group commit's writer alike; a batch is relaxed only when every item was handed over relaxed. Everywhere else
    they wait."""

    async def writer(_key: None, items: list[bool]) -> list[str]:
        mode = await (await postgres.pool()).fetchval("SHOW synchronous_commit")
        return [mode for _ in items]

    together: GroupCommit[None, bool, str] = GroupCommit(writer)

    async def submit(relax: bool) -> str:
        with postgres.relaxing(relax):
            return await together.submit(None, relax)

    async def in_transaction(relax: bool) -> str:
        with postgres.relaxing(relax):
            async with postgres.transaction() as conn:
                return await conn.fetchval("SHOW synchronous_commit")

    assert await submit(True) == "off" and await submit(False) == "on"
    assert await asyncio.gather(submit(True), submit(True)) == ["off", "off"]
    assert await asyncio.gather(submit(True), submit(False), submit(True)) == ["on", "on", "on"]  # one batch
    assert await in_transaction(True) == "off" and await in_transaction(False) == "on"
    assert await (await postgres.pool()).fetchval("SHOW synchronous_commit") == "on"


@contextlib.asynccontextmanager
async def _slow_wal_writer():
    """The server's WAL writer flushing every 10 s instead of 0.2: a commit that does not wait for the disk stays
    unflushed until something else flushes it."""
    p = await postgres.pool()
    await p.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
    await p.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        await p.execute("ALTER SYSTEM RESET wal_writer_delay")
        await p.execute("SELECT pg_reload_conf()")


async def test_the_relay_sends_an_event_only_once_its_commit_is_on_disk(migrated):
    """An event committed without waiting for the disk (the saga's steps) is flushed by the relay's read of it,
    before the relay sends it: a crash of PostgreSQL cannot take back a change whose event went out."""
    from aiokafka import AIOKafkaProducer

    p = await postgres.pool()
    sent: list[tuple[set[str], int]] = []  # each batch the relay sent: its event ids, the WAL flushed when it sent

    class Recording(events.OutboxRelay):
        @staticmethod
        async def publish(producer, rows):  # type: ignore[no-untyped-def]
            flushed = await p.fetchval("SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn")
            sent.append(({str(r["event_id"]) for r in rows}, int(flushed)))
            return await events.OutboxRelay.publish(producer, rows)

    relay = Recording(batch=5000)
    producer = AIOKafkaProducer(bootstrap_servers=get_settings().kafka_bootstrap, acks="all")
    await producer.start()
    checked = 0
    try:
        async with _slow_wal_writer():
            for _ in range(20):
                with postgres.relaxing():
                    async with postgres.transaction() as conn:
                        event_id = await events.emit(conn, "test.relaxed", {"i": checked})
                written, flushed = (int(lsn) for lsn in await p.fetchrow(
                    "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn, pg_current_wal_flush_lsn() - '0/0'::pg_lsn"))
                sent.clear()
                await relay.publish_batch(producer)
                mine = [at for ids, at in sent if str(event_id) in ids]
                if flushed >= written or not mine:  # flushed by something else, or another relay sent it
                    continue
                assert mine[0] >= written, "the relay sent an event before its commit reached the disk"
                checked += 1
                if checked == 3:
                    break
    finally:
        await producer.stop()
    assert checked == 3, "the event's commit was flushed by others each time: nothing was shown"


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


async def _keyed_table(p: asyncpg.Pool) -> None:
    """The table of the kit's idempotency tests, in the shape its docstring gives."""
    await p.execute("CREATE TABLE IF NOT EXISTS t_keyed (scope text NOT NULL, key text NOT NULL, fingerprint text "
                    "NOT NULL, status smallint, response jsonb, created_at timestamptz NOT NULL DEFAULT now(), "
                    "expires_at timestamptz NOT NULL, PRIMARY KEY (scope, key))")


async def test_a_keyed_change_that_refuses_is_stored_as_refused_and_leaves_nothing_of_itself(migrated):
    """The kit's idempotency keys: a change that wrote (a row, an event) and then refused is stored as its refusal
    with its writes undone, and its key replays the refusal without running it again; one that succeeds keeps
    what it wrote."""
    from nexus_ray.deployments.kit.idempotency import Idempotency
    from nexus_ray.exceptions import Conflict

    p = await postgres.pool()
    await _keyed_table(p)
    await p.execute("CREATE TABLE IF NOT EXISTS t_rollback (id text PRIMARY KEY)")
    keys = Idempotency("t_keyed", ttl_s=lambda: 60.0)
    runs: list[str] = []

    def change(marker: str, refuse: bool):  # type: ignore[no-untyped-def]
        async def work(conn):  # type: ignore[no-untyped-def]
            runs.append(marker)
            await conn.execute("INSERT INTO t_rollback VALUES ($1)", marker)
            await events.emit(conn, "test.keyed", {"marker": marker})
            if refuse:
                raise Conflict("refused after writing", extra={"code": "refused_late"})
            return 201, {"marker": marker}
        return work

    async def written(marker: str) -> tuple[int, int]:
        return (await p.fetchval("SELECT count(*) FROM t_rollback WHERE id = $1", marker),
                await p.fetchval("SELECT count(*) FROM outbox WHERE payload->>'marker' = $1", marker))

    refused, kept = uuid.uuid4().hex, uuid.uuid4().hex
    first = await keys.run(scope="s", key=refused, fingerprint="f", work=change(refused, True))
    again = await keys.run(scope="s", key=refused, fingerprint="f", work=change(refused, True))
    assert (first.status, first.replayed, again.status, again.replayed) == (409, False, 409, True)
    assert again.body == first.body and first.body["code"] == "refused_late"
    assert runs == [refused] and await written(refused) == (0, 0)
    done = await keys.run(scope="s", key=kept, fingerprint="f", work=change(kept, False))
    assert (done.status, done.body) == (201, {"marker": kept}) and await written(kept) == (1, 1)


async def test_a_batch_lead_read_locks_its_rows_in_the_statement_that_claims_the_keys(migrated):
    """The kit's ``run_many`` with a lead read: the work gets the read's rows (locked until the batch commits, for
    the items of every request, replays included), only the keys that statement claimed run, and a lead that
    matches no row still tells which keys were claimed."""
    from nexus_ray.deployments.kit.idempotency import Idempotency, Keyed

    p = await postgres.pool()
    await _keyed_table(p)
    await p.execute("CREATE TABLE IF NOT EXISTS t_lead (id text PRIMARY KEY, n int NOT NULL)")
    keys = Idempotency("t_keyed", ttl_s=lambda: 60.0)
    rows = [uuid.uuid4().hex for _ in range(3)]
    await p.execute("INSERT INTO t_lead SELECT i, 0 FROM unnest($1::text[]) AS i", rows)
    k_old, k1, k2 = (uuid.uuid4().hex for _ in range(3))
    seen: list[tuple[list[str], list[str], bool]] = []

    def lead(items: list[str], first: int) -> tuple[str, list[object]]:
        return f"SELECT id, n{{claimed}} FROM t_lead WHERE id = ANY(${first}::text[]) ORDER BY id FOR UPDATE", [items]

    async def work(conn, items, store):  # type: ignore[no-untyped-def]
        async with p.acquire() as other:  # the lead's rows are locked by this batch's transaction
            try:
                await other.fetch("SELECT 1 FROM t_lead WHERE id = ANY($1::text[]) FOR UPDATE NOWAIT", items)
                locked = False
            except asyncpg.LockNotAvailableError:
                locked = True
        seen.append((list(items), sorted(r["id"] for r in store.led), locked))
        await conn.execute("UPDATE t_lead SET n = n + 1 WHERE id = ANY($1::text[])", items)
        return [(201, {"id": i}) for i in items]

    (first,) = await keys.run_many([Keyed("s", k_old, "f", rows[0])], work, lead=lead)
    assert (first.status, first.replayed, seen[0]) == (201, False, ([rows[0]], [rows[0]], True))
    out = await keys.run_many([Keyed("s", k_old, "f", rows[0]), Keyed("s", k1, "f", rows[1]),
                               Keyed("s", k2, "f", rows[2])], work, lead=lead)
    assert [(o.status, o.replayed) for o in out] == [(201, True), (201, False), (201, False)]
    assert seen[1] == ([rows[1], rows[2]], sorted(rows), True)  # the replay's row read (and locked), not run
    assert await p.fetchval("SELECT array_agg(n) FROM t_lead WHERE id = ANY($1::text[])", rows) == [1, 1, 1]
    # A lead that finds no row: its claim ran all the same, and the keys it claimed are run and answered.
    missing, k3 = uuid.uuid4().hex, uuid.uuid4().hex
    (alone,) = await keys.run_many([Keyed("s", k3, "f", missing)], work, lead=lead)
    assert (alone.status, alone.replayed, seen[-1][:2]) == (201, False, ([missing], []))
    (again,) = await keys.run_many([Keyed("s", k3, "f", missing)], work, lead=lead)
    assert (again.status, again.replayed, len(seen)) == (201, True, 3)


async def test_an_event_emitted_beside_its_change_is_written_with_it_or_not_at_all(migrated):
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_beside (id text PRIMARY KEY, n int NOT NULL CHECK (n > 0))")
    marker = uuid.uuid4().hex
    beside = "INSERT INTO t_beside (id, n) VALUES ($6, $7)"
    async with postgres.transaction() as conn:
        await events.emit(conn, "test.beside", {"marker": marker}, key=marker, beside=beside, args=[marker, 1])
    assert await p.fetchval("SELECT n FROM t_beside WHERE id = $1", marker) == 1
    assert await p.fetchval("SELECT key FROM outbox WHERE payload->>'marker' = $1", marker) == marker
    refused = uuid.uuid4().hex  # the change fails its check: the statement writes neither
    with pytest.raises(asyncpg.CheckViolationError):
        async with postgres.transaction() as conn:
            await events.emit(conn, "test.beside", {"marker": refused}, beside=beside, args=[refused, 0])
    assert await p.fetchval("SELECT count(*) FROM t_beside WHERE id = $1", refused) == 0
    assert await p.fetchval("SELECT count(*) FROM outbox WHERE payload->>'marker' = $1", refused) == 0


async def test_emit_outside_transaction_refused(migrated):
    p = await postgres.pool()
    async with p.acquire() as conn:
        with pytest.raises(RuntimeError, match="inside the transaction"):
            await events.emit(conn, "test.x", {})


async def _emit_n(topic: str, n: int, *, key: str | None = None) -> list[uuid.UUID]:
    """``n`` events in one transaction, keyed ``key`` (one partition, in order), or over three keys when None."""
    ids = []
    async with postgres.transaction() as conn:
        for i in range(n):
            ids.append(await events.emit(conn, topic, {"i": i}, key=key or f"k{i % 3}"))
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
        assert await consumer.handle(again) == "duplicate"
        assert len(seen) == 10 and consumer.skipped >= 1
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


def _consumer(topic: str, handler, *, group: str | None = None, **options) -> events.EventConsumer:
    return events.EventConsumer(group or f"g-{uuid.uuid4().hex[:6]}", [topic], handler, session_timeout_ms=6000,
                                heartbeat_interval_ms=500, **options)


@contextlib.asynccontextmanager
async def _running(consumer: events.EventConsumer):
    task = asyncio.create_task(consumer.run())
    try:
        yield task
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


async def test_a_consumer_passes_over_the_events_it_does_not_want_without_a_record(relay, until):
    """``wants`` picks the events the handler acts on: the others reach no handler and leave no record that they
    were processed, and the events after them are handled as usual, in batches and one by one alike."""
    topic = f"test.wants.{uuid.uuid4().hex[:6]}"
    seen: list[int] = []

    async def handler(conn, event):
        seen.append(event.data["i"])

    consumer = _consumer(topic, handler, wants=lambda event: event.data["i"] % 2 == 0)
    async with _running(consumer):
        ids = await _emit_n(topic, 10, key="one")  # one partition: fetched together
        ids += await _emit_n(topic, 1, key="one")  # and one alone (its i is 0: wanted)
        await until(lambda: consumer.handled == 6 and consumer.passed_over == 5, within_s=60)
    assert sorted(seen) == [0, 0, 2, 4, 6, 8]
    p = await postgres.pool()
    recorded = await p.fetch("SELECT event_id FROM processed_events WHERE consumer = $1", consumer.group)
    assert {r["event_id"] for r in recorded} == {ids[i] for i in (0, 2, 4, 6, 8, 10)}


async def test_failed_handler_leaves_nothing_and_event_is_retried(relay, until):
    topic = f"test.flaky.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_effects (event_id uuid PRIMARY KEY)")
    attempts = {"n": 0}
    effects_at_retry: list[int] = []

    async def handler(conn, event):
        if attempts["n"] == 1:  # the retry: the first attempt's write must be gone
            effects_at_retry.append(await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = $1", event.id))
        await conn.execute("INSERT INTO t_effects VALUES ($1)", event.id)
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("transient failure")

    consumer = _consumer(topic, handler, max_attempts=3, retry_backoff_s=0.05)
    (event_id,) = await _emit_n(topic, 1)
    # The failure is counted and retried in place: the consumer keeps running and applies the event once.
    async with _running(consumer) as task:
        await until(lambda: consumer.handled == 1, within_s=60)
        assert not task.done()
    assert attempts["n"] == 2 and effects_at_retry == [0]
    assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = $1", event_id) == 1
    # A handled event keeps no count of its failures, and is not a dead letter.
    assert await p.fetchval("SELECT count(*) FROM event_attempts WHERE event_id = $1", event_id) == 0
    assert await events.list_dead_letters(consumer=consumer.group) == []


async def _published(event_ids: list[uuid.UUID], until) -> None:
    p = await postgres.pool()

    async def all_out() -> bool:
        return await p.fetchval("SELECT count(*) FROM outbox WHERE event_id = ANY($1) AND published_at IS NOT NULL",
                                event_ids) == len(event_ids)

    await until(all_out, within_s=30)


async def test_the_relay_records_where_the_broker_put_each_event_on_its_keys_partition(relay, until):
    """The relay sends events as record batches it builds itself: each event must land on the partition Kafka's
    default partitioner gives its key, in outbox order there, at the partition and offset the outbox records, also
    when a partition's events fill more than one batch."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.partitioner import DefaultPartitioner

    topic = f"test.batches.{uuid.uuid4().hex[:6]}"
    ids: list[uuid.UUID] = []
    async with postgres.transaction() as conn:
        for i in range(90):  # about 1 KB each: the key "big"'s 60 fill a 16 KB batch three times over
            key = "big" if i % 3 else f"k{i}"
            ids.append(await events.emit(conn, topic, {"i": i, "pad": "x" * 1000}, key=key))
    await _published(ids, until)
    p = await postgres.pool()
    rows = await p.fetch('SELECT id, event_id, key, partition, "offset" FROM outbox WHERE event_id = ANY($1) '
                         "ORDER BY id", ids)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=get_settings().kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        got: dict[str, tuple[int, int]] = {}

        async def all_read() -> bool:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for m in messages:
                    got[dict(m.headers)["event_id"].decode()] = (m.partition, m.offset)
            return len(got) == len(ids)

        await until(all_read, within_s=30)
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()
    assert len(partitions) > 1
    for r in rows:
        assert got[str(r["event_id"])] == (r["partition"], r["offset"])
        assert r["partition"] == DefaultPartitioner()(r["key"].encode(), partitions, partitions)
    big = [r["offset"] for r in rows if r["key"] == "big"]
    assert big == sorted(big) and len(set(big)) == 60  # one partition, in outbox order


async def test_events_fetched_together_are_handled_in_one_transaction(relay, until):
    topic = f"test.together.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_together (event_id uuid PRIMARY KEY, tx bigint NOT NULL)")

    async def handler(conn, event):
        await conn.execute("INSERT INTO t_together VALUES ($1, txid_current())", event.id)

    ids = await _emit_n(topic, 5, key="one")
    await _published(ids, until)  # all in the partition before the consumer's first fetch
    consumer = _consumer(topic, handler)
    async with _running(consumer):
        await until(lambda: consumer.handled == 5, within_s=60)
    rows = await p.fetch("SELECT event_id, tx FROM t_together WHERE event_id = ANY($1)", ids)
    assert sorted(r["event_id"] for r in rows) == sorted(ids)  # each applied once
    assert len({r["tx"] for r in rows}) < 5  # and those fetched together committed together


async def test_a_batch_claims_its_events_in_one_statement_and_handles_each_fresh_one_once_in_order(migrated):
    """A batch's events are claimed together: the fresh ones are handled in order, in one transaction with their
    records; one processed before is skipped, and one sent twice in the batch is handled once."""
    p = await postgres.pool()
    seen: list[tuple[int, int]] = []

    async def handler(conn, event):
        seen.append((event.data["i"], await conn.fetchval("SELECT txid_current()")))

    consumer = _consumer("test.claims", handler)
    batch = [events.Event(id=uuid.uuid4(), topic="test.claims", key="k", data={"i": i}, occurred_at=datetime.now(UTC),
                          headers={}) for i in range(4)]
    await p.execute("INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)", consumer.group, batch[1].id)
    assert await consumer.handle_together([*batch, batch[2]])
    assert [i for i, _ in seen] == [0, 2, 3] and len({tx for _, tx in seen}) == 1
    assert consumer.handled == 3 and consumer.skipped == 2
    rows = await p.fetch("SELECT event_id, xmin::text AS tx FROM processed_events WHERE consumer = $1",
                         consumer.group)
    assert {r["event_id"] for r in rows} == {e.id for e in batch}
    assert len({r["tx"] for r in rows if r["event_id"] != batch[1].id}) == 1
    assert await consumer.handle_together(batch)  # all processed now: nothing runs again
    assert len(seen) == 3 and consumer.handled == 3 and consumer.skipped == 6


async def test_a_failing_event_among_others_fetched_with_it_is_retried_alone(relay, until):
    topic = f"test.together.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_together_effects (event_id uuid PRIMARY KEY)")
    calls: list[int] = []

    async def handler(conn, event):
        calls.append(event.data["i"])
        await conn.execute("INSERT INTO t_together_effects VALUES ($1)", event.id)
        if event.data["i"] == 2 and calls.count(2) == 1:
            raise RuntimeError("transient failure")

    ids = await _emit_n(topic, 5, key="one")
    await _published(ids, until)
    consumer = _consumer(topic, handler, max_attempts=3, retry_backoff_s=0.05)
    async with _running(consumer):
        await until(lambda: consumer.handled == 5, within_s=60)
    # Nothing of the failed batch stayed; each event's effect is there once; the failing one failed once.
    effects = await p.fetch("SELECT event_id FROM t_together_effects WHERE event_id = ANY($1)", ids)
    assert sorted(r["event_id"] for r in effects) == sorted(ids)
    assert calls.count(2) == 2  # failed once (in the batch, or alone), then applied
    assert await p.fetchval("SELECT count(*) FROM event_attempts WHERE event_id = ANY($1)", ids) == 0
    assert await events.list_dead_letters(consumer=consumer.group) == []


async def test_event_that_keeps_failing_is_dead_lettered_and_later_events_flow(relay, until):
    topic = f"test.poison.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_effects (event_id uuid PRIMARY KEY)")
    calls: dict[int, int] = {}
    handled: list[int] = []

    async def handler(conn, event):
        i = event.data["i"]
        calls[i] = calls.get(i, 0) + 1
        await conn.execute("INSERT INTO t_effects VALUES ($1)", event.id)
        if i in (1, 3):
            raise RuntimeError(f"cannot handle {i}; password=hunter2")
        handled.append(i)

    consumer = _consumer(topic, handler, max_attempts=3, retry_backoff_s=0.05)
    async with _running(consumer):
        ids = await _emit_n(topic, 5)
        await until(lambda: consumer.handled == 3 and consumer.dead_lettered == 2, within_s=90)
    # Each poison event failed three counted attempts. (Events fetched together are first tried in one transaction:
    # a handler call in a batch that failed counts no attempt, and is rolled back with the batch.)
    assert set(handled) == {0, 2, 4} and calls[1] >= 3 and calls[3] >= 3
    good, poison = [ids[0], ids[2], ids[4]], [ids[1], ids[3]]
    assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = ANY($1)", good) == 3
    # The poison events left no effect, and they are processed as far as delivery goes: a redelivery is skipped.
    assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = ANY($1)", poison) == 0
    row = await p.fetchrow("SELECT * FROM outbox WHERE event_id = $1", ids[1])
    again = events.Event(ids[1], topic, row["key"], row["payload"], row["created_at"], {})
    called = calls[1]
    assert await consumer.handle(again) == "duplicate" and calls[1] == called
    assert await p.fetchval("SELECT count(*) FROM event_attempts WHERE event_id = ANY($1)", poison) == 0

    # Listed per consumer, in order, keyset-paged, with the last error (type and redacted message).
    first = await events.list_dead_letters(consumer=consumer.group, limit=1)
    second = await events.list_dead_letters(consumer=consumer.group, after=first[-1].id, limit=1)
    assert await events.list_dead_letters(consumer=consumer.group, after=second[-1].id, limit=1) == []
    assert [d.event_id for d in first + second] == poison
    letter = first[0]
    assert (letter.status, letter.attempts, letter.topic, letter.data) == ("dead", 3, topic, {"i": 1})
    assert letter.error_type == "RuntimeError"
    assert letter.error_message == "cannot handle 1; password=[redacted]"
    assert await events.list_dead_letters(consumer=f"other-{consumer.group}") == []
    assert {d.id for d in await events.list_dead_letters(limit=1000)} >= {letter.id, second[0].id}


async def test_failed_attempts_are_counted_across_a_restart(relay, until):
    topic = f"test.restart.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    calls = {"n": 0}

    async def handler(conn, event):
        calls["n"] += 1
        raise ValueError("always")

    group = f"g-{uuid.uuid4().hex[:6]}"
    (event_id,) = await _emit_n(topic, 1)
    counted = "SELECT attempts FROM event_attempts WHERE consumer = $1 AND event_id = $2"
    first = _consumer(topic, handler, group=group, max_attempts=3, retry_backoff_s=30)
    async with _running(first):
        await until(lambda: p.fetchval(counted, group, event_id), within_s=60)
    assert calls["n"] == 1 and first.dead_lettered == 0
    # A new consumer of the group (a restart) goes on counting: one more failure each, the third is the last.
    second = _consumer(topic, handler, group=group, max_attempts=3, retry_backoff_s=0.05)
    async with _running(second):
        await until(lambda: second.dead_lettered == 1, within_s=60)
    assert calls["n"] == 3
    (letter,) = await events.list_dead_letters(consumer=group)
    assert letter.event_id == event_id and letter.attempts == 3 and letter.error_type == "ValueError"


async def test_replay_delivers_a_dead_letter_once_per_request(relay, until):
    topic = f"test.replay.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    await p.execute("CREATE TABLE IF NOT EXISTS t_effects (event_id uuid PRIMARY KEY)")
    fixed = {"yes": False}
    delivered: list[uuid.UUID] = []

    async def handler(conn, event):
        await conn.execute("INSERT INTO t_effects VALUES ($1)", event.id)
        if not fixed["yes"]:
            raise RuntimeError("not yet")
        delivered.append(event.id)

    consumer = _consumer(topic, handler, max_attempts=2, retry_backoff_s=0.05, replay_poll_s=0.2)
    async with _running(consumer):
        (event_id,) = await _emit_n(topic, 1)
        await until(lambda: consumer.dead_lettered == 1, within_s=60)
        (letter,) = await events.list_dead_letters(consumer=consumer.group)

        # A replay while the handler still fails: the letter is dead again, one attempt more, nothing written.
        assert (await events.request_replay(dead_letter_id=letter.id)).status == "replaying"
        await until(lambda: _status_is(letter.id, "dead"), within_s=30)
        assert (await events.get_dead_letter(dead_letter_id=letter.id)).attempts == 3
        assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = $1", event_id) == 0

        # Fixed: asked twice (a retried request), delivered once, in the transaction that marks it replayed.
        fixed["yes"] = True
        requests = await asyncio.gather(*(events.request_replay(dead_letter_id=letter.id) for _ in range(2)))
        assert {r.status for r in requests} == {"replaying"}
        await until(lambda: _status_is(letter.id, "replayed"), within_s=30)
        again = await events.request_replay(dead_letter_id=letter.id)
        assert again.status == "replayed" and again.replayed_at is not None
        await until(lambda: consumer.replayed == 1)
        for _ in range(3):  # further polls of the consumer find nothing to replay
            await consumer.deliver_replays()
    assert delivered == [event_id]
    assert await p.fetchval("SELECT count(*) FROM t_effects WHERE event_id = $1", event_id) == 1
    with pytest.raises(NotFound):
        await events.request_replay(dead_letter_id=-1)


async def _status_is(dead_letter_id: int, status: str) -> bool:
    return (await events.get_dead_letter(dead_letter_id=dead_letter_id)).status == status


async def test_dead_letter_listing_refuses_bad_paging(migrated):
    for limit in (0, events.DEAD_LETTER_PAGE_MAX + 1):
        with pytest.raises(ValidationFailed) as refused:
            await events.list_dead_letters(limit=limit)
        assert refused.value.extra["errors"][0]["field"] == "limit"
    with pytest.raises(ValidationFailed) as refused:
        await events.list_dead_letters(after=-5)
    assert refused.value.extra["errors"][0]["field"] == "after"


async def test_broker_restart_loses_no_committed_event(relay, data_dir, until):
    from nexus_ray.runtime import embedded

    topic = f"test.durable.{uuid.uuid4().hex[:6]}"
    before = await _emit_n(topic, 5)
    await _published(before, until)
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


async def test_a_consumer_goes_on_after_the_broker_restarts(relay, data_dir, until):
    from nexus_ray.runtime import embedded

    topic = f"test.outlive.{uuid.uuid4().hex[:6]}"
    seen: set[uuid.UUID] = set()

    async def handler(conn, event):
        seen.add(event.id)

    consumer = events.EventConsumer(f"g-{uuid.uuid4().hex[:6]}", [topic], handler, commit_timeout_s=3,
                                    session_timeout_ms=6000, heartbeat_interval_ms=500)
    task = asyncio.create_task(consumer.run_until_stopped(retry_s=0.5))
    try:
        before = await _emit_n(topic, 3)
        await until(lambda: seen >= set(before), within_s=60)
        # The broker goes away under the running consumer and comes back empty (its memory is gone).
        await asyncio.to_thread(embedded.restart_kafka, data_dir)
        after = await _emit_n(topic, 3)
        await until(lambda: seen >= set(after), within_s=60)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


def _row(topic: str, i: int) -> dict:
    """An outbox row as the relay reads it (payload as text)."""
    return {"event_id": uuid.uuid4(), "topic": topic, "key": f"k{i}", "payload": f'{{"i": {i}}}', "headers": {},
            "created_at": datetime.now(UTC)}


async def test_the_relay_writes_nothing_into_a_topic_the_restarted_broker_lost(stores, data_dir, until):
    """The embedded broker takes records for a topic it lost (the producer's cached metadata still names it), and
    another client's request for the topic then creates it anew with its offsets set back, so the relay's next
    records were refused. The relay asks for its topics' metadata before each batch, which creates them first."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from nexus_ray.runtime import embedded

    topic = f"test.lost.{uuid.uuid4().hex[:6]}"
    bootstrap = get_settings().kafka_bootstrap
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await producer.start()
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await events.OutboxRelay.publish(producer, [_row(topic, 0)])
        await asyncio.to_thread(embedded.restart_kafka, data_dir)

        async def published(rows: list[dict]) -> bool:
            with contextlib.suppress(Exception):  # until the producer is connected to the new broker
                await events.OutboxRelay.publish(producer, rows)
                return True
            return False

        after = [_row(topic, i) for i in range(1, 7)]
        await until(lambda: published(after[:3]), within_s=60, every=0.5)
        # Another client asks for the topic's metadata (as a consumer subscribing to it does).
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        assert await published(after[3:]), "the relay's batch after another client asked for the topic was refused"

        await reader.start()
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        read: list[int] = []

        async def read_all() -> bool:
            for messages in (await reader.getmany(timeout_ms=500)).values():
                read.extend(orjson.loads(m.value)["data"]["i"] for m in messages)
            return sorted(read) == [1, 2, 3, 4, 5, 6]

        await until(read_all, within_s=30)
    finally:
        await reader.stop()
        await producer.stop()


async def test_only_one_relay_leads(migrated, until):
    a = events.OutboxRelay(poll_s=0.2, standby_s=0.2)
    b = events.OutboxRelay(poll_s=0.2, standby_s=0.2)
    ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
    p = await postgres.pool()
    holders = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1"
    try:
        # Other relays of this session (the apps') may lead; one session at most ever holds the lock (a leader
        # whose broker call fails lets go and another takes over, so for an instant there may be none).
        await until(lambda: p.fetchval(holders, events._RELAY_LOCK & 0xFFFFFFFF))
        for _ in range(10):
            assert await p.fetchval(holders, events._RELAY_LOCK & 0xFFFFFFFF) <= 1
            assert not (a.is_leader and b.is_leader)
            await asyncio.sleep(0.1)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb), 30)


async def _nexus(*args: str) -> tuple[int, str]:
    """Run the `nexus` CLI on this session's stores (their URLs are in the environment); returns (status, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus_ray.cli", *args, env={**os.environ, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode()


async def test_cli_lists_and_replays_dead_letters(migrated):
    fixed = {"yes": False}

    async def handler(conn, event):
        if not fixed["yes"]:
            raise KeyError("customer")

    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = events.EventConsumer(group, ["test.cli"], handler, max_attempts=1)
    event = events.Event(uuid.uuid4(), "test.cli", None, {"n": 1}, datetime.now(UTC), {})
    assert await consumer.handle(event) == "dead-lettered"
    (letter,) = await events.list_dead_letters(consumer=group)

    status, out = await _nexus("events", "dead-letters", "--consumer", group)
    assert status == 0, out
    assert str(letter.id) in out and str(event.id) in out and "KeyError: 'customer'" in out

    status, out = await _nexus("events", "replay", str(letter.id))
    assert status == 0 and "replay requested" in out, out
    fixed["yes"] = True
    assert await consumer.deliver_replays() == 1
    status, out = await _nexus("events", "replay", str(letter.id))
    assert status == 0 and "replayed at" in out, out
    assert await consumer.deliver_replays() == 0

    status, out = await _nexus("events", "replay", "987654321")
    assert status == 2 and "no dead letter 987654321" in out, out
    status, out = await _nexus("events", "dead-letters", "--limit", "0")
    assert status == 2 and "limit" in out, out


async def test_message_that_is_not_an_event_is_dead_lettered_at_once(relay, until):
    from aiokafka import AIOKafkaProducer

    topic = f"test.garbage.{uuid.uuid4().hex[:6]}"
    seen: list[int] = []

    async def handler(conn, event):
        seen.append(event.data["i"])

    producer = AIOKafkaProducer(bootstrap_servers=get_settings().kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\x00not json", key=b"k")
    finally:
        await producer.stop()
    consumer = _consumer(topic, handler, max_attempts=3)
    async with _running(consumer):
        await _emit_n(topic, 2)
        await until(lambda: seen == [0, 1], within_s=60)
    (letter,) = await events.list_dead_letters(consumer=consumer.group)
    assert letter.data == {"undecodable": "\ufffdnot json"} and letter.key == "k" and letter.attempts == 1
    assert letter.error_type == "orjson.JSONDecodeError"


async def _outbox_row(conn: asyncpg.Connection, topic: str, *, created: str, published: bool) -> uuid.UUID:
    """An outbox event created at ``now() + created`` (an interval), published or not."""
    event_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, payload, created_at, published_at) "
        "VALUES ($1, $2, '{}'::jsonb, now() + $3::text::interval, CASE WHEN $4 THEN now() END)",
        event_id, topic, created, published)
    return event_id


async def test_a_lost_broker_gets_the_events_of_the_window_before_the_newest_again(migrated):
    topic = f"test.window.{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    async with postgres.transaction() as conn:
        # Dated ahead of everything else in the outbox, so these anchor the window and nothing else is in it.
        newest = await _outbox_row(conn, topic, created="10 days", published=True)
        inside = await _outbox_row(conn, topic, created="10 days - 2 hours", published=True)
        outside = await _outbox_row(conn, topic, created="10 days - 30 hours", published=True)
    try:
        assert await events.mark_for_replay(p, window_h=24) == 2
        unpublished = {r["event_id"] for r in await p.fetch(
            "SELECT event_id FROM outbox WHERE topic = $1 AND published_at IS NULL", topic)}
        assert unpublished == {newest, inside}  # the one 30 hours before the newest stays published
        assert await p.fetchval("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1", outside)
    finally:
        await p.execute("DELETE FROM outbox WHERE topic = $1", topic)  # they would anchor later windows


async def test_purge_removes_old_published_events_and_consumer_records_only(migrated):
    # The housekeeping job's part for events (the job closes the pool it used: this session's is shared).
    topic, consumer = f"test.purge.{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    p = await postgres.pool()
    async with postgres.transaction() as conn:
        old = await _outbox_row(conn, topic, created="-10 days", published=True)
        pending = await _outbox_row(conn, topic, created="-10 days", published=False)
        recent = await _outbox_row(conn, topic, created="-1 day", published=True)
        for event_id, age in ((old, "10 days"), (recent, "1 day"), (pending, "10 days")):
            await conn.execute("INSERT INTO processed_events (consumer, event_id, processed_at) "
                               "VALUES ($1, $2, now() - $3::text::interval)", consumer, event_id, age)
        for event_id, status, age in ((old, "replayed", "10 days"), (recent, "replayed", "1 day"),
                                      (pending, "dead", "10 days")):
            await conn.execute(
                "INSERT INTO dead_letters (consumer, event_id, topic, payload, occurred_at, attempts, error_type, "
                "error_message, first_failed_at, status, replayed_at) VALUES ($1, $2, $3, '{}'::jsonb, now(), 5, "
                "'E', 'e', now(), $4, CASE WHEN $4 = 'replayed' THEN now() - $5::text::interval END)",
                consumer, event_id, topic, status, age)
    async with postgres.transaction() as conn:
        counts = await events.purge_events(conn=conn, older_than_days=7)
    assert counts["outbox_events"] >= 1 and counts["processed_events"] >= 1 and counts["dead_letters"] >= 1
    assert {r["event_id"] for r in await p.fetch("SELECT event_id FROM outbox WHERE topic = $1", topic)} == {
        pending, recent}  # an unpublished event is kept whatever its age
    assert {r["event_id"] for r in await p.fetch(
        "SELECT event_id FROM processed_events WHERE consumer = $1", consumer)} == {
        recent, pending}  # an old record of an event still in the outbox (to be published, again) is kept
    assert {(r["event_id"], r["status"]) for r in await p.fetch(
        "SELECT event_id, status FROM dead_letters WHERE consumer = $1", consumer)} == {
        (recent, "replayed"), (pending, "dead")}  # a dead letter not yet replayed is kept
    async with postgres.transaction() as conn:
        again = await events.purge_events(conn=conn, older_than_days=7)
    assert (again["outbox_events"], again["processed_events"], again["dead_letters"]) == (0, 0, 0)
    await p.execute("DELETE FROM outbox WHERE topic = $1", topic)


class _HalfOpenRelay:
    """A TCP relay to PostgreSQL that, when the server ends a connection, passes on its last bytes (the
    farewell) but keeps the client's side open: the client then holds the connection in the state asyncpg
    is in for one turn of the loop between the server's farewell and the closed socket, for as long as
    the test needs it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.ended = 0  # server sides that ended
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(self.host, self.port)
        self._writers += [client_w, server_w]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        upstream = asyncio.create_task(pump(client_r, server_w))
        with contextlib.suppress(ConnectionError):
            await pump(server_r, client_w)
        self.ended += 1  # the farewell went through; the client's side stays open
        with contextlib.suppress(ConnectionError):
            await upstream

    async def close(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def half_dead_pool(migrated, monkeypatch, until):
    """The process's pool replaced by one of a single connection whose backend the server ended while it was
    idle, through a :class:`_HalfOpenRelay`: asyncpg has the server's farewell and not the closed socket.
    Yields the ended backend's pid."""
    from urllib.parse import urlsplit, urlunsplit

    url = urlsplit(get_settings().postgres_url)
    relay = _HalfOpenRelay(url.hostname or "127.0.0.1", url.port or 5432)
    port = await relay.start()
    credentials = url.netloc.rsplit("@", 1)[0] + "@" if "@" in url.netloc else ""
    p = await asyncpg.create_pool(urlunsplit(url._replace(netloc=f"{credentials}127.0.0.1:{port}")),
                                  min_size=1, max_size=1, reset=postgres._keep_session)
    try:
        pid = await p.fetchval("SELECT pg_backend_pid()")
        assert await (await postgres.pool()).fetchval("SELECT pg_terminate_backend($1)", pid)  # idle in the pool
        await until(lambda: relay.ended == 1, within_s=10)
        async with p.acquire() as conn:  # the pool still hands it out: it does not know yet
            assert not conn.is_closed()
        monkeypatch.setattr(postgres, "_pool", p)
        yield pid
    finally:
        monkeypatch.undo()
        await relay.close()
        p.terminate()  # its connections' sockets are gone with the relay: nothing to say goodbye to


async def test_a_pool_connection_the_server_ended_while_idle_is_not_where_a_transaction_begins(half_dead_pool):
    async with postgres.transaction() as conn:
        assert await conn.fetchval("SELECT pg_backend_pid()") != half_dead_pool  # begun on a new connection


async def test_a_statement_on_a_pool_connection_the_server_ended_is_a_503_to_retry(half_dead_pool):
    import httpx
    from fastapi import FastAPI

    from nexus_ray.edge import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/one")
    async def one() -> int:
        return await (await postgres.pool()).fetchval("SELECT 1")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/one")
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (r.json()["code"], r.headers["retry-after"]) == ("store_connection_lost", "1")
