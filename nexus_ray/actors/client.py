"""The one way a route reaches live state in actors: handle cache, retry on a dead actor, timeout to 503.

::

    sessions = EntityClient(SessionActor, shards=4)           # many small entities, sharded
    await sessions.call(user_id, "create", session, 100)

    fleets = EntityClient(FleetActor, shards=None)            # few large entities, one actor each
    await fleets.call(fleet_id, "nearest", lat, lon, 5)

With ``shards`` set, entity ``key`` lives in shard actor :func:`~nexus_ray.actors.shards.shard_of`
(``key``) of :class:`~nexus_ray.actors.shards.EntityShard`; with ``shards=None`` it has a
named actor of its own (:func:`~nexus_ray.actors.base.get_or_create`). Either way the
actor is detached, restarted without limit, and restores state from Redis.

A call whose actor died permanently is tried once more on a fresh actor; an actor that
does not answer within the timeout (it covers a restart and its restore) gives
:class:`~nexus_ray.exceptions.ServiceUnavailable` (503), never a hung request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import ray
from ray.actor import ActorClass, ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

from nexus_ray.actors.base import NAMESPACE, PersistentActor, actor_name, get_or_create
from nexus_ray.actors.shards import EntityShard, shard_name, shard_of
from nexus_ray.exceptions import ServiceUnavailable

_shard_class: ActorClass | None = None


def _shard_actor_class() -> ActorClass:
    global _shard_class
    if _shard_class is None:
        _shard_class = ray.remote(EntityShard)
    return _shard_class


class EntityClient:
    """Calls operations of entities of one :class:`PersistentActor` class, wherever they live."""

    def __init__(
        self,
        entity_cls: type[PersistentActor],
        *,
        shards: int | None,
        timeout_s: float = 30.0,
        max_resident: int = 100_000,
        max_handles: int = 4096,
    ) -> None:
        if shards is not None and shards < 1:
            raise ValueError("shards must be at least 1 (or None: one actor per entity)")
        self.entity_cls = entity_cls
        self.shards = shards
        self.timeout_s = timeout_s
        self.max_resident = max_resident
        self._max_handles = max_handles
        self._handles: OrderedDict[str, ActorHandle] = OrderedDict()
        self.label = entity_cls.kind

    # -- where an entity lives ------------------------------------------------------

    def actor_name(self, key: str) -> str:
        """Ray name of the actor that holds entity ``key``."""
        if self.shards is None:
            return actor_name(self.entity_cls, key)
        return shard_name(self.entity_cls.kind, shard_of(key, self.shards), self.shards)

    def _handle(self, key: str) -> tuple[str, ActorHandle]:
        name = self.actor_name(key)
        cached = self._handles.get(name)
        if cached is not None:
            self._handles.move_to_end(name)
            return name, cached
        handle: ActorHandle
        if not ray.is_initialized():  # never let a call start a private Ray cluster in this process
            raise ServiceUnavailable(f"{self.label} state needs a Ray cluster and this process is not connected to one")
        if self.shards is None:
            handle = get_or_create(self.entity_cls, key)
        else:
            handle = cast(ActorHandle, (
                _shard_actor_class()
                .options(
                    name=name,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    get_if_exists=True,
                    max_restarts=-1,
                    max_task_retries=-1,
                    max_concurrency=self.entity_cls.max_concurrency,
                    num_cpus=0,  # waits on I/O; CPU work goes to tasks
                )
                .remote(self.entity_cls, shard_of(key, self.shards), self.shards, self.max_resident)
            ))
        self._handles[name] = handle
        if len(self._handles) > self._max_handles:
            self._handles.popitem(last=False)
        return name, handle

    # -- calls ------------------------------------------------------------------------

    async def call(self, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``entity(key).method(*args, **kwargs)``; 503 when its actor cannot answer in time."""
        if self.shards is None:
            return await self._run(key, lambda h: getattr(h, method).remote(*args, **kwargs))
        return await self._run(key, lambda h: h.call.remote(key, method, args, kwargs))

    async def call_shard(self, key: str, method: str, *args: Any) -> Any:
        """A method of the shard actor holding ``key`` itself (``forget``, ``stats``, ``pid``)."""
        if self.shards is None:
            raise ValueError("entities with an actor of their own have no shard")
        return await self._run(key, lambda h: getattr(h, method).remote(*args))

    async def _run(self, key: str, invoke: Callable[[ActorHandle], Any]) -> Any:
        for attempt in (1, 2):
            name, handle = self._handle(key)
            try:
                return await asyncio.wait_for(invoke(handle), self.timeout_s)
            except ActorDiedError:
                # Died for good (e.g. killed with no_restart): the next _handle creates it afresh.
                self._handles.pop(name, None)
                if attempt == 2:
                    raise ServiceUnavailable(f"the {self.label} store is unavailable; retry") from None
            except (TimeoutError, GetTimeoutError, ActorUnavailableError):
                raise ServiceUnavailable(f"the {self.label} store did not answer in time; retry") from None
        raise AssertionError("unreachable")

    async def forget(self, key: str) -> None:
        """Delete entity ``key``'s persisted state and drop it from memory (its actor too, when it has its own)."""
        if self.shards is not None:
            await self.call_shard(key, "forget", key)
            return
        try:
            handle = ray.get_actor(actor_name(self.entity_cls, key), namespace=NAMESPACE)
        except ValueError:
            await (await self.entity_cls.open(key)).erase()  # no actor: its persisted state may still exist
            return
        await asyncio.wait_for(handle.erase.remote(), self.timeout_s)
        self._handles.pop(actor_name(self.entity_cls, key), None)
        ray.kill(handle, no_restart=True)
