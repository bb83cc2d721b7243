"""Base of the platform's stateful actors: named, restartable, and durable in Redis.

A :class:`PersistentActor` is plain Python: it holds ``state`` (a JSON-able dict) and
changes it only through :meth:`PersistentActor.commit`, which journals the operation in
a Redis Stream before it acknowledges it. After a restart (a crash, a node loss, a
redeploy) the constructor restores the state from the last snapshot plus the journal
entries after it, so an actor restart loses no acknowledged write.

Redis layout, per actor (``kind`` is the class's, ``key`` the instance's)::

    nexus:actor:{kind}:{key}:journal    Stream; one entry per op: {op, data (JSON)}
    nexus:actor:{kind}:{key}:snapshot   String; JSON {state, last_id}; the journal holds
                                        only entries after last_id

A subclass declares ``kind``, the initial state and a pure ``apply``::

    class Counter(PersistentActor):
        kind = "counter"

        def apply(self, state, op, data):
            if op == "add":
                return {**state, "n": state.get("n", 0) + data["by"]}
            raise ValueError(f"unknown op {op!r}")

        async def add(self, by: int) -> int:
            await self.commit("add", by=by)
            return self.state["n"]

and callers reach it through :func:`get_or_create`, never ``ray.remote`` directly::

    counter = get_or_create(Counter, "visits")
    await counter.add.remote(1)

Ray retries a call that was in flight when the actor died (``max_task_retries=-1``), so
an op whose reply was lost may be applied twice: prefer ops that are idempotent
("set to", "append with this id") over ops that are not ("add one").
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, ClassVar, Self, cast

import orjson
import ray
from ray.actor import ActorClass, ActorHandle

from nexus_ray.stores.cache import redis_client

logger = logging.getLogger(__name__)

NAMESPACE = "nexus"
"""Ray namespace of every platform actor, so any job or replica finds them by name."""

_REPLAY_PAGE = 1000
"""Journal entries read per XRANGE while restoring, to bound one reply's size."""


class PersistentActor:
    """Live state of one entity (a session, a fleet, a room) kept durable in Redis.

    Subclasses set :attr:`kind` and implement :meth:`apply`; they may override
    :meth:`initial_state`. Use :meth:`open` (plain Python) or :func:`get_or_create`
    (a Ray actor) to get an instance with its state restored.
    """

    kind: ClassVar[str]
    """Name of the actor type; part of the Ray actor name and of the Redis keys."""
    snapshot_every: ClassVar[int] = 100
    """Ops between snapshots: bounds the journal a restart replays."""
    max_concurrency: ClassVar[int] = 1000
    """Concurrent calls the Ray actor runs (commits still apply one at a time)."""

    def __init__(self, key: str) -> None:
        if not getattr(type(self), "kind", ""):
            raise TypeError(f"{type(self).__name__} must declare `kind`")
        self.key = key
        self.state: dict[str, Any] = self.initial_state()
        self._last_id: str | None = None
        self._since_snapshot = 0
        # True when a journal write failed with an unknown outcome: memory may lag the
        # journal, so the next commit reloads before it applies anything.
        self._stale = False
        # Serialises commits, so the journal order is the order ops were applied in.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, key: str) -> Self:
        """An instance with its state restored from Redis (for use without Ray)."""
        actor = cls(key)
        await actor.restore()
        return actor

    # -- what subclasses define -------------------------------------------------

    def initial_state(self) -> dict[str, Any]:
        """State of an actor that has never committed anything."""
        return {}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        """Return the state after ``op``; raise to refuse it.

        Must be a pure function of its arguments and must not mutate ``state``: it runs
        before the op is journaled (so a refused op is never written) and again on every
        replay, where it has to produce the same result.
        """
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------

    @property
    def journal_key(self) -> str:
        return f"nexus:actor:{self.kind}:{self.key}:journal"

    @property
    def snapshot_key(self) -> str:
        return f"nexus:actor:{self.kind}:{self.key}:snapshot"

    async def commit(self, op: str, /, **data: Any) -> str:
        """Apply ``op`` with ``data`` and make it durable; returns its journal id.

        When this returns, the op is in the Redis journal: a restarted actor replays it.
        ``data`` must be JSON-able; the state sees it as decoded from JSON (tuples
        become lists), exactly as a replay will.
        """
        payload = orjson.dumps(data)
        async with self._lock:
            if self._stale:
                await self._restore_locked()
            new_state = self.apply(self.state, op, orjson.loads(payload))
            try:
                entry_id = await redis_client().xadd(self.journal_key, {"op": op, "data": payload})
            except BaseException:
                # The entry may have been written even though the reply was lost.
                self._stale = True
                raise
            self.state = new_state
            self._last_id = _text(entry_id)
            self._since_snapshot += 1
            if self._since_snapshot >= self.snapshot_every:
                await self._snapshot_quietly()
            return self._last_id

    async def restore(self) -> None:
        """Load the snapshot and replay the journal entries after it."""
        async with self._lock:
            await self._restore_locked()
            if self._since_snapshot >= self.snapshot_every:
                await self._snapshot_quietly()

    async def snapshot_now(self) -> str | None:
        """Write a snapshot and trim the journal now; returns the last journal id it covers."""
        async with self._lock:
            await self._snapshot_locked()
            return self._last_id

    async def erase(self) -> None:
        """Delete this actor's persisted state, for entities that end (a closed session)."""
        async with self._lock:
            await redis_client().delete(self.journal_key, self.snapshot_key)
            self.state, self._last_id, self._since_snapshot, self._stale = self.initial_state(), None, 0, False

    def pid(self) -> int:
        """Process id of the actor (fault tests kill it to force a restart)."""
        return os.getpid()

    async def _restore_locked(self) -> None:
        client = redis_client()
        raw = await client.get(self.snapshot_key)
        if raw is None:
            state, last_id = self.initial_state(), None
        else:
            snapshot = orjson.loads(raw)
            state, last_id = snapshot["state"], snapshot["last_id"]
        replayed = 0
        while True:
            # "(id" is an exclusive bound: entries strictly after the snapshot.
            start = "-" if last_id is None else f"({last_id}"
            entries: list[Any] = await client.xrange(self.journal_key, min=start, max="+", count=_REPLAY_PAGE) or []
            for entry_id, fields in entries:
                state = self.apply(state, _text(fields[b"op"]), orjson.loads(fields[b"data"]))
                last_id = _text(entry_id)
            replayed += len(entries)
            if len(entries) < _REPLAY_PAGE:
                break
        self.state, self._last_id, self._since_snapshot, self._stale = state, last_id, replayed, False

    async def _snapshot_locked(self) -> None:
        if self._last_id is None:
            return  # nothing journaled: initial_state() is the snapshot
        body = orjson.dumps({"state": self.state, "last_id": self._last_id})
        # One transaction: a reader never sees the journal trimmed past a snapshot it cannot read.
        async with redis_client().pipeline(transaction=True) as pipe:
            pipe.set(self.snapshot_key, body)
            pipe.xtrim(self.journal_key, minid=_next_id(self._last_id), approximate=False)
            await pipe.execute()
        self._since_snapshot = 0

    async def _snapshot_quietly(self) -> None:
        # The op is already durable in the journal; a failed snapshot only means a longer
        # replay, and the next commit tries again.
        try:
            await self._snapshot_locked()
        except Exception:
            logger.warning("snapshot of %s:%s failed", self.kind, self.key, exc_info=True)


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes: decode_responses is off)."""
    return value.decode() if isinstance(value, bytes) else value


def _next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id`` (XTRIM MINID keeps ids >= its argument)."""
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


# -- Ray ----------------------------------------------------------------------------

_actor_classes: dict[type[PersistentActor], ActorClass] = {}


def actor_name(cls: type[PersistentActor], key: str) -> str:
    """Ray name of the actor of ``cls`` for ``key`` (unique within :data:`NAMESPACE`)."""
    return f"{cls.kind}:{key}"


def get_or_create(cls: type[PersistentActor], key: str, **options: Any) -> ActorHandle:
    """Handle to the named actor of ``cls`` for ``key``, created if it does not exist.

    The actor is detached (it outlives its creator), restarted without limit, and its
    calls are retried across restarts; its constructor restores its state from Redis.
    ``options`` override these defaults (any ``ray.remote`` actor option); they only
    take effect when this call creates the actor.
    """
    defaults: dict[str, Any] = {
        "name": actor_name(cls, key),
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": -1,
        "max_concurrency": cls.max_concurrency,
        # An actor with no resources reserves 1 CPU to be scheduled: on a small node
        # that would cap the number of sessions/rooms at the number of cores. These
        # actors wait on I/O; CPU work goes to tasks (nexus_ray.compute).
        "num_cpus": 0,
    }
    return cast(ActorHandle, _actor_class(cls).options(**{**defaults, **options}).remote(key))


def _actor_class(cls: type[PersistentActor]) -> ActorClass:
    """``cls`` as a Ray actor class whose constructor restores the state.

    Ray awaits an ``async def __init__`` of an async actor, and reruns it on every
    restart; the plain class keeps a sync constructor so it is usable without Ray.
    """
    if cls not in _actor_classes:

        class Restoring(cls):  # type: ignore[valid-type, misc]
            async def __init__(self, key: str) -> None:  # type: ignore[misc]
                super().__init__(key)
                await self.restore()

        Restoring.__name__ = cls.__name__
        # Ray names the class by its qualname in logs and the dashboard ("Ledger[ray].set"),
        # and keys its export by it: distinct from `cls`, should a job also remote `cls`.
        # cloudpickle finds no module attribute of that name, so it ships the class by value
        # rather than importing `cls` (whose constructor does not restore).
        Restoring.__qualname__ = f"{cls.__qualname__}[ray]"
        Restoring.__module__ = cls.__module__
        Restoring.__doc__ = cls.__doc__
        _actor_classes[cls] = ray.remote(Restoring)
    return _actor_classes[cls]
