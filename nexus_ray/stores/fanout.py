"""One Redis subscription per process, fanned out to the live streams this process holds.

A live stream (a WebSocket) that waits for changes published on Redis does not subscribe by
itself: every stream would hold a Redis connection of the process's bounded pool for as
long as it lasts. A :class:`Fanout` holds ONE subscription per process -- to a channel, or to
a pattern such as ``nexus:drivers:push:*`` -- and hands each message to the in-process queues
of the streams that listen to its key (for a pattern, the part of the channel the ``*``
stands for; for a plain channel, ``""``). Redis connections follow the number of replicas,
not of clients.

* The subscription starts with the first listener and ends with the last one.
* :meth:`Fanout.listen` returns once Redis has confirmed the subscription, so a caller that
  reads the current state after it misses no change published in between.
* A lost subscription puts :data:`LOST` in every queue: the streams end, and their clients
  reconnect and read the state again.
* ``latest_only``: a queue keeps only the newest message (for messages that carry the whole
  state, such as the platform notice).

Messages are handed over as Redis sent them (bytes); each stream decodes its own.

A listener that serves many streams at once (a chat room's frames, built once for all its
members in this process) attaches a *sink* instead of a queue: :meth:`Fanout.attach` calls it
with each message, in order, on the event loop. A sink attached twice is called once, and stays
attached until the last of its attachments ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.stores.cache import redis_client

log = logging.getLogger(__name__)

#: Put in every queue when the subscription is lost.
LOST = object()


class Fanout:
    """One subscription to ``channel`` (a pattern when it ends with ``*``), shared by this process's listeners."""

    def __init__(self, channel: str, *, name: str, latest_only: bool = False) -> None:
        self.channel = channel
        self.name = name
        self._pattern = channel.endswith("*")
        self._prefix = channel[:-1].encode() if self._pattern else b""
        self._latest_only = latest_only
        self._sinks: dict[str, dict[Callable[[object], Any], int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self, key: str = "") -> AsyncIterator[asyncio.Queue[object]]:
        """A queue of the messages for ``key``, subscribed (confirmed by Redis) before it is yielded."""
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1 if self._latest_only else 0)

        def put(item: object) -> None:
            if self._latest_only and queue.full():
                queue.get_nowait()
            queue.put_nowait(item)

        async with self.attach(key, put):
            yield queue

    @contextlib.asynccontextmanager
    async def attach(self, key: str, sink: Callable[[object], Any]) -> AsyncIterator[None]:
        """Call ``sink`` with each message for ``key`` (and :data:`LOST`), subscribed before this yields."""
        sinks = self._sinks.setdefault(key, {})
        sinks[sink] = sinks.get(sink, 0) + 1
        try:
            if self._task is None or self._task.done():
                self._ready = asyncio.get_running_loop().create_future()
                self._task = asyncio.create_task(self._run(self._ready), name=f"{self.name}-subscription")
            if self._ready is not None:
                await asyncio.shield(self._ready)
            yield
        finally:
            held = self._sinks.get(key, {})
            if held.get(sink, 0) > 1:
                held[sink] -= 1
            else:
                held.pop(sink, None)
            if not held:
                self._sinks.pop(key, None)
            if not self._sinks and self._task is not None:
                self._task.cancel()  # nobody listens: give the Redis connection back
                self._task = None

    def _offer(self, key: str | None, item: object) -> None:
        """Hand ``item`` to the sinks of ``key`` (every sink when None)."""
        if key is not None:
            targets = list(self._sinks.get(key, ()))
        else:
            targets = list({sink: None for sinks in self._sinks.values() for sink in sinks})
        for sink in targets:
            try:
                sink(item)
            except Exception:  # one listener's fault must not end the subscription of the others
                log.exception("%s listener failed", self.name)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        pubsub = redis_client().pubsub()
        kind = "psubscribe" if self._pattern else "subscribe"
        try:
            await (pubsub.psubscribe(self.channel) if self._pattern else pubsub.subscribe(self.channel))
            while True:  # the confirmation: Redis has registered the subscription
                confirmation = await pubsub.get_message(timeout=None)
                if confirmation and confirmation["type"] == kind:
                    break
            ready.set_result(None)
            async for message in pubsub.listen():
                if message["type"] == "pmessage":
                    channel = message["channel"]
                    channel = channel if isinstance(channel, bytes) else str(channel).encode()
                    self._offer(channel[len(self._prefix):].decode(), message["data"])
                elif message["type"] == "message":
                    self._offer("", message["data"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s subscription lost: %s", self.name, type(exc).__name__)
            if not ready.done():
                ready.set_exception(ServiceUnavailable(f"the {self.name} feed is unavailable"))
            self._offer(None, LOST)
        finally:
            if not ready.done():
                ready.cancel()
            await pubsub.aclose()
