"""The checkout saga's engine: steps run a group at a time, each persisted, compensated in reverse, recovered.

Persisted group by group
------------------------
An order row carries its saga: ``results`` (what each done forward step returned), ``undone``
(each compensation that ran), ``status`` and ``failure``. The forward steps run in the groups of
:data:`~.steps.PLAN`: the steps of a group at the same time (pricing beside the stock reservation, the invoice
beside the shipment), the groups one after another. Before a group runs, a ``started`` line for each of its steps
is written to ``order_saga_log`` (with the group before's ``done`` lines, in its transaction, when one group
follows another); after it, every result and a ``done`` (or ``failed``) line for each step are written
in one transaction with the order's new status and its ``order.*`` event (outbox). A runner that
dies between the two leaves an order whose log ends on ``started``: the steps without a result are run again
with the same idempotency keys (see :mod:`.steps`), so the collaborators replay what they did.

A group after the pricing that is followed at once by the next (the authorisation, the stock's commit, the
capture) is not written on its own: its lines and results, and the status it reaches with its event (the
capture's ``paid`` and ``order.paid``), go with the order's next write (the invoice's and the shipment's, which
completes it), so an order that runs straight through is written twice, not five times. A runner that dies before
that write leaves the log at the group before, and those steps are run again by their keys, as above. The
pricing's group is always written: a price read again could differ from the one the payment was authorised for.
Nothing is skipped by carrying: every line, every status the order passes through and every event is written, in
order, by the write that carries them, whether it completes the order, fails it, or records a step that did not
answer.

A step of a group that is refused fails the order, and the results of the group's steps that were done are
written with the failure, so they are compensated with the rest. A step that does not answer while another of
its group is done: the done one's result is written first, then the order waits for a later run (below), which
runs only the step still without a result.

The writes that a process's runners make at the same moment go out together: one statement and one commit for
the batch (:data:`_WRITES`, a :class:`~nexus_ray.stores.together.GroupCommit`), each write still fenced
on its own order's lease (below). So do every step's calls (each collaborator batches its own). The creations are
spaced (``order_start_spacing_ms``): where orders come at least twice in the spacing, a process starts them in
waves, and the orders of a wave then reach each later step at about the same moment and go out as one batch there;
without it, orders arriving 10 ms apart each went through every step alone (bench/RESULTS.md, issue 7).

Leases: one runner per order
----------------------------
Only the holder of the order's lease (``lease_owner``, until ``lease_until``) moves it, and every
write is fenced on it (``WHERE lease_owner = me``): a runner that lost its lease -- it stalled
past ``order_lease_s`` and recovery took the order over -- stops at its next write
(:class:`LeaseLost`) instead of racing the new runner. Each write renews the lease.

Recovery
--------
:func:`recover_forever` (every replica's background) takes unsettled orders (pending, paid,
compensating, cancelling, refunding) whose lease has run out -- their runner crashed, or gave up
on a step that did not answer -- with ``FOR UPDATE SKIP LOCKED`` so two replicas never take the
same order, and drives each on from where its log ends: forward if no step has failed, else
through the remaining compensations. A step that does not answer is retried on later passes; after
``order_max_attempts`` the order is compensated. That step may have happened all the same (its answer, not its
action, lost), so the unwinding first runs it once more with its idempotency key: the collaborator replays what
it did, or does it now, and it is undone with the others (a capture refunded, an invoice credited, a shipment
cancelled), instead of being left in place because its result was never recorded.

A request that goes away
------------------------
The requests that start or move an order (creation, capture, cancellation, refund) run through
:func:`run_on`: when the client disconnects and Serve cancels the request, the order's creation or lease and then
its saga still go on to where it settles or must wait, by the same runner, instead of stopping at the next
statement with the order leased and its stock held until recovery.

Durable where it is answered
----------------------------
A saga's commits, its own writes and its steps' (every collaborator's transactions and batches), do not wait for the
WAL flush (``postgres.relaxed``), except the write that lets the order's lease go: the last of every run of
:func:`drive`, whether the order settled, waits for its merchant or a customer's action, or backs off from a step
that did not answer. That write waits, and the WAL is flushed in order, so when a request is answered everything
the saga did before it is on disk. A crash of PostgreSQL loses at most the newest of the run's commits, a prefix of
the saga survives, and recovery goes on from it as from any crash, the collaborators replaying by their keys. The
events of those commits leave through the outbox relay, which makes them durable first
(``nexus_ray.stores.postgres.pool`` says why this is safe and what else it asks). An order that runs straight
through waits for the disk once, in its last write (the sandbox provider's own commits, which stand for another
company's system, still wait).

Compensation
------------
A refused step moves the order to ``compensating``: every done step that has a compensation is
undone in reverse order (shipment cancelled, credit note, refund or void, stock released or
returned), then the order is ``failed``. Cancellation (``cancelling`` -> ``cancelled``) undoes the
same; a refund (``refunding`` -> ``refunded``) undoes the capture and the invoice, and the stock
only when the goods came back. A compensation that is refused is recorded (``undone[step].refused``)
and the others still run: nothing is left half-undone silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.stores import postgres
from nexus_ray.stores.events import NOTIFY, outbox_insert
from nexus_ray.stores.together import GroupCommit

from .models import UNSETTLED, check_transition
from .settings import OrderSettings
from .steps import BY_NAME, PLAN, STEPS, OrderContext, Refused, Step

log = logging.getLogger(__name__)
T = TypeVar("T")

COLUMNS = ("id, customer, status, capture_method, currency, total, request, request_hash, results, undone, "
           "refund_restock, failure, attempts, lease_owner, lease_until, created_at, updated_at")
#: The columns a saga write returns: all but the order's request, which no write changes, and its results and
#: undone steps, which the runner merges into those it holds (see :func:`write`). These three are the order's bulk
#: (its results are about 4 KB of JSON by the last step), which each write would otherwise send back and decode.
_WRITTEN_COLUMNS = tuple(c for c in COLUMNS.split(", ") if c not in ("request", "results", "undone"))
_WRITTEN = ", ".join(_WRITTEN_COLUMNS)
#: An order's columns: a row read from ``orders``, or the order as a saga write left it (:func:`write`).
OrderRow = Mapping[str, Any]
#: Where each kind of unwinding ends.
SETTLES = {"compensating": "failed", "cancelling": "cancelled", "refunding": "refunded"}
#: The forward steps after which the order's status changes.
REACHES = {"capture": "paid", "ship": "completed"}


class LeaseLost(Exception):
    """This runner no longer holds the order's lease: another (recovery) moves it now."""


def new_runner() -> str:
    """A lease owner's name: the process and a fresh suffix (one per request or recovery pass)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def topic(status: str) -> str:
    return "order.created" if status == "pending" else f"order.{status}"


def event_payload(row: OrderRow) -> dict[str, Any]:
    out = {"order_id": str(row["id"]), "customer": row["customer"], "total": row["total"],
           "currency": str(row["currency"]).strip(), "status": row["status"]}
    if row["status"] == "failed" and row["failure"]:
        out["failure"] = row["failure"]
    return out


_EVENTS = ("FROM unnest($17::int8[], $18::uuid[], $19::text[], $20::text[]) WITH ORDINALITY AS v(n, e, t, p, i) "
           "JOIN o ON o.n = v.n ORDER BY v.i")

#: The saga's writes of a moment, for many orders in one statement (one round trip, one commit): each order's
#: change (fenced on its runner's lease and on the status that runner last wrote), its log lines and its event,
#: each written only when the change was. Each changed order comes back with ``n``, its write's place in the batch.
#: A batch holds its orders' row locks until it commits; it can only wait on another process's batch for an order
#: whose lease that process lost (a fenced write still waits for the row), so two batches in a cycle need two stale
#: runners at once. The batch is sent in order id order, so they would mostly lock in the same order; should
#: PostgreSQL still find a deadlock, it aborts one batch, whose runners stop, and recovery takes their orders on
#: when their leases run out, as after any failed write. (Locking the rows in id order first, ``FOR UPDATE``, would
#: write each row twice.)
_WRITES = (
    "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[], $6::int8[], "
    "$7::int4[], $8::float8[], $9::text[], $10::text[]) WITH ORDINALITY AS u(id, status, results, undone, failure, "
    "total, attempts, let_go, runner, before, n)), "
    "o AS (UPDATE orders o SET status = u.status, results = o.results || u.results, undone = o.undone || u.undone, "
    "failure = coalesce(u.failure, o.failure), total = coalesce(u.total, o.total), "
    "attempts = coalesce(u.attempts, o.attempts), lease_owner = CASE WHEN u.let_go IS NULL THEN o.lease_owner END, "
    "lease_until = now() + make_interval(secs => coalesce(u.let_go, $11::float8)), updated_at = now() "
    "FROM u WHERE o.id = u.id AND o.lease_owner = u.runner AND o.status = u.before "
    f"RETURNING {postgres.qualified('o', _WRITTEN)}, u.n, u.runner AS writer), "
    "l AS (INSERT INTO order_saga_log (order_id, step, phase, outcome, detail, runner) "
    "SELECT o.id, v.s, v.p, v.oc, v.d::jsonb, o.writer FROM unnest($12::int8[], $13::text[], $14::text[], "
    "$15::text[], $16::text[]) WITH ORDINALITY AS v(n, s, p, oc, d, i) JOIN o ON o.n = v.n ORDER BY v.i), "
    f"e AS ({outbox_insert('v.e', 'v.t', 'o.id', 'v.p', '$21', source=_EVENTS)}) "
    f"SELECT {_WRITTEN}, n, CASE WHEN cardinality($18::uuid[]) > 0 THEN {NOTIFY} END FROM o")


#: The creations of a moment, for many orders in one statement (one round trip, one commit): each order (once per
#: customer and key: a key used already, or twice in the batch, creates nothing more), its first log lines and its
#: ``order.created`` event. The orders go in customer and key order, so two batches that share keys claim them in
#: one order and cannot deadlock on them.
_STARTS = (
    "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], "
    "$7::text[], $8::text[], $9::uuid[], $10::text[]) AS u(id, customer, capture_method, currency, request, key, "
    "hash, runner, event_id, payload)), "
    "o AS (INSERT INTO orders (id, customer, status, capture_method, currency, request, idempotency_key, "
    "request_hash, lease_owner, lease_until) SELECT id, customer, 'pending', capture_method, currency, request, key, "
    "hash, runner, now() + make_interval(secs => $11::float8) FROM u ORDER BY customer, key "
    f"ON CONFLICT (customer, idempotency_key) DO NOTHING RETURNING {COLUMNS}), "
    "l AS (INSERT INTO order_saga_log (order_id, step, phase, outcome, detail, runner) "
    "SELECT o.id, v.s, v.p, v.oc, v.d::jsonb, o.lease_owner FROM o, unnest($12::text[], $13::text[], $14::text[], "
    "$15::text[]) WITH ORDINALITY AS v(s, p, oc, d, i) ORDER BY o.id, v.i), "
    f"e AS ({outbox_insert('u.event_id', '$16', 'o.id', 'u.payload', '$17', source='FROM o JOIN u ON u.id = o.id')}) "
    f"SELECT {COLUMNS}, {NOTIFY} FROM o")

#: The steps every order starts with, announced by its creation: drive it on with ``announced=FIRST_STEPS``.
FIRST_STEPS: tuple[str, ...] = tuple(step.name for step in PLAN[0])
#: The log lines every order starts with: created, and the first group's ``started`` lines.
_FIRST_LINES: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("order", "status", "done", {"to": "pending"}), *((name, "forward", "started", {}) for name in FIRST_STEPS))


@dataclass(frozen=True)
class _Start:
    """One order's creation as :func:`start` hands it to the batch: the columns of :data:`_STARTS`, in order."""

    id: UUID
    customer: str
    capture_method: str
    currency: str
    request: dict[str, Any]
    key: str
    request_hash: str
    runner: str
    event_id: UUID
    payload: str


async def _start_together(_key: None, starts: list[_Start]) -> list[asyncpg.Record | None]:
    """The creations of a moment in one statement: each order as created, or None where its key was used."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        _STARTS, *([getattr(x, f.name) for x in starts] for f in fields(_Start)),
        settings_of(OrderSettings).order_lease_s, *([str(ln[i]) for ln in _FIRST_LINES] for i in range(3)),
        [orjson.dumps(ln[3]).decode() for ln in _FIRST_LINES], topic("pending"), {})
    made = {r["id"]: r for r in rows}
    return [made.get(x.id) for x in starts]


#: Order creations, a batch at a time per process, spaced so that orders arriving apart start (and go on) in waves.
_starts: GroupCommit[None, _Start, asyncpg.Record | None] = GroupCommit(
    _start_together, spacing=lambda: settings_of(OrderSettings).order_start_spacing_ms / 1000)


async def start(*, customer: str, request: dict[str, Any], currency: str, capture_method: str,
                idempotency_key: str, request_hash: str, runner: str) -> asyncpg.Record | None:
    """Create a pending order leased to ``runner``, with its event and its log lines (created, and the first
    group's ``started``: drive it on with ``announced=FIRST_STEPS``), in one statement with the creations asked
    at the same moment: its row, or None when the customer's key names an order already."""
    order_id = uuid.uuid4()
    payload = orjson.dumps(event_payload({"id": order_id, "customer": customer, "total": None, "currency": currency,
                                          "status": "pending"})).decode()
    with postgres.relaxing():  # the drive that follows answers after a write that waits for the disk
        return await _starts.submit(None, _Start(order_id, customer, capture_method, currency, request,
                                                 idempotency_key, request_hash, runner, postgres.new_ids(1)[0],
                                                 payload))


Line = tuple[str, str, str, dict[str, Any]]
#: An ``order.*`` event as a write hands it over: its id, its topic, its payload.
Event = tuple[UUID, str, dict[str, Any]]


@dataclass(frozen=True)
class _Unwritten:
    """What forward groups that were not written on their own left for the order's next write (see
    :func:`_forward`): their log lines and results, which the row that carries it (under :data:`_UNWRITTEN`) holds
    already, and the status they reached with the events of its moves (the row's own ``status`` stays the one the
    table holds, which the next write is fenced on). The row's ``attempts`` is the count the groups left: a move
    starts the count of the order's unanswered runs again, as a status written on its own does."""

    lines: tuple[Line, ...]
    results: dict[str, dict[str, Any]]
    status: str | None = None
    events: tuple[Event, ...] = ()


#: The key of an order row (as its runner holds it) under which its :class:`_Unwritten` part waits.
_UNWRITTEN = "_unwritten"
#: What a row without that key carries.
_NOTHING_UNWRITTEN = _Unwritten((), {})


def _status_move(row: OrderRow, before: str, after: str, *, total: int | None = None,
                 failure: dict[str, Any] | None = None) -> tuple[Line, Event]:
    """The order's move from ``before`` to ``after`` (checked against the state machine): its log line and its
    event, whose payload is the order as the move leaves it."""
    check_transition(before, after)
    changed = {**dict(row), "status": after, "total": row["total"] if total is None else total,
               "failure": row["failure"] if failure is None else failure}
    return (("order", "status", "done", {"from": before, "to": after}),
            (postgres.new_ids(1)[0], topic(after), event_payload(changed)))


async def write(row: OrderRow, runner: str, *, line: Line | None = None, lines: Sequence[Line] = (),
                status: str | None = None, results: dict[str, dict[str, Any]] | None = None,
                undone: tuple[str, dict[str, Any]] | None = None, failure: dict[str, Any] | None = None,
                total: int | None = None, let_go_s: float | None = None, attempts: int | None = None,
                starts: Sequence[str] = ()) -> OrderRow:
    """One fenced step of the saga, atomically: the order's change, its log lines, its events. Returns the order.

    ``row`` is the order as this runner last wrote (or read) it: while the runner holds the lease nobody else
    writes the order, so its status is the one the table holds, which the statement is fenced on. The change
    starts from it, or from the status that the groups the row carries reached (:class:`_Unwritten`, written
    here first, with their lines and events), and is checked against the state machine here (a refused
    transition writes nothing). ``let_go_s``: give the lease up;
    recovery may take the order that many seconds from now. ``line``, then ``lines``: the log lines. ``results``:
    the forward steps' results by step. ``starts``: the forward steps that run next, whose ``started`` lines are
    written last (so a group that follows another costs one write, not two).
    """
    unwritten: _Unwritten = row.get(_UNWRITTEN, _NOTHING_UNWRITTEN)
    before = row["status"]  # as the table holds it: the write is fenced on it
    reached = unwritten.status or before  # as the groups this write carries left it
    after = status or reached
    move = _status_move(row, reached, after, total=total, failure=failure) if after != reached else None
    written = list(unwritten.lines)
    results = {**unwritten.results, **(results or {})}
    if line is not None:
        written.append(line)
    written += lines
    events = list(unwritten.events)
    if move is not None:
        written.append(move[0])
        events.append(move[1])
    written += ((name, "forward", "started", {}) for name in starts)
    if attempts is None and _UNWRITTEN in row:  # the count as the carried groups left it
        attempts = row["attempts"]
    change = _Write(row["id"], after, results, dict([undone]) if undone else {}, failure, total, attempts,
                    let_go_s, runner, before, written, events)
    # The write that lets the lease go ends a run of the saga: it waits for the disk, and with it all before it.
    with postgres.relaxing(postgres.relaxed.get() and let_go_s is None):
        new = await _writes.submit(None, change)
    if new is None:  # the lease was taken over (recovery), so the order is not as this runner last saw it
        raise LeaseLost(str(row["id"]))
    return _merged(row, change, new)


def _merged(row: OrderRow, change: _Write, new: asyncpg.Record) -> OrderRow:
    """The order as ``change`` left it, from what its statement returned (``new``, the :data:`_WRITTEN` columns) and
    the bulk ``row`` holds: its request (never changed) and its results and undone steps with this write's added,
    as the statement merged them (jsonb's ``||`` on objects: a key written again takes the new value). ``row``'s
    are the order's own while its runner holds the lease, since only a fenced write changes them, and this one's
    fence held."""
    return {**{c: new[c] for c in _WRITTEN_COLUMNS}, "request": row["request"],
            "results": {**row["results"], **change.results}, "undone": {**row["undone"], **change.undone}}


@dataclass(frozen=True)
class _Write:
    """One order's change as :func:`write` hands it to the batch: the columns of :data:`_WRITES`, in order."""

    id: UUID
    status: str
    results: dict[str, Any]
    undone: dict[str, Any]
    failure: dict[str, Any] | None
    total: int | None
    attempts: int | None
    let_go_s: float | None
    runner: str
    before: str
    lines: list[Line]
    events: list[Event]


async def _write_together(_key: None, writes: list[_Write]) -> list[asyncpg.Record | None]:
    """The writes of a moment in one statement: each order as written (its :data:`_WRITTEN` columns), or None where
    its fence held it back."""
    batch = sorted(writes, key=lambda w: w.id)
    lines = [(n, *ln) for n, w in enumerate(batch, 1) for ln in w.lines]
    events = [(n, *e) for n, w in enumerate(batch, 1) for e in w.events]
    dumps = orjson.dumps
    pg = await postgres.pool()
    rows = await pg.fetch(
        _WRITES, [w.id for w in batch], [w.status for w in batch], [w.results for w in batch],
        [w.undone for w in batch], [w.failure for w in batch], [w.total for w in batch], [w.attempts for w in batch],
        [w.let_go_s for w in batch], [w.runner for w in batch], [w.before for w in batch],
        settings_of(OrderSettings).order_lease_s, [x[0] for x in lines], [x[1] for x in lines], [x[2] for x in lines],
        [x[3] for x in lines], [dumps(x[4] or {}).decode() for x in lines], [x[0] for x in events],
        [x[1] for x in events], [x[2] for x in events], [dumps(x[3]).decode() for x in events], {})
    written = {id(batch[r["n"] - 1]): r for r in rows}
    return [written.get(id(w)) for w in writes]


#: The saga's writes, a batch at a time per process: while one is out, those that follow queue for the next.
_writes: GroupCommit[None, _Write, asyncpg.Record | None] = GroupCommit(_write_together)


def context(row: OrderRow) -> OrderContext:
    return OrderContext(id=str(row["id"]), customer=row["customer"], currency=str(row["currency"]).strip(),
                        total=row["total"], request=row["request"], results=dict(row["results"]),
                        refund_restock=row["refund_restock"], capture_method=row["capture_method"])


def _unwinds(row: OrderRow) -> list[str]:
    """The done steps still to undo for the order's status, last first."""
    if row["status"] == "refunding":
        plan = {"capture", "invoice"} | ({"reserve"} if row["refund_restock"] else set())
    else:
        plan = {s.name for s in STEPS}
    return [s.name for s in reversed(STEPS) if s.compensate is not None and s.name in plan
            and s.name in row["results"] and s.name not in row["undone"]]


async def _interrupted(row: OrderRow, runner: str, step: str, phase: str, exc: BaseException) -> None:
    """A step did not answer: leave the order for a later run (backing off), or give up and compensate."""
    s = settings_of(OrderSettings)
    attempts = row["attempts"] + 1
    detail = {"error": type(exc).__name__, "attempt": attempts}
    log.warning("order %s: %s step %s did not answer (%s), attempt %d", row["id"], phase, step,
                type(exc).__name__, attempts)
    if phase == "forward" and attempts >= s.order_max_attempts:
        failure = {"step": step, "problem": {"status": 503, "detail": f"the {step} step did not answer in "
                                             f"{attempts} attempts", "code": "step_unanswered"}}
        await write(row, runner, line=(step, phase, "interrupted", detail), status="compensating",
                    failure=failure, attempts=0, let_go_s=0)
        return
    await write(row, runner, line=(step, phase, "interrupted", detail), attempts=attempts,
                let_go_s=min(2.0 ** attempts, 60.0))


async def drive(order_id: UUID, runner: str, *, capture_now: bool = False, row: OrderRow | None = None,
                announced: Sequence[str] = ()) -> OrderRow:
    """Move the order on while ``runner`` holds its lease, until it settles or must wait; returns its row.

    ``capture_now``: an ``authorized`` order (manual capture) goes on to capture. ``row``: the order
    as ``runner`` just wrote it, if it has it (else it is read). While the runner holds the lease
    nobody else writes the order, so the row each fenced write returns is the order as it stands.
    ``announced``: the forward steps whose ``started`` lines that write made (they are not written again).
    Its commits, but the last, do not wait for the disk (see the module's docstring).
    """
    with postgres.relaxing():
        return await _drive(order_id, runner, capture_now=capture_now, row=row, announced=announced)


async def _drive(order_id: UUID, runner: str, *, capture_now: bool, row: OrderRow | None,
                 announced: Sequence[str]) -> OrderRow:
    pg = await postgres.pool()
    try:
        if row is None:
            row = await pg.fetchrow(f"SELECT {COLUMNS} FROM orders WHERE id = $1", order_id)
        while True:
            assert row is not None
            if row["lease_owner"] != runner:
                return row
            status = row["status"]
            if status in ("pending", "paid") or (status == "authorized" and capture_now):
                row, announced = await _forward(row, runner, announced)
            elif status in SETTLES:
                row = await _unwind(row, runner)
            else:
                return await write(row, runner, let_go_s=0)
    except LeaseLost:
        log.info("order %s: lease lost to another runner", order_id)
        # The order as the runner that took it over has it: in progress, as any read of an order in progress.
        row = await pg.fetchrow(f"SELECT {COLUMNS} FROM orders WHERE id = $1", order_id)
        assert row is not None
        return row


#: Changes of orders that requests started, held here so that they run on when their request stops waiting.
_running: set[asyncio.Task[Any]] = set()


async def run_on(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, a request's change of an order (its creation, capture, cancellation or refund, and the saga
    it drives), to its end even when the request stops waiting for it; its outcome to the request while it waits.

    Serve cancels a request whose client went away (a timeout, a closed connection). Stopped there, at its next
    statement, the order would keep its runner's lease with its stock held, and wait for recovery
    (``order_lease_s``), while a retry of the request with the same key was answered 202 in the meantime; or its
    creation or lease would be written with nobody left to drive it."""
    task = asyncio.get_running_loop().create_task(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_unwaited)
        raise


def _unwaited(task: asyncio.Task[Any]) -> None:
    """A change whose request stopped waiting has ended: its failure is logged here, since nobody else sees it (the
    order keeps the runner's lease, and recovery takes it on when that runs out)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("an order's change, which its request stopped waiting for, stopped: %s", type(exc).__name__)


def _next_group(results: Collection[str]) -> list[Step]:
    """The steps without a result of the first group of the plan that has one."""
    for group in PLAN:
        todo = [step for step in group if step.name not in results]
        if todo:
            return todo
    return []


def _waits_for_capture(names: Collection[str], status: str, capture_method: str) -> bool:
    """Whether an order whose next steps are ``names`` stops here for its merchant's capture (manual capture)."""
    return "commit_stock" in names and capture_method == "manual" and status == "pending"


def _next_forward(results: Collection[str], status: str, capture_method: str) -> tuple[str, ...]:
    """The forward steps that run next for an order with these results and status, if they run at once."""
    names = tuple(step.name for step in _next_group(results))
    return () if _waits_for_capture(names, status, capture_method) else names  # none: it settles, or waits


def _priced_wrong(result: dict[str, Any], currency: str) -> dict[str, Any] | None:
    """The price step's result as a refusal, when the catalog did not price the cart as the order needs."""
    if result.get("currency") != currency or not isinstance(result.get("total"), int):
        return {"status": 422, "detail": "the catalog priced the cart in another currency", "code": "pricing_mismatch"}
    return None


async def _forward(row: OrderRow, runner: str,
                   announced: Sequence[str]) -> tuple[OrderRow, tuple[str, ...]]:
    """Runs the order's next forward group (its steps at the same time): (the order as written, the steps announced
    for after it)."""
    todo = _next_group(row["results"])
    if not todo:  # every step done (a crash after the last one's result, before its status): settle
        return await write(row, runner, status="completed", let_go_s=0), ()
    names = tuple(step.name for step in todo)
    if _waits_for_capture(names, row["status"], row["capture_method"]):
        return await write(row, runner, line=("commit_stock", "forward", "skipped", {"waiting": "manual capture"}),
                           status="authorized", let_go_s=0), ()
    if tuple(announced) != names:
        row = await write(row, runner, lines=[(name, "forward", "started", {}) for name in names])
    ctx = context(row)
    outcomes = await asyncio.gather(*(step.forward(ctx) for step in todo), return_exceptions=True)
    done: dict[str, dict[str, Any]] = {}
    refused: tuple[str, dict[str, Any]] | None = None  # the first in the plan's order
    unanswered: tuple[str, BaseException] | None = None
    for step, out in zip(todo, outcomes, strict=True):
        if isinstance(out, (LeaseLost, asyncio.CancelledError)):
            raise out
        if isinstance(out, Refused):
            refused = refused or (step.name, out.problem)
        elif isinstance(out, BaseException):
            unanswered = unanswered or (step.name, out)
        elif step.name == "price" and (wrong := _priced_wrong(out, str(row["currency"]).strip())) is not None:
            refused = refused or (step.name, wrong)
        else:
            done[step.name] = out
    total = done["price"]["total"] if "price" in done else None
    lines: list[Line] = [(name, "forward", "done", {"id": result.get("id")}) for name, result in done.items()]
    if refused is not None:
        name, problem = refused
        return await write(row, runner, lines=[*lines, (name, "forward", "failed", problem)], results=done,
                           total=total, status="compensating", failure={"step": name, "problem": problem}), ()
    if unanswered is not None:
        if done:  # recorded, so that they are not lost if the order is compensated
            row = await write(row, runner, lines=lines, results=done, total=total)
        await _interrupted(row, runner, unanswered[0], "forward", unanswered[1])
        raise LeaseLost(str(row["id"])) from None  # let go: a later run takes it on
    reaches = next((REACHES[name] for name in reversed(names) if name in REACHES), None)
    after = _next_forward({*row["results"], *done}, reaches or row["status"], row["capture_method"])
    if after and "price" in row["results"]:
        # Not written on its own: the next group runs at once, and the price is written (a price read again could
        # differ). Its lines and results, and the status it reaches with its event, go with the order's next
        # write. A crash before that runs these steps again with their idempotency keys, and the collaborators
        # replay what they did, as for a step whose result was lost in a crash after it ran.
        carried: _Unwritten = row.get(_UNWRITTEN, _NOTHING_UNWRITTEN)
        status, events, moved, attempts = carried.status, carried.events, list[Line](), row["attempts"]
        if reaches is not None:
            status_line, event = _status_move(row, carried.status or row["status"], reaches)
            status, events, moved, attempts = reaches, (*events, event), [status_line], 0
        unwritten = _Unwritten(
            (*carried.lines, *lines, *moved, *((name, "forward", "started", {}) for name in after)),
            {**carried.results, **done}, status, events)
        return {**row, "results": {**row["results"], **done}, "attempts": attempts, _UNWRITTEN: unwritten}, after
    # Settled in the same write that lets the lease go: a cancellation right after finds the order free.
    new = await write(row, runner, lines=lines, results=done, total=total, status=reaches, attempts=0,
                      let_go_s=0 if reaches == "completed" else None, starts=after)
    return new, after


async def _resolve_unanswered(row: OrderRow, runner: str) -> OrderRow:
    """The forward step given up on without an answer may still have happened: the answer, not the action, may
    be what was lost (a connection cut after the collaborator committed). Before the done steps are undone, it
    is run again with its idempotency key, so the collaborator replays what it did (or does it now), and its
    result is recorded, to be undone with the others. Refused now, it never happened: marked so, nothing to undo.
    Still unanswered: the unwinding waits for a later pass, as any compensation that does not answer."""
    failure = row["failure"] or {}
    name = failure.get("step")
    if ((failure.get("problem") or {}).get("code") != "step_unanswered" or name not in BY_NAME
            or name in row["results"] or name in row["undone"] or BY_NAME[name].compensate is None):
        return row
    step = BY_NAME[name]
    row = await write(row, runner, line=(name, "forward", "started", {"resolving": "unanswered"}))
    try:
        result = await step.forward(context(row))
    except Refused as refused:
        return await write(row, runner, line=(name, "forward", "failed", refused.problem),
                           undone=(name, {"skipped": "refused when run again: it had not happened",
                                          "problem": refused.problem}))
    except (LeaseLost, asyncio.CancelledError):
        raise
    except Exception as exc:
        await _interrupted(row, runner, name, "compensate", exc)
        raise LeaseLost(str(row["id"])) from None
    return await write(row, runner, line=(name, "forward", "done", {"id": result.get("id"),
                                                                          "resolving": "unanswered"}),
                       results={name: result})


async def _unwind(row: OrderRow, runner: str) -> OrderRow:
    if row["status"] == "compensating":
        row = await _resolve_unanswered(row, runner)
    todo = _unwinds(row)
    if not todo:
        return await write(row, runner, status=SETTLES[row["status"]], let_go_s=0)
    name = todo[0]
    step = BY_NAME[name]
    assert step.compensate is not None
    row = await write(row, runner, line=(name, "compensate", "started", {}))
    try:
        out = await step.compensate(context(row))
        outcome = "done"
    except Refused as refused:
        log.warning("order %s: the compensation of %s was refused: %s", row["id"], name, refused.problem.get("code"))
        out, outcome = {"refused": refused.problem}, "failed"
    except (LeaseLost, asyncio.CancelledError):
        raise
    except Exception as exc:
        await _interrupted(row, runner, name, "compensate", exc)
        raise LeaseLost(str(row["id"])) from None
    return await write(row, runner, line=(name, "compensate", outcome, {"id": out.get("id")}),
                       undone=(name, out))


async def recover(*, limit: int = 20) -> int:
    """Take unsettled orders whose lease ran out and drive each on; returns how many were taken."""
    s = settings_of(OrderSettings)
    runner = new_runner()
    pg = await postgres.pool()
    taken = await pg.fetch(
        "UPDATE orders o SET lease_owner = $1, lease_until = now() + make_interval(secs => $2) "
        "WHERE o.id IN (SELECT id FROM orders WHERE status = ANY($3::text[]) AND lease_until < now() "
        "               ORDER BY lease_until LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING o.id",
        runner, s.order_lease_s, list(UNSETTLED), limit)
    for r in taken:
        log.info("order %s: recovered by %s", r["id"], runner)
    outcomes = await asyncio.gather(*(drive(r["id"], runner) for r in taken), return_exceptions=True)
    for r, out in zip(taken, outcomes, strict=True):
        if isinstance(out, Exception):  # its lease runs out and a later pass takes it again
            log.warning("order %s: recovery stopped: %s", r["id"], type(out).__name__)
    return len(taken)


#: Background: finish or compensate orders whose runner is gone, every ``order_recovery_interval_s``.
recover_forever = loops.every("order recovery pass", recover,
                              lambda: settings_of(OrderSettings).order_recovery_interval_s)
