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

A consumer whose handler keeps failing on one event retries it a bounded number of
times (``event_max_attempts``, counted in PostgreSQL), then moves it to its dead
letters and goes on. Dead letters are listed with :func:`list_dead_letters` and
replayed with :func:`request_replay`: the consumer delivers a requested replay to its
handler once, in the transaction that marks it replayed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.metadata import MetadataRequest

from nexus_ray.config import get_settings
from nexus_ray.exceptions import NotFound, ValidationFailed
from nexus_ray.logs import redact
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


def uuid_text(value: Any) -> str:
    """orjson's ``default`` for the UUID classes it does not write itself (asyncpg's): their text."""
    if isinstance(value, uuid.UUID):  # asyncpg's own UUID class, which orjson does not take for one
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_text(value: Any) -> str:
    """``value`` as JSON text for a ``jsonb`` parameter, at orjson's speed: ids (of any UUID class) and aware
    datetimes as ISO text."""
    return orjson.dumps(value, default=uuid_text).decode()


#: Selected by a statement that recorded an event: wakes the relay when the statement's transaction commits.
NOTIFY = f"pg_notify('{_NOTIFY_CHANNEL}', '')"


def outbox_insert(event_id: str, topic: str, key: str, payload: str, headers: str, *, source: str = "") -> str:
    """The SQL that records one event in the outbox, for a statement that also makes the change it reports.

    Each argument is an SQL expression (a parameter such as ``"$4"``, or a column of ``source``); the payload is
    taken as ``json`` and the headers as ``jsonb``. ``source`` (``"FROM changed WHERE ..."``) decides whether
    the row is written: a change that wrote nothing records no event. The statement selects :data:`NOTIFY`
    when it wrote one. :func:`emit` is this insert on its own; a statement that changes, logs and records in
    one round trip (the order saga's step) puts it in a ``WITH`` beside its change.
    """
    return (f"INSERT INTO outbox (event_id, topic, key, payload, headers) SELECT {event_id}::uuid, {topic}::text, "
            f"{key}::text, {payload}::json, {headers}::jsonb {source}")


async def emit(
    conn: asyncpg.Connection,
    topic: str,
    data: dict[str, Any],
    *,
    key: str | None = None,
    event_id: uuid.UUID | None = None,
    headers: dict[str, str] | None = None,
    beside: str = "",
    args: Sequence[Any] = (),
) -> uuid.UUID:
    """Record an event in the outbox on ``conn`` (which must be inside a transaction).

    ``beside``: the change the event reports, as a data-modifying statement whose parameters are numbered from
    ``$6`` and given in ``args``; it runs in the same statement as the event's insert (one round trip for both).
    """
    if not conn.is_in_transaction():
        raise RuntimeError("emit() must run inside the transaction of the change it reports")
    event_id = event_id or postgres.new_ids(1)[0]  # time-ordered, like emit_many's
    # The notification is delivered on commit and wakes the relay; sent in the same statement as
    # the insert, so an event costs one round trip.
    change = f"c AS ({beside}), " if beside else ""
    await conn.execute(
        f"WITH {change}e AS ({outbox_insert('$1', '$2', '$3', '$4', '$5')}) SELECT {NOTIFY}",
        event_id,
        topic,
        key,
        data,
        headers or {},
        *args,
    )
    return event_id


async def emit_many(
    conn: asyncpg.Connection,
    topic: str,
    items: Sequence[tuple[str | None, dict[str, Any] | str]],
    *,
    headers: dict[str, str] | None = None,
    beside: str | Sequence[str] = "",
    args: Sequence[Any] = (),
) -> list[uuid.UUID]:
    """Record one event per ``(key, data)`` of ``items`` in one statement, in order (see :func:`emit`).

    For changes that make many facts at once (a ledger batch): one round trip and one wake-up of
    the relay instead of two per event. A payload may be given as its JSON text when the caller has
    made that already (the ledger stores the same text as the idempotent response). ``beside``: the change the
    events report, in the same statement, its parameters numbered from ``$6`` and given in ``args`` (as
    :func:`emit`'s). It may be several such statements (a tuple), each a ``WITH`` item of its own: they run as
    one statement, so triggers at its end see what each wrote.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("emit_many() must run inside the transaction of the change it reports")
    if not items:
        return []
    ids = postgres.new_ids(len(items))  # time-ordered: the event_id index grows at its end
    rows = "FROM unnest($1::uuid[], $3::text[], $4::text[]) WITH ORDINALITY AS u(e, k, p, n) ORDER BY n"
    changes = (beside,) if isinstance(beside, str) else tuple(beside)
    change = "".join(f"c{i} AS ({c}), " for i, c in enumerate(changes) if c)
    await conn.execute(
        f"WITH {change}e AS ({outbox_insert('e', '$2', 'k', 'p', '$5', source=rows)}) SELECT {NOTIFY}",
        ids,
        topic,
        [k for k, _ in items],
        [d if isinstance(d, str) else json_text(d) for _, d in items],
        headers or {},
        *args,
    )
    return ids


def _encode(row: asyncpg.Record) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    """The broker message of an outbox row read with its payload as text (``payload::text``): the envelope is
    written around that text as it is, neither parsed nor written again."""
    envelope = orjson.dumps({
        "id": str(row["event_id"]),
        "topic": row["topic"],
        "key": row["key"],
        "occurred_at": row["created_at"].isoformat(),
    })
    value = envelope[:-1] + b',"data":' + row["payload"].encode() + b"}"
    headers = [("event_id", str(row["event_id"]).encode())]
    headers += [(k, str(v).encode()) for k, v in (row["headers"] or {}).items()]
    return value, (row["key"].encode() if row["key"] is not None else None), headers


def _decode(msg: Any) -> Event:
    body = orjson.loads(msg.value)
    return Event(
        id=uuid.UUID(body["id"]),
        topic=msg.topic,
        key=body.get("key"),
        data=body.get("data") or {},
        occurred_at=datetime.fromisoformat(body["occurred_at"]),
        headers={k: v.decode(errors="replace") for k, v in (msg.headers or [])},
    )


#: What :func:`_decode` raises for a message that is not an event.
_UNDECODABLE = (ValueError, KeyError, TypeError, AttributeError)


def _all_decoded(messages: Sequence[Any]) -> list[Event] | None:
    """The events of ``messages``, or None if one is not an event (they are then taken one by one, so that it is
    dead-lettered in its place)."""
    try:
        return [_decode(msg) for msg in messages]
    except _UNDECODABLE:
        return None


async def mark_for_replay(pg: asyncpg.Pool | asyncpg.Connection, *, window_h: float) -> int:
    """Mark the published events created in the ``window_h`` hours before the newest one for publication again
    (the relay publishes them in outbox order); returns how many.

    The window is anchored at the newest event, not at the clock: after a long downtime the events around the
    moment the broker went are still replayed, and a history of months is not.
    """
    return int(await pg.fetchval(
        'WITH u AS (UPDATE outbox SET published_at = NULL, partition = NULL, "offset" = NULL '
        "WHERE published_at IS NOT NULL "
        "AND created_at >= (SELECT max(created_at) FROM outbox) - make_interval(secs => $1) "
        "RETURNING 1) SELECT count(*) FROM u",
        window_h * 3600.0,
    ))


async def purge_events(*, conn: asyncpg.Connection, older_than_days: int) -> dict[str, int]:
    """Delete what the event machinery keeps past ``older_than_days`` (the housekeeping job calls it): published
    outbox events, consumers' records of processed events, and dead letters replayed that long ago. Unpublished
    events and dead letters not yet replayed are kept whatever their age, and so is a consumer's record of an event
    still in the outbox (one marked for replay after a long downtime must still be known as processed)."""
    age = "now() - make_interval(days => $1)"
    counts = {}
    for name, sql in (
        ("outbox_events", f"DELETE FROM outbox WHERE published_at IS NOT NULL AND created_at < {age}"),
        ("processed_events", f"DELETE FROM processed_events p WHERE processed_at < {age} "
                             "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = p.event_id)"),
        ("dead_letters", f"DELETE FROM dead_letters WHERE status = 'replayed' AND replayed_at < {age}"),
    ):
        counts[name] = await conn.fetchval(f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d", older_than_days)
    return counts


#: The partition index of each key the relay placed lately, by key and partition count: an order's events share a
#: few keys, and murmur2 is Python code (kept small: cleared when full).
_placed_keys: dict[tuple[bytes, int], int] = {}
_PLACED_KEYS_MAX = 10_000


def _partition(key: bytes | None, partitions: Sequence[int]) -> int:
    """The partition of ``partitions`` (sorted) that Kafka's default partitioner gives ``key``; any of them for no
    key."""
    if key is None:
        return random.choice(partitions)
    n = len(partitions)
    index = _placed_keys.get((key, n))
    if index is None:
        if len(_placed_keys) >= _PLACED_KEYS_MAX:
            _placed_keys.clear()
        index = _placed_keys[(key, n)] = (murmur2(key) & 0x7FFFFFFF) % n
    return partitions[index]


class OutboxRelay:
    """Publishes committed outbox events to Kafka; replays them after broker data loss."""

    def __init__(
        self,
        *,
        batch: int = 500,
        poll_s: float = 5.0,
        check_s: float = 10.0,
        standby_s: float = 10.0,
        linger_s: float = 0.05,
    ) -> None:
        self.batch = batch
        self.poll_s = poll_s
        # After a wake-up, wait this long before reading the outbox: the commits of a busy moment
        # (a checkout commits twelve events over its steps) are published as one batch, not one poll each.
        # 50 ms rather than 10: under checkouts at the machine's limit the relay spent 1.7-1.8 ms of CPU an
        # order against 2.7-3.0, and orders/s rose 10-11 % (bench/RESULTS.md, issue 7, 2026-12-03). An event
        # reaches the broker up to 40 ms later for it; nothing waits on events to answer a request.
        self.linger_s = linger_s
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
                    if self.linger_s > 0 and not self._stop.is_set():
                        await asyncio.sleep(self.linger_s)
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
        # FOR UPDATE makes the read a write (row locks go to the WAL), so its commit waits for the WAL flush, and
        # the flush, in order, takes every commit the read saw with it: events of commits that did not wait for the
        # disk (postgres.relaxed) are durable before they go out, and a crash cannot leave a published event
        # whose change was lost.
        rows = await pg.fetch(
            "SELECT id, event_id, topic, key, payload::text AS payload, headers, created_at FROM outbox "
            "WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE",
            self.batch,
        )
        if not rows:
            return 0
        metas = await self.publish(producer, rows)
        # "published_at IS NULL" (the rows were read so, and only this leader publishes) lets the planner find them
        # in the small partial index of unpublished rows. Joined on the id alone, a plan made while the table was
        # new (never analysed: a few hundred rows guessed) hash-joined a scan of the whole outbox, every batch:
        # 18.6 million rows read in 1,725 batches of a 35-second order benchmark (bench/RESULTS.md, issue 7).
        await pg.execute(
            'UPDATE outbox o SET published_at = now(), partition = u.p, "offset" = u.o '
            "FROM unnest($1::bigint[], $2::int4[], $3::int8[]) AS u(id, p, o) WHERE o.id = u.id "
            "AND o.published_at IS NULL",
            [row["id"] for row in rows],
            [partition for partition, _ in metas],
            [offset for _, offset in metas],
        )
        self.published += len(rows)
        return len(rows)

    @staticmethod
    async def publish(producer: AIOKafkaProducer, rows: Sequence[Any]) -> list[tuple[int, int]]:
        """Send outbox rows (read with their payload as text) to the broker, in order; each one's partition and offset.

        First the metadata of the rows' topics is asked for, in one request (about 0.15 ms of this process's CPU
        for three topics, bench/RESULTS.md). A broker that lost its log (the embedded one after a restart) still
        takes records for a topic it no longer knows, sent by the metadata the producer cached before; the next
        client to ask for that topic's metadata then creates it anew (automatic creation), and the embedded
        broker's creation sets the partitions' offsets back to nothing under the records already there, so what
        is written next is refused or never reaches consumers (``bench/broker_restart.py`` found it). Asked for
        here, a lost topic is created before anything is written to it.

        The rows go out as record batches, one a partition (more when one fills), built here: each row is placed
        on the partition Kafka's default partitioner gives its key (the Java client's murmur2, so a key keeps its
        partition, and its events their order, whoever sends them), and appended to that partition's batch. Sent
        one by one (``producer.send``), each row cost a future, the producer's partitioning and its metadata wait:
        the relay spent about 80 microseconds of its CPU an event (bench/RESULTS.md, issue 7).
        """
        topics = sorted({row["topic"] for row in rows})
        node = producer.client.get_random_node()
        if node is None:
            raise KafkaConnectionError("the relay's producer knows no broker")
        await producer.client.send(node, MetadataRequest(topics))
        partitions = {topic: sorted(await producer.partitions_for(topic)) for topic in topics}
        building: dict[tuple[str, int], tuple[int, Any]] = {}  # per topic and partition: its open batch, numbered
        sent: list[Awaitable[Any]] = []  # each batch's delivery, in the order the batches were closed
        sent_as: dict[int, int] = {}  # a batch's number -> its place in ``sent``
        placed: list[tuple[int, int]] = []  # each row's batch (by number) and offset in it
        for row in rows:
            value, key, headers = _encode(row)
            topic = row["topic"]
            tp = (topic, _partition(key, partitions[topic]))
            number, batch = building.get(tp, (-1, None))
            meta = batch.append(timestamp=None, key=key, value=value, headers=headers) if batch is not None else None
            if meta is None:  # no batch for the partition yet, or it is full: the full one goes, a new one opens
                if batch is not None:
                    sent_as[number] = len(sent)
                    sent.append(await producer.send_batch(batch, topic, partition=tp[1]))
                number, batch = len(placed), producer.create_batch()  # numbered by its first row: never reused
                building[tp] = (number, batch)
                meta = batch.append(timestamp=None, key=key, value=value, headers=headers)
                if meta is None:
                    raise ValueError(f"event {row['event_id']} is larger than a record batch")
            placed.append((number, meta.offset))
        for (topic, partition), (number, batch) in building.items():
            sent_as[number] = len(sent)
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        delivered = await asyncio.wait_for(asyncio.gather(*sent), 60)
        out = []
        for number, relative in placed:
            record = delivered[sent_as[number]]
            out.append((record.partition, record.offset + relative))
        return out

    async def replay_lost(self, probe: AIOKafkaConsumer, producer: AIOKafkaProducer) -> int:
        """Re-publish the recent events if the broker lost its data; returns how many.

        The relay keeps an epoch marker record in a topic of its own and the epoch in
        PostgreSQL. A broker that comes back without the marker has lost its log (tansu
        keeps none across restarts; a real cluster after a disaster), so the events of the
        last ``event_replay_window_h`` before the newest are marked for publication again,
        in order (:func:`mark_for_replay`). End offsets alone cannot tell:
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
            replayed = await mark_for_replay(pg, window_h=get_settings().event_replay_window_h)
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
#: A handler of a batch's fresh events at once, in their order (see ``EventConsumer``'s ``handle_many``).
ManyHandler = Callable[[asyncpg.Connection, list[Event]], Awaitable[None]]
Outcome = Literal["handled", "duplicate", "dead-lettered"]

_MAX_BACKOFF_S = 60.0
_ERROR_MESSAGE_CHARS = 1000
_UNDECODABLE_CHARS = 65536

#: The claim of a consumer group's events (one, or a batch's) in one statement: the ids claimed now come back. The
#: same statement forgets their failed attempts: a handled event needs no count, and this costs no extra round trip.
_CLAIM = (
    "WITH forget AS (DELETE FROM event_attempts WHERE consumer = $1 AND event_id = ANY($2::uuid[])) "
    "INSERT INTO processed_events (consumer, event_id) SELECT $1, e FROM unnest($2::uuid[]) AS e "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


class HandlerFailed(Exception):
    """A consumer's handler failed on an event that has attempts left; the cause is chained."""

    def __init__(self, event_id: uuid.UUID, attempts: int) -> None:
        super().__init__(event_id, attempts)
        self.event_id = event_id
        self.attempts = attempts

    def __str__(self) -> str:
        return f"handler failed on event {self.event_id} (attempt {self.attempts})"


def _error_of(exc: BaseException) -> tuple[str, str]:
    """The type and message of a handler's error as kept in the database: redacted and bounded."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return name, redact(str(exc))[:_ERROR_MESSAGE_CHARS]


@dataclass(frozen=True)
class DeadLetter:
    """An event a consumer gave up on: the event whole, why, and where its replay stands."""

    id: int
    consumer: str
    event_id: uuid.UUID
    topic: str
    key: str | None
    data: dict[str, Any]
    headers: dict[str, str]
    occurred_at: datetime
    attempts: int
    error_type: str
    error_message: str
    first_failed_at: datetime
    dead_at: datetime
    status: Literal["dead", "replaying", "replayed"]
    replay_requested_at: datetime | None
    replayed_at: datetime | None

    @property
    def event(self) -> Event:
        return Event(self.event_id, self.topic, self.key, self.data, self.occurred_at, self.headers)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> DeadLetter:
        return cls(
            id=row["id"],
            consumer=row["consumer"],
            event_id=row["event_id"],
            topic=row["topic"],
            key=row["key"],
            data=row["payload"],
            headers=row["headers"],
            occurred_at=row["occurred_at"],
            attempts=row["attempts"],
            error_type=row["error_type"],
            error_message=row["error_message"],
            first_failed_at=row["first_failed_at"],
            dead_at=row["dead_at"],
            status=row["status"],
            replay_requested_at=row["replay_requested_at"],
            replayed_at=row["replayed_at"],
        )


DEAD_LETTER_PAGE_MAX = 1000
"""Most dead letters :func:`list_dead_letters` returns at once (above the kit's page bound: its extra row fits)."""


async def list_dead_letters(
    *, consumer: str | None = None, after: int | None = None, limit: int = 50
) -> list[DeadLetter]:
    """Dead letters in the order they died, of one consumer (group) or of all.

    Keyset-paged: pass the ``id`` of the last one of a page as ``after`` to get the next page;
    a page shorter than ``limit`` is the last. With the kit's pages::

        rows = await list_dead_letters(consumer=..., after=page.after_value(0), limit=page.fetch_limit)
        return page.of(rows, key=lambda d: (d.id,))
    """
    if not 1 <= limit <= DEAD_LETTER_PAGE_MAX:
        raise ValidationFailed.for_field("limit", f"must be between 1 and {DEAD_LETTER_PAGE_MAX}")
    if after is not None and after < 0:
        raise ValidationFailed.for_field("after", "must not be negative")
    pg = await postgres.pool()
    if consumer is None:
        rows = await pg.fetch("SELECT * FROM dead_letters WHERE id > $1 ORDER BY id LIMIT $2", after or 0, limit)
    else:
        rows = await pg.fetch(
            "SELECT * FROM dead_letters WHERE consumer = $1 AND id > $2 ORDER BY id LIMIT $3",
            consumer,
            after or 0,
            limit,
        )
    return [DeadLetter.from_row(r) for r in rows]


async def get_dead_letter(*, dead_letter_id: int) -> DeadLetter:
    """One dead letter by its id; :class:`~nexus_ray.exceptions.NotFound` if there is none."""
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM dead_letters WHERE id = $1", dead_letter_id)
    if row is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return DeadLetter.from_row(row)


async def request_replay(*, dead_letter_id: int) -> DeadLetter:
    """Ask the dead letter's consumer to deliver it to its handler once more; returns it as it stands now.

    Idempotent: a replay already requested or done is left as it is, so asking twice delivers
    once. The consumer (any running replica of its group) delivers the event in the transaction
    that marks it ``replayed``; when its handler fails again the letter is ``dead`` again, with
    the new error, and may be replayed again.
    """
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "UPDATE dead_letters SET status = 'replaying', replay_requested_at = now() "
        "WHERE id = $1 AND status = 'dead' RETURNING *",
        dead_letter_id,
    )
    if row is None:
        return await get_dead_letter(dead_letter_id=dead_letter_id)
    return DeadLetter.from_row(row)


RELAXED_FETCH_WAIT_MS = 2000
"""``fetch_max_wait_ms`` for a consumer whose events may wait a second or two (e-mail, clean-up after an erasure).

Kafka's default is 500 ms. Each idle consumer's long poll costs the embedded broker about 0.8 % of a core at 500 ms
and 0.2 % at 2 s. But the embedded broker answers a waiting fetch late, not when a record arrives, so a longer wait
delays delivery (median 68 ms at 500 ms, about 200 ms at 2 s; bench/RESULTS.md, issue 6). The order flow's
consumers keep the default."""


class _HandlerRaised(Exception):
    """A consumer's handler failed (``cause``): carried out of the transaction it rolls back, apart from the
    database's own errors."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(cause)
        self.cause = cause


def _one_by_one(handler: Handler) -> ManyHandler:
    """A batch handler that calls ``handler`` on each event in turn."""
    async def each(conn: asyncpg.Connection, events: list[Event]) -> None:
        for event in events:
            await handler(conn, event)
    return each


class EventConsumer:
    """Consumes topics in a consumer group, at-least-once, idempotent by event id.

    ``handler(conn, event)`` runs inside a PostgreSQL transaction together with the
    record that the event was processed, so a redelivered event is skipped and a
    handler failure leaves nothing half-written. The events of one partition that a fetch
    brings together share one transaction (:meth:`handle_together`): one commit for a busy
    consumer's batch. When a handler fails there, the batch is rolled back and its events are
    handled one by one, so a handler may be called again for an event whose first call was
    rolled back: what it does outside ``conn`` must bear a repeat, as redeliveries already ask.
    A failed event is retried, after a backoff during which only its partition waits, until it
    has failed ``max_attempts`` times (counted in PostgreSQL, across restarts); then it moves to the dead letters,
    with the last error, and the consumer commits past it. A message that is not an event
    (it cannot be decoded) goes to the dead letters at once. The consumer also delivers
    the replays requested for its dead letters (:func:`request_replay`), looking for
    them every ``replay_poll_s``.

    ``wants(event)``, when given, picks the events the handler acts on: the others are passed over with no
    transaction and no record (a redelivered one is passed over again), their offsets committed with the rest.

    ``handle_many(conn, events)``, when given, takes the place of ``handler``: it gets a batch's fresh events at
    once, in order, so that it can write them in a few statements whatever their number. Everything else is as
    above: a failure rolls the batch back, and its events come again one at a time (a list of one).
    """

    def __init__(
        self,
        group: str,
        topics: list[str],
        handler: Handler | None,
        *,
        handle_many: ManyHandler | None = None,
        wants: Callable[[Event], bool] | None = None,
        max_attempts: int | None = None,
        retry_backoff_s: float | None = None,
        replay_poll_s: float = 5.0,
        commit_timeout_s: float = 15.0,
        **consumer_options: Any,
    ) -> None:
        settings = get_settings()
        self.group = group
        self.topics = topics
        if handler is not None and handle_many is None:
            handle_many = _one_by_one(handler)
        elif handler is not None or handle_many is None:
            raise ValueError("give exactly one of handler and handle_many")
        self.handle_many: ManyHandler = handle_many
        self.wants = wants
        self.max_attempts = max_attempts if max_attempts is not None else settings.event_max_attempts
        self.retry_backoff_s = retry_backoff_s if retry_backoff_s is not None else settings.event_retry_backoff_s
        self.replay_poll_s = replay_poll_s
        self.commit_timeout_s = commit_timeout_s
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.options = {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": 10000,
            "heartbeat_interval_ms": 1000,
            **consumer_options,
        }
        self.handled = 0
        self.skipped = 0
        self.passed_over = 0
        self.dead_lettered = 0
        self.replayed = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _wanted(self, event: Event) -> bool:
        """Whether the handler acts on ``event`` (``wants``; every event when none was given)."""
        return self.wants is None or self.wants(event)

    async def run_until_stopped(self, *, retry_s: float = 2.0) -> None:
        """:meth:`run`, started again ``retry_s`` after each failure, until :meth:`stop` or cancellation: what a
        service's background consumer runs.

        A broker that restarts under a running consumer ends :meth:`run` (its group and offsets are gone, so the
        next commit fails), and so does a database that goes away. What was not committed comes again to the
        consumer started anew, and what was processed is skipped by its record.
        """
        while not self._stop.is_set():
            try:
                await self.run()
            except asyncio.CancelledError:
                self.stop()
                raise
            except Exception as exc:  # a broker or the database away: start again
                log.warning("consumer %s interrupted, starting again: %s", self.group, type(exc).__name__)
                await asyncio.sleep(retry_s)

    async def handle_together(self, batch: Sequence[Event]) -> bool:
        """Process ``batch`` (a partition's events, in order) in one transaction: each claimed and handled as
        :meth:`handle` does, and one commit for all. Whether it was done; False when a handler failed: then nothing
        of the batch was written, and the caller handles its events one by one (which retries or dead-letters the
        failing one alone). A database away raises, as in :meth:`handle`.

        One commit instead of one per event, and one claim: a busy consumer's batch costs the database one
        transaction and one statement besides its handlers'.
        """
        try:
            async with postgres.transaction() as conn:
                fresh = await self._claim_and_handle(conn, batch)
        except _HandlerRaised:
            return False
        self.handled += fresh
        self.skipped += len(batch) - fresh
        return True

    async def handle(self, event: Event) -> Outcome:
        """Process one event exactly once in effect; returns what came of it.

        ``duplicate``: it was processed (or dead-lettered) before. ``dead-lettered``: the
        handler failed on it for the last allowed time. A failure with attempts left raises
        :class:`HandlerFailed` once the attempt is counted; any other error (the database
        away) propagates as it is and counts no attempt.
        """
        try:
            async with postgres.transaction() as conn:
                if not await self._claim_and_handle(conn, [event]):
                    self.skipped += 1
                    return "duplicate"
        except _HandlerRaised as raised:
            return await self._failed(event, raised.cause)
        self.handled += 1
        return "handled"

    async def _claim_and_handle(self, conn: asyncpg.Connection, events: Sequence[Event]) -> int:
        """Claim ``events`` for this group in one statement and run the handler on each fresh one, in order, in the
        caller's transaction on ``conn``: how many were fresh (the others were processed or dead-lettered before, and
        an event twice in ``events`` is handled once). The handler's own failure is raised as
        :class:`_HandlerRaised`, so the caller tells it from the database's, which counts no attempt."""
        claimed = {r["event_id"] for r in await conn.fetch(_CLAIM, self.group, [e.id for e in events])}
        fresh = []
        for event in events:
            if event.id in claimed:
                claimed.discard(event.id)
                fresh.append(event)
        if fresh:
            try:
                await self.handle_many(conn, fresh)
            except Exception as exc:
                raise _HandlerRaised(exc) from exc
        return len(fresh)

    async def _failed(self, event: Event, failure: Exception) -> Outcome:
        """Count a failed attempt; at the last one, move the event to the dead letters (one transaction)."""
        error_type, error_message = _error_of(failure)
        async with postgres.transaction() as conn:
            counted = await conn.fetchrow(
                "INSERT INTO event_attempts (consumer, event_id, attempts, error_type, error_message) "
                "VALUES ($1, $2, 1, $3, $4) ON CONFLICT (consumer, event_id) DO UPDATE SET "
                "attempts = event_attempts.attempts + 1, error_type = EXCLUDED.error_type, "
                "error_message = EXCLUDED.error_message, last_failed_at = now() "
                "RETURNING attempts, first_failed_at",
                self.group,
                event.id,
                error_type,
                error_message,
            )
            attempts = counted["attempts"]
            dead = attempts >= self.max_attempts
            if dead:
                await self._bury(conn, event, attempts, error_type, error_message, counted["first_failed_at"])
        if dead:
            self.dead_lettered += 1
            log.error(
                "consumer %s moved event %s (%s) to its dead letters after %d failed attempts: %s",
                self.group, event.id, event.topic, attempts, error_type,
            )
            return "dead-lettered"
        log.warning(
            "consumer %s: handler failed on event %s (attempt %d of %d): %s",
            self.group, event.id, attempts, self.max_attempts, error_type,
        )
        raise HandlerFailed(event.id, attempts) from failure

    async def _bury(
        self,
        conn: asyncpg.Connection,
        event: Event,
        attempts: int,
        error_type: str,
        error_message: str,
        first_failed_at: datetime,
    ) -> None:
        """Move ``event`` to this consumer's dead letters, on ``conn`` (in the caller's transaction)."""
        await conn.execute(
            "INSERT INTO dead_letters (consumer, event_id, topic, key, payload, headers, occurred_at, "
            "attempts, error_type, error_message, first_failed_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (consumer, event_id) DO NOTHING",
            self.group,
            event.id,
            event.topic,
            event.key,
            event.data,
            event.headers,
            event.occurred_at,
            attempts,
            error_type,
            error_message,
            first_failed_at,
        )
        # Processed, as far as delivery goes: a redelivery is skipped; only a replay runs it again.
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.group,
            event.id,
        )
        await conn.execute("DELETE FROM event_attempts WHERE consumer = $1 AND event_id = $2", self.group, event.id)

    async def _undecodable(self, msg: Any, failure: Exception) -> None:
        """Move a message that is not an event of ours straight to the dead letters: reading it again cannot help.

        It keeps its event id when its headers carry a valid one, else gets one derived from where it
        lies in the log; its value is kept as text under ``undecodable``.
        """
        headers = {k: v.decode(errors="replace") for k, v in (msg.headers or [])}
        try:
            event_id = uuid.UUID(headers.get("event_id", ""))
        except ValueError:
            event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"kafka:{msg.topic}/{msg.partition}/{msg.offset}")
        # PostgreSQL's jsonb refuses NUL characters, which arbitrary bytes may hold.
        raw = (msg.value or b"").decode(errors="replace").replace("\x00", "\ufffd")
        event = Event(
            id=event_id,
            topic=msg.topic,
            key=msg.key.decode(errors="replace") if msg.key is not None else None,
            data={"undecodable": raw[:_UNDECODABLE_CHARS]},
            occurred_at=datetime.fromtimestamp(msg.timestamp / 1000, UTC),
            headers=headers,
        )
        error_type, error_message = _error_of(failure)
        async with postgres.transaction() as conn:
            await self._bury(conn, event, 1, error_type, error_message, datetime.now(UTC))
        self.dead_lettered += 1
        log.error(
            "consumer %s moved an undecodable message (%s, partition %d, offset %d) to its dead letters: %s",
            self.group, msg.topic, msg.partition, msg.offset, error_type,
        )

    def backoff_s(self, attempts: int) -> float:
        """Seconds to wait before the next attempt after ``attempts`` failures."""
        return min(_MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (attempts - 1))

    async def deliver_replays(self) -> int:
        """Deliver the replays requested for this consumer's dead letters; returns how many succeeded.

        Each runs the handler in the transaction that marks the letter ``replayed`` (a row lock,
        skipped by other replicas, makes it one delivery); a handler that fails again has its
        writes undone and the letter goes back to ``dead`` with the new error.
        """
        delivered = 0
        while not self._stop.is_set():
            failure: Exception | None = None
            async with postgres.transaction() as conn:
                row = await conn.fetchrow(
                    "SELECT * FROM dead_letters WHERE consumer = $1 AND status = 'replaying' "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                    self.group,
                )
                if row is None:
                    break
                letter = DeadLetter.from_row(row)
                try:
                    async with conn.transaction():  # a savepoint: a failure undoes the handler's writes only
                        await self.handle_many(conn, [letter.event])
                except Exception as exc:
                    failure = exc
                    error_type, error_message = _error_of(exc)
                    await conn.execute(
                        "UPDATE dead_letters SET status = 'dead', attempts = attempts + 1, error_type = $2, "
                        "error_message = $3, dead_at = now() WHERE id = $1",
                        letter.id,
                        error_type,
                        error_message,
                    )
                else:
                    await conn.execute(
                        "UPDATE dead_letters SET status = 'replayed', replayed_at = now() WHERE id = $1", letter.id
                    )
            if failure is None:
                delivered += 1
                self.replayed += 1
                log.info("consumer %s replayed dead letter %d (event %s)", self.group, letter.id, letter.event_id)
            else:
                log.warning(
                    "consumer %s: replay of dead letter %d failed: %s", self.group, letter.id, type(failure).__name__
                )
        return delivered

    async def run(self) -> None:
        """Consume until :meth:`stop`, committing offsets after each batch, retrying and dead-lettering failures."""
        consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=get_settings().kafka_bootstrap, group_id=self.group, **self.options
        )
        await consumer.start()
        loop = asyncio.get_running_loop()
        waiting: dict[TopicPartition, float] = {}  # partitions paused after a failure: when to resume them
        next_replays = 0.0
        try:
            while not self._stop.is_set():
                now = loop.time()
                due = [tp for tp, at in waiting.items() if at <= now]
                for tp in due:
                    del waiting[tp]
                if resumable := [tp for tp in due if tp in consumer.assignment()]:
                    consumer.resume(*resumable)
                if now >= next_replays:
                    await self.deliver_replays()
                    next_replays = loop.time() + self.replay_poll_s
                wait_s = min([0.5, next_replays - now, *(at - now for at in waiting.values())])
                batches = await consumer.getmany(timeout_ms=max(10, int(wait_s * 1000)), max_records=200)
                done: dict[TopicPartition, int] = {}
                for tp, messages in batches.items():
                    together = _all_decoded(messages) if len(messages) > 1 else None
                    if together is not None:
                        wanted = [e for e in together if self._wanted(e)]
                        if not wanted or await self.handle_together(wanted):
                            self.passed_over += len(together) - len(wanted)
                            done[tp] = messages[-1].offset + 1
                            continue
                    for msg in messages:
                        try:
                            event = _decode(msg)
                        except _UNDECODABLE as exc:
                            await self._undecodable(msg, exc)
                            done[tp] = msg.offset + 1
                            continue
                        if not self._wanted(event):
                            self.passed_over += 1
                            done[tp] = msg.offset + 1
                            continue
                        try:
                            await self.handle(event)
                        except HandlerFailed as failed:
                            if tp in consumer.assignment():
                                # Fetch it again, after the backoff; the partition's later events wait behind it.
                                consumer.seek(tp, msg.offset)
                                consumer.pause(tp)
                                waiting[tp] = loop.time() + self.backoff_s(failed.attempts)
                            break
                        done[tp] = msg.offset + 1
                if done:
                    # The client retries a commit for as long as the broker calls the error retriable: after a
                    # broker restart that is for ever (the topic is unknown to it). Bounded, the run ends instead,
                    # and run_until_stopped starts a new member, which joins afresh.
                    await asyncio.wait_for(consumer.commit(done), self.commit_timeout_s)
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
