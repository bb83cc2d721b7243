"""Reads kept in a process until PostgreSQL says that what they read changed.

For small tables that are read on every request and written rarely (the tax rates an invoice is priced with): a
:class:`Kept` holds what was read, by key, and a notification on :data:`CHANNEL` naming its topic drops all of it.
A writer selects :func:`notify_sql` in the statement of its change, so the notification is sent when the change
commits and never for a change rolled back, and calls :meth:`Kept.drop` after its commit, so that its own process
reads the change at once. Other processes read it once the notification reaches them: milliseconds later.

Each process listens on a connection of its own (:class:`_Listener`, started by the first read). Kept values are
used only while that connection is up and answered a ping in the last :data:`ALIVE_S` seconds; when it is lost
everything kept is dropped, since notifications may have been missed, and reads go to the database until it is
listening again. A read that overlapped a drop is not kept (:meth:`Kept.stamp`): it may have read the old value.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

import asyncpg

from nexus_ray.config import get_settings

log = logging.getLogger(__name__)

#: The channel of the notifications; each one's payload is the topic whose reads it drops.
CHANNEL = "nexus_changed"
#: How often the listening connection is pinged, and how long after its last answer kept values are still used.
PING_S = 1.0
ALIVE_S = 3.0

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def notify_sql(topic: str) -> str:
    """The SQL expression that tells every process to drop what it kept of ``topic`` when the transaction
    commits (to be selected by the statement that makes the change)."""
    if not topic.replace("_", "").isalnum():
        raise ValueError(f"a topic is letters, digits and underscores: {topic!r}")
    return f"pg_notify('{CHANNEL}', '{topic}')"


class Kept(Generic[K, V]):
    """Values read from PostgreSQL by key, at most ``max_items`` (the oldest dropped first), kept until a
    notification of ``topic``."""

    def __init__(self, topic: str, max_items: int = 10_000) -> None:
        notify_sql(topic)  # checks the name
        self.topic = topic
        self.max_items = max_items
        self._values: dict[K, V] = {}
        self._stamp = 0
        _listener.kept.setdefault(topic, []).append(self)

    def get(self, key: K) -> V | None:
        """The value kept for ``key``, or None: none kept, or the process is not listening now."""
        if not _listener.alive():
            return None
        return self._values.get(key)

    def stamp(self) -> int:
        """To take before a read from the database and give to :meth:`keep` with its result."""
        return self._stamp

    def keep(self, key: K, value: V, stamp: int) -> None:
        """Keep ``value``, read after :meth:`stamp` gave ``stamp``, unless a drop came since (or the process is not
        listening: no drop could have come)."""
        if stamp != self._stamp or self.max_items <= 0 or not _listener.alive():
            return
        self._values[key] = value
        while len(self._values) > self.max_items:
            del self._values[next(iter(self._values))]

    def drop(self) -> None:
        """Forget everything kept; reads under way are not kept either."""
        self._values.clear()
        self._stamp += 1


class _Listener:
    """The process's listening connection, run by a task of the event loop that first needed it."""

    def __init__(self) -> None:
        self.kept: dict[str, list[Kept]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answered = 0.0  # monotonic time of the last ping answered while listening; 0 when not listening
        self._conn: asyncpg.Connection | None = None

    def alive(self) -> bool:
        """Whether notifications are being received: starts the listener if it does not run in this loop."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._loop is not loop or self._task.done():
            self._start(loop)
            return False
        conn = self._conn
        return conn is not None and not conn.is_closed() and time.monotonic() - self._answered < ALIVE_S

    def _lost(self, _conn: object) -> None:
        """The connection closed: what it would have been told of may be missed from now on."""
        self._answered = 0.0
        self._drop_all()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drop_all()
        self._answered = 0.0
        self._loop = loop
        self._task = loop.create_task(self._run(), name="nexus-kept-listener")

    def _drop_all(self) -> None:
        for kept in self.kept.values():
            for k in kept:
                k.drop()

    def _heard(self, _conn: object, _pid: int, _channel: str, topic: str) -> None:
        for k in self.kept.get(topic, ()):
            k.drop()

    async def _run(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(get_settings().postgres_url, timeout=10)
                conn.add_termination_listener(self._lost)
                await conn.add_listener(CHANNEL, self._heard)
                self._drop_all()  # kept while not listening: a notification may have been missed
                self._conn = conn
                while not conn.is_closed():
                    # Notifications committed before the ping are delivered before its answer.
                    await conn.fetchval("SELECT 1", timeout=ALIVE_S)
                    self._answered = time.monotonic()
                    await asyncio.sleep(PING_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: read from it (and fail there) until it is back
                log.info("kept reads: not listening (%s)", type(exc).__name__)
            finally:
                self._conn = None
                self._answered = 0.0
                self._drop_all()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(PING_S)

    async def stop(self) -> None:
        task, self._task, self._loop = self._task, None, None
        self._answered = 0.0
        self._drop_all()
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


_listener = _Listener()


async def stop() -> None:
    """Stop listening (when the process's pools close)."""
    await _listener.stop()
