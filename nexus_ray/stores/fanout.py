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
  state, such as the platform notice). ``backlog``: a queue that holds that many messages
  gets :data:`OVERFLOW` instead of more, and its stream should end rather than buffer without bound.

Messages are handed over as Redis sent them (bytes); each stream decodes its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.stores.cache import redis_client

log = logging.getLogger(__name__)

#: Put in every queue when the subscription is lost.
LOST = object()
#: Put in a queue that reached its backlog.
OVERFLOW = object()


class Fanout:
    """One subscription to ``channel`` (a pattern when it ends with ``*``), shared by this process's listeners."""

    def __init__(self, channel: str, *, name: str, latest_only: bool = False,
                 backlog: Callable[[], int] | None = None) -> None:
        self.channel = channel
        self.name = name
        self._pattern = channel.endswith("*")
        self._prefix = channel[:-1].encode() if self._pattern else b""
        self._latest_only = latest_only
        self._backlog = backlog
        self._queues: dict[str, set[asyncio.Queue[object]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self, key: str = "") -> AsyncIterator[asyncio.Queue[object]]:
        """A queue of the messages for ``key``, subscribed (confirmed by Redis) before it is yielded."""
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1 if self._latest_only else 0)
        self._queues.setdefault(key, set()).add(queue)
        try:
            if self._task is None or self._task.done():
                self._ready = asyncio.get_running_loop().create_future()
                self._task = asyncio.create_task(self._run(self._ready), name=f"{self.name}-subscription")
            if self._ready is not None:
                await asyncio.shield(self._ready)
            yield queue
        finally:
            held = self._queues.get(key, set())
            held.discard(queue)
            if not held:
                self._queues.pop(key, None)
            if not self._queues and self._task is not None:
                self._task.cancel()  # nobody listens: give the Redis connection back
                self._task = None

    def _offer(self, key: str | None, item: object) -> None:
        """Hand ``item`` to the queues of ``key`` (every queue when None)."""
        targets = self._queues.get(key, set()) if key is not None else {q for qs in self._queues.values() for q in qs}
        backlog = self._backlog() if self._backlog is not None else None
        for queue in list(targets):
            if self._latest_only:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(item)
            elif backlog is not None and queue.qsize() >= backlog:
                queue.put_nowait(OVERFLOW)
            else:
                queue.put_nowait(item)

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
