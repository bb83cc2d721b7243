"""Entities are not processes: many entities of one kind live in a bounded set of shard actors.

Each Ray actor is a worker process of about 100 MiB, so one actor per user (or room, or
stream) cannot scale to a platform's users. Instead an entity -- a
:class:`~nexus_ray.actors.base.PersistentActor` instance, with its own journal and
snapshot in Redis -- lives inside one of ``shards`` :class:`EntityShard` actors, chosen by
a stable hash of its key (:func:`shard_of`). The number of processes follows
configuration, not the number of users.

A shard keeps at most ``max_resident`` entities in memory and evicts the least recently
used idle ones: an entity's state is durable in Redis, so an evicted entity is restored
on its next call exactly as after a restart. A shard that dies is restarted by Ray; its
entities are restored lazily, one by one, as calls reach them.

Shard actors are named ``<kind>:shard:<i>of<n>``: a different shard count never reuses a
name, so two configurations cannot both hold one entity in memory under one name.
After changing the count, stop the old shards (``ray.kill``); their entities' state is in
Redis and the new shards restore it.

Callers use :class:`nexus_ray.actors.client.EntityClient`, never these actors directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from nexus_ray.actors.base import PersistentActor


def shard_of(key: str, shards: int) -> int:
    """The shard (0 .. shards-1) that holds entity ``key``: stable across processes and restarts."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_name(kind: str, index: int, shards: int) -> str:
    """Ray name of shard ``index`` of ``shards`` for entities of ``kind``."""
    return f"{kind}:shard:{index}of{shards}"


class EntityShard:
    """One shard: hosts many entities of one :class:`PersistentActor` class (run as a Ray actor)."""

    def __init__(self, entity_cls: type[PersistentActor], index: int, shards: int, max_resident: int) -> None:
        self.entity_cls = entity_cls
        self.index = index
        self.shards = shards
        self.max_resident = max_resident
        self._resident: OrderedDict[str, PersistentActor] = OrderedDict()
        # Restores in progress: concurrent first calls for one entity share one restore.
        self._loading: dict[str, asyncio.Future[PersistentActor]] = {}
        # Calls in progress per entity: an entity is only evicted when it has none.
        self._busy: dict[str, int] = {}
        self.restores = 0

    async def call(self, key: str, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None) -> Any:
        """``entity(key).method(*args, **kwargs)``, the entity restored first if it is not in memory."""
        if shard_of(key, self.shards) != self.index:
            # A caller with another shard count: refusing keeps one entity in one place.
            raise ValueError(f"entity {key!r} does not belong to shard {self.index} of {self.shards}")
        if method.startswith("_") or method in ("commit", "restore", "erase", "apply"):
            raise ValueError(f"{method!r} is not an entity operation")
        try:
            with self._in_use(key):
                entity = await self._entity(key)
                result = getattr(entity, method)(*args, **(kwargs or {}))
                if asyncio.iscoroutine(result):
                    result = await result
                return result
        finally:
            self._evict()

    async def forget(self, key: str) -> None:
        """Delete entity ``key``'s persisted state and drop it from memory (the entity ended)."""
        with self._in_use(key):
            entity = await self._entity(key)
            await entity.erase()
            self._resident.pop(key, None)

    def stats(self) -> dict[str, Any]:
        """What this shard holds: resident entities, restores so far, its process id."""
        return {"index": self.index, "shards": self.shards, "resident": len(self._resident),
                "max_resident": self.max_resident, "restores": self.restores, "pid": os.getpid()}

    def pid(self) -> int:
        """Process id of the shard (fault tests kill it to force a restart)."""
        return os.getpid()

    @contextlib.contextmanager
    def _in_use(self, key: str) -> Iterator[None]:
        """Count a call in progress on ``key``: an entity in use is never evicted."""
        self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._busy[key] - 1
            if left:
                self._busy[key] = left
            else:
                del self._busy[key]

    async def _entity(self, key: str) -> PersistentActor:
        entity = self._resident.get(key)
        if entity is not None:
            self._resident.move_to_end(key)
            return entity
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[PersistentActor] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            entity = await self.entity_cls.open(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a restore nobody else awaited is not an unhandled error
            raise
        finally:
            self._loading.pop(key, None)
        self.restores += 1
        self._resident[key] = entity
        future.set_result(entity)
        return entity

    def _evict(self) -> None:
        over = len(self._resident) - self.max_resident
        if over <= 0:
            return
        for key in list(self._resident):
            if over <= 0:
                break
            if key in self._busy or self._resident[key]._lock.locked():
                continue
            del self._resident[key]
            over -= 1
