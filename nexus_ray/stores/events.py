"""Events on Kafka through a transactional outbox in PostgreSQL.

A service records an event with :func:`emit` on the connection of the transaction
that makes the change, so the event commits (or rolls back) with it. The
:class:`OutboxRelay` publishes committed events to Kafka in commit order; one relay
is active per cluster (a PostgreSQL advisory lock elects it) and any replica may run
one on standby. The outbox is the durable log: when the broker loses its memory
(tansu keeps none across restarts) the relay notices that its epoch marker is gone
and replays the retained events. Consumers
(:class:`EventConsumer`) are at-least-once and idempotent by event id, so replays
and redeliveries are harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from nexus_ray.config import get_settings
from nexus_ray.stores import postgres

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x6E65787573_02
EPOCH_TOPIC = "_nexus_outbox_epoch"
_NOTIFY_CHANNEL = "nexus_outbox"


@dataclass(frozen=True)
class Event:
    """One event as consumers see it."""

    id: uuid.UUID
    topic: str
    key: str | None
    data: dict[str, Any]
    occurred_at: datetime
    headers: dict[str, str]


async def emit(
    conn: asyncpg.Connection,
    topic: str,
    data: dict[str, Any],
    *,
    key: str | None = None,
    event_id: uuid.UUID | None = None,
    headers: dict[str, str] | None = None,
) -> uuid.UUID:
    """Record an event in the outbox on ``conn`` (which must be inside a transaction)."""
    if not conn.is_in_transaction():
        raise RuntimeError("emit() must run inside the transaction of the change it reports")
    event_id = event_id or uuid.uuid4()
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, payload, headers) VALUES ($1, $2, $3, $4, $5)",
        event_id,
        topic,
        key,
        data,
        headers or {},
    )
    await conn.execute(f"NOTIFY {_NOTIFY_CHANNEL}")  # delivered on commit: wakes the relay
    return event_id


def _encode(row: asyncpg.Record) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    value = json.dumps(
        {
            "id": str(row["event_id"]),
            "topic": row["topic"],
            "key": row["key"],
            "occurred_at": row["created_at"].isoformat(),
            "data": row["payload"],
        },
        separators=(",", ":"),
    ).encode()
    headers = [("event_id", str(row["event_id"]).encode())]
    headers += [(k, str(v).encode()) for k, v in (row["headers"] or {}).items()]
    return value, (row["key"].encode() if row["key"] is not None else None), headers


def _decode(msg) -> Event:
    body = json.loads(msg.value)
    return Event(
        id=uuid.UUID(body["id"]),
        topic=msg.topic,
        key=body.get("key"),
        data=body.get("data") or {},
        occurred_at=datetime.fromisoformat(body["occurred_at"]),
        headers={k: v.decode(errors="replace") for k, v in (msg.headers or [])},
    )


class OutboxRelay:
    """Publishes committed outbox events to Kafka; replays them after broker data loss."""

    def __init__(
        self, *, batch: int = 500, poll_s: float = 5.0, check_s: float = 10.0, standby_s: float = 10.0
    ) -> None:
        self.batch = batch
        self.poll_s = poll_s
        self.check_s = check_s
        self.standby_s = standby_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.published = 0
        self.replayed = 0
        self.is_leader = False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until :meth:`stop`: wait for leadership, then publish in a loop."""
        while not self._stop.is_set():
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or database away: try again shortly
                log.warning("outbox relay interrupted: %s", type(exc).__name__)
                self.is_leader = False
                await self._sleep(self.poll_s)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _run_once(self) -> None:
        settings = get_settings()
        # A connection of its own, outside the pool: the lock belongs to this session (released
        # if the process dies), and standby relays must not hold pool connections while waiting.
        lock_conn = await asyncpg.connect(settings.postgres_url, timeout=10)
        try:
            while not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
                if self._stop.is_set():
                    return
                await self._sleep(self.standby_s)
            await self._lead(lock_conn)
        finally:
            await lock_conn.close(timeout=5)

    async def _lead(self, lock_conn: asyncpg.Connection) -> None:
        settings = get_settings()
        self.is_leader = True
        await lock_conn.add_listener(_NOTIFY_CHANNEL, lambda *_: self._wake.set())
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2, request_timeout_ms=15000
        )
        probe = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, request_timeout_ms=15000
        )
        try:
            await producer.start()
            await probe.start()
            loop = asyncio.get_running_loop()
            next_check = 0.0
            while not self._stop.is_set():
                if loop.time() >= next_check:
                    await self.replay_lost(probe, producer)
                    next_check = loop.time() + self.check_s
                sent = await self.publish_batch(producer)
                if sent < self.batch:
                    await self._sleep(self.poll_s)
        finally:
            self.is_leader = False
            # Bounded: a broker that went away must not keep this relay (and its lock) forever.
            for client in (producer, probe):
                try:
                    await asyncio.wait_for(client.stop(), 10)
                except Exception as exc:
                    log.warning("kafka client did not stop cleanly: %s", type(exc).__name__)

    async def publish_batch(self, producer: AIOKafkaProducer) -> int:
        """Publish up to ``batch`` unpublished events in outbox order; returns how many."""
        pg = await postgres.pool()
        rows = await pg.fetch(
            "SELECT id, event_id, topic, key, payload, headers, created_at FROM outbox "
            "WHERE published_at IS NULL ORDER BY id LIMIT $1",
            self.batch,
        )
        if not rows:
            return 0
        futures = []
        for row in rows:
            value, key, headers = _encode(row)
            futures.append(await producer.send(row["topic"], value=value, key=key, headers=headers))
        metas = await asyncio.wait_for(asyncio.gather(*futures), 60)
        await pg.executemany(
            'UPDATE outbox SET published_at = now(), partition = $2, "offset" = $3 WHERE id = $1',
            [(row["id"], m.partition, m.offset) for row, m in zip(rows, metas, strict=True)],
        )
        self.published += len(rows)
        return len(rows)

    async def replay_lost(self, probe: AIOKafkaConsumer, producer: AIOKafkaProducer) -> int:
        """Re-publish every retained event if the broker lost its data; returns how many.

        The relay keeps an epoch marker record in a topic of its own and the epoch in
        PostgreSQL. A broker that comes back without the marker has lost its log (tansu
        keeps none across restarts; a real cluster after a disaster), so every retained
        event is marked for publication again, in order. End offsets alone cannot tell:
        tansu reports the last batch's base offset, not the high watermark.
        """
        pg = await postgres.pool()
        tp = TopicPartition(EPOCH_TOPIC, 0)
        recorded = await pg.fetchval("SELECT epoch FROM outbox_relay_state WHERE id = 1")
        try:
            end = (await probe.end_offsets([tp])).get(tp, 0)
        except KafkaError:
            end = 0
        if recorded is not None and end > 0:
            return 0
        replayed = 0
        if recorded is not None:
            replayed = await pg.fetchval(
                'WITH u AS (UPDATE outbox SET published_at = NULL, partition = NULL, "offset" = NULL '
                "WHERE published_at IS NOT NULL RETURNING 1) SELECT count(*) FROM u"
            )
            log.warning("broker lost its log (epoch marker gone): replaying %d retained events", replayed)
        epoch = uuid.uuid4()
        await producer.send_and_wait(EPOCH_TOPIC, value=str(epoch).encode(), partition=0)
        await pg.execute(
            "INSERT INTO outbox_relay_state (id, epoch) VALUES (1, $1) "
            "ON CONFLICT (id) DO UPDATE SET epoch = $1, updated_at = now()",
            epoch,
        )
        self.replayed += replayed
        return replayed


Handler = Callable[[asyncpg.Connection, Event], Awaitable[None]]


class EventConsumer:
    """Consumes topics in a consumer group, at-least-once, idempotent by event id.

    ``handler(conn, event)`` runs inside a PostgreSQL transaction together with the
    record that the event was processed, so a redelivered event is skipped and a
    handler failure leaves nothing half-written (the offset is not committed and
    the event comes again).
    """

    def __init__(self, group: str, topics: list[str], handler: Handler, **consumer_options: Any) -> None:
        self.group = group
        self.topics = topics
        self.handler = handler
        self.options = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 10000,
            "heartbeat_interval_ms": 1000,
            **consumer_options,
        }
        self.handled = 0
        self.skipped = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def handle(self, event: Event) -> bool:
        """Process one event exactly once in effect; False when it was a duplicate."""
        async with postgres.transaction() as conn:
            fresh = await conn.fetchval(
                "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING RETURNING true",
                self.group,
                event.id,
            )
            if not fresh:
                self.skipped += 1
                return False
            await self.handler(conn, event)
        self.handled += 1
        return True

    async def run(self) -> None:
        """Consume until :meth:`stop`, committing offsets after each handled batch."""
        consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=get_settings().kafka_bootstrap, group_id=self.group, **self.options
        )
        await consumer.start()
        try:
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=200)
                for _tp, messages in batches.items():
                    for msg in messages:
                        await self.handle(_decode(msg))
                if batches:
                    await consumer.commit()
        finally:
            await consumer.stop()


async def ping() -> bool:
    """Readiness probe: True when the Kafka bootstrap server answers metadata requests."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=get_settings().kafka_bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        await admin.list_topics()
        return True
    finally:
        await admin.close()
