"""Group commit: the items that concurrent requests of a process hand over, written together.

A request hands its item over and waits for its outcome. When nothing of its key is being written, a batch starts
after the event loop's next two turns (no timer: microseconds when the loop is idle); while one is out, the items
that follow queue, and the next batch takes them all (at most ``max_batch``). So an idle process writes each item
at once, with no delay set, and a busy one writes about as many a batch as requests arrive in one batch's time:
one transaction (one WAL flush, one round trip) for many.

Why two turns: the requests that one batch answers go on together, and most hand their next item to the next
stage at about the same moment. But each is woken a turn or two after the batch ends (its future's callbacks, then
its task), so the first of them to submit would start the next batch alone, and its siblings would queue behind it.
Waiting two turns lets them join it. Measured on the checkout saga in one process (bench/orders_profile.py, 16
orders at a time): 13.6-19.4 statements an order without the turns, 6.8-7.6 with them, and 117-138 against 176
orders/s; 64 at a time: 5.1 against 1.1-1.8 statements, 224 against 262-269 orders/s (bench/RESULTS.md, issue 7).

    ISSUES = GroupCommit(write_issues)          # async def write_issues(series, items) -> outcomes, in order
    number = await ISSUES.submit(series, item)  # the item's outcome, or the exception it came to

The same machinery reads together: look-ups that requests make at the same moment (a cart's SKUs, a country's
tax rates) are one query for all, each answered from a read that began after it asked -- never an older one.

The writer returns one outcome per item, in order: a value, or an exception for that item alone. If the writer
itself raises, every item of its batch gets that exception. A request that stops waiting does not stop its item:
the batch is written by a task of its own, which passes over the outcome nobody waits for.

A ``spacing`` makes each batch of a key begin at least that long after the one before it began, where items come
at least twice in a spacing (by the mean time between them, recent ones weighing most): what comes meanwhile waits
and goes in the next, unless ``enough`` items wait. Where they come less often, a wait would mostly hold one item
back alone, so none is waited; and an item that finds the key quiet for longer than the spacing goes at once. It
is for the first stage of a pipeline whose requests arrive apart (the checkout saga's creations): spaced so, they
leave in waves, and each wave goes on through the later stages as one batch a stage. Measured through the
entrypoint at 100 orders/s, where orders arrive about 10 ms apart: without it most batches hold one order and an
order costs what it costs alone (bench/RESULTS.md, issue 7).

Items that have no siblings to wait for (a request's admission at the edge) take ``turns=0``: a batch starts at
once, and only the items that come while it is out wait, for the next.

Batches are per event loop as well as per key: a loop that ended with a batch out leaves nothing that holds up
another loop's items.

A writer's PostgreSQL statements go through the batch pool, whose connections plan each statement once
(``nexus_ray.stores.postgres.pool`` says why). Its commits wait for the WAL flush unless every item of the batch was
handed over where commits may be relaxed (``postgres.relaxed``, the checkout saga's steps): one item whose request
answers right after it makes the whole batch wait.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from nexus_ray.stores import postgres

#: The event loop's turns a new batch waits before it takes what is waiting.
_TURNS = 2

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

Writer = Callable[[K, list[T]], Awaitable[Sequence[R | BaseException]]]


def _wake(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


class GroupCommit(Generic[K, T, R]):
    """Items of one key written in batches by ``write`` (see the module's docstring)."""

    def __init__(self, write: Writer[K, T, R], *, max_batch: int = 200, turns: int = _TURNS,
                 spacing: Callable[[], float] | None = None, enough: int = 16) -> None:
        self.write = write
        self.max_batch = max_batch
        #: The loop's turns a new batch waits (0: it goes at once, and only those that come while it is out wait).
        self.turns = turns
        #: Seconds from one batch's beginning to the next one's at the earliest, read as each batch ends...
        self.spacing = spacing
        #: ... unless this many items wait for it: a batch that large gains little from waiting for more.
        self.enough = enough
        #: Per loop and key, while a drain waits out the spacing: what wakes it early, once enough items wait.
        self._spaced: dict[tuple[asyncio.AbstractEventLoop, K], asyncio.Future[None]] = {}
        #: Per key, with a spacing: the loop's time of the last item, and the mean time between items (recent ones
        #: weigh most). The spacing is waited only where items come at least twice in it.
        self._pace: dict[K, tuple[float, float]] = {}
        #: Per loop and key, the items waiting: each with its outcome and whether its commit may be relaxed.
        self._waiting: dict[tuple[asyncio.AbstractEventLoop, K], list[tuple[T, asyncio.Future[R], bool]]] = {}
        #: Per loop and key, what writes its batches now: a task, or None for a request writing its own (below).
        self._draining: dict[tuple[asyncio.AbstractEventLoop, K], asyncio.Task[None] | None] = {}

    async def submit(self, key: K, item: T) -> R:
        """Hand ``item`` over to be written with the others of ``key``: its outcome, once its batch is written."""
        loop = asyncio.get_running_loop()
        slot = (loop, key)
        if self.turns == 0 and slot not in self._draining:
            return await self._alone(slot, item)
        if self.spacing is not None:
            self._paced(key, loop.time())
        done: asyncio.Future[R] = loop.create_future()
        queue = self._waiting.setdefault(slot, [])
        queue.append((item, done, postgres.relaxed.get()))
        if slot not in self._draining:
            self._draining[slot] = loop.create_task(self._drain(slot))
        elif len(queue) >= self.enough and (spaced := self._spaced.get(slot)) is not None:
            _wake(spaced)
        # Not shielded: cancelling the wait cancels only ``done``, which the batch's task then passes over; a shield
        # would cost every item a second future and one more turn of the loop before its request wakes.
        return await done

    async def _alone(self, slot: tuple[asyncio.AbstractEventLoop, K], item: T) -> R:
        """With ``turns=0`` and nothing of its key out: the item is written at once, in its own batch, by its
        request's task (no task, future or turn of the loop of its own). What comes meanwhile waits, and goes next,
        in a batch task. A request cancelled while it writes stops its item, as any awaited call would."""
        self._draining[slot] = None
        try:
            outcome = (await self._written(slot[1], [(item, postgres.relaxed.get())]))[0]
        finally:
            del self._draining[slot]
            if slot in self._waiting:
                self._draining[slot] = slot[0].create_task(self._drain(slot))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _drain(self, slot: tuple[asyncio.AbstractEventLoop, K]) -> None:
        try:
            for _ in range(self.turns):  # the siblings of the request that started this (see the module's docstring)
                await asyncio.sleep(0)
            while queue := self._waiting.pop(slot, []):
                if len(queue) > self.max_batch:
                    queue, self._waiting[slot] = queue[: self.max_batch], queue[self.max_batch:]
                began = slot[0].time()
                await self._settle(slot[1], queue)
                if self.spacing is not None:
                    await self._space(slot, self.spacing(), began)
        finally:
            self._draining.pop(slot, None)

    def _paced(self, key: K, now: float) -> None:
        """Count an item of ``key`` handed over at ``now`` into the mean time between items: a moving mean in
        which each gap weighs an eighth, the first gap taken whole."""
        last, gap = self._pace.get(key, (None, math.inf))
        if last is not None:
            gap = now - last if gap == math.inf else gap + (now - last - gap) / 8
        self._pace[key] = (now, gap)

    async def _space(self, slot: tuple[asyncio.AbstractEventLoop, K], spacing: float, began: float) -> None:
        """Wait until ``spacing`` seconds after ``began``, or until :attr:`enough` items wait; not at all where
        items come less than twice in a spacing (a wait would mostly hold one item back, alone). Still draining
        meanwhile, so what comes queues for the next batch; nothing queued by then ends the drain, and the next
        item goes at once."""
        loop = slot[0]
        until = began + spacing
        if (until <= loop.time() or len(self._waiting.get(slot, ())) >= self.enough
                or 2 * self._pace.get(slot[1], (0.0, math.inf))[1] > spacing):
            return
        wake: asyncio.Future[None] = loop.create_future()
        timer = loop.call_at(until, _wake, wake)
        self._spaced[slot] = wake
        try:
            await wake
        finally:
            timer.cancel()
            del self._spaced[slot]

    async def _written(self, key: K, batch: list[tuple[T, bool]]) -> Sequence[R | BaseException]:
        """The outcomes of a batch's items (each with whether its commit may be relaxed), as the writer gave them."""
        marked = postgres.in_batch.set(True)  # the writer's statements go to the batch pool (postgres.pool)
        relaxed = postgres.relaxed.set(all(relax for _, relax in batch))
        try:
            return await self.write(key, [item for item, _ in batch])
        finally:
            postgres.relaxed.reset(relaxed)
            postgres.in_batch.reset(marked)

    async def _settle(self, key: K, batch: list[tuple[T, asyncio.Future[R], bool]]) -> None:
        try:
            outcomes = await self._written(key, [(item, relax) for item, _, relax in batch])
        except BaseException as exc:  # nothing of the batch was written
            for _, done, _ in batch:
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, done, _), outcome in zip(batch, outcomes, strict=True):
            if done.done():
                continue
            if isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
