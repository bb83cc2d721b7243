"""PostgreSQL through asyncpg: one pool per process, migrations, transactions.

Migrations are SQL files ``NNNN_name.sql``: the core tables' in ``migrations/`` beside
this module, and each service's in the ``migrations/`` folder of its package (found
through the catalog, so a service owns its tables). They are applied in the order of
their version numbers across all folders -- a service that references another's
tables takes a higher number -- each in its own transaction, under a session advisory
lock: replicas that start together queue on the lock and the later ones find nothing
left to apply.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from nexus_ray.config import get_settings
from nexus_ray.stores import kept

# Any fixed 64-bit number: the advisory lock that serialises migrations cluster-wide.
_MIGRATION_LOCK = 0x6E65787573_01

_pool: asyncpg.Pool | None = None
#: The other pools of the process, by (plans once, commits without waiting for the WAL flush); see :func:`pool`.
_pools: dict[tuple[bool, bool], asyncpg.Pool] = {}
_pool_lock = asyncio.Lock()

#: True while a group commit's writer runs (nexus_ray.stores.together): :func:`pool` then hands out the
#: batch pool, whose connections plan each statement once (see :func:`pool`).
in_batch: ContextVar[bool] = ContextVar("nexus_postgres_in_batch", default=False)

#: True where the work's commits need not wait for the WAL flush, because a later commit that does wait comes before
#: anything outside the platform can depend on them (see :func:`pool`): the checkout saga's steps. A group commit
#: takes it from the items of its batch: all of them, or the batch waits (nexus_ray.stores.together).
relaxed: ContextVar[bool] = ContextVar("nexus_postgres_relaxed", default=False)


@contextmanager
def relaxing(on: bool = True) -> Iterator[None]:
    """:data:`relaxed` set to ``on`` for the block, and back to what it was after it."""
    token = relaxed.set(on)
    try:
        yield
    finally:
        relaxed.reset(token)

_VERSION_7 = (0x7 << 76) | (0b10 << 62)  # the version and variant bits of RFC 9562's version 7
_RANDOM_62 = (1 << 62) - 1


def new_ids(n: int) -> list[uuid.UUID]:
    """``n`` new row ids, time-ordered (UUID version 7, RFC 9562): the current millisecond, then the position in
    the lot (so a lot sorts in order), then 62 random bits, all from one read of the random source.

    For rows written in bulk into tables whose index is the id: random (version 4) ids put each row into another
    leaf page of the index, anywhere in it, so a statement of 1,000 rows dirtied about as many pages (and wrote
    as many full-page images to the WAL after each checkpoint); time-ordered ones all go to the index's right
    end. The 62 random bits keep an id unguessable; the time it gives away is the row's own creation time.
    """
    if n > 4096:  # the position has 12 bits
        return [i for start in range(0, n, 4096) for i in new_ids(min(4096, n - start))]
    head = time.time_ns() // 1_000_000 << 80 | _VERSION_7
    raw = os.urandom(8 * n)
    return [uuid.UUID(int=head | i << 64 | int.from_bytes(raw[8 * i:8 * i + 8]) & _RANDOM_62) for i in range(n)]


def qualified(alias: str, columns: str) -> str:
    """``columns`` (an SQL list, ``"id, status, amount"``) each qualified by ``alias``: ``"r.id, r.status, r.amount"``,
    for a statement in which another relation has columns of the same names."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def claim_then_lock(read: str, claim: str | None, *returned: str) -> str:
    """One statement that claims keys and then locks rows: ``claim`` (an ``INSERT ... RETURNING`` the keys it
    claimed, as ``returned``) in a ``WITH``, then ``read``, a locking read (``SELECT ... ORDER BY ... FOR UPDATE``)
    whose columns end with ``{claimed}``. Each row carries what the claim returned, one array a column of
    ``returned``, named ``claimed_<column>``.

    Those arrays are subqueries of the claim, computed once (an initplan) below the sort, and the sort takes every
    row before the lock above it takes one: the keys are claimed before any row is locked, as when the two go one
    after the other, in one round trip instead of two (``EXPLAIN VERBOSE`` shows the initplan under the ``Sort``
    and the ``LockRows``). A data-modifying ``WITH`` runs whether or not its result is read, so a read that
    matches no row has still claimed its keys; what it claimed must then be read back.

    With ``claim`` None: ``read`` alone, with no claimed columns.
    """
    if claim is None:
        return read.format(claimed="")
    columns = "".join(f", (SELECT array_agg({c}) FROM claim) AS claimed_{c}" for c in returned)
    return f"WITH claim AS ({claim}) {read.format(claimed=columns)}"


#: Every digit as 0, so that a run of 19 (an integer that may be beyond 64 bits, which orjson would read as a
#: float) is one plain search: a regular expression takes longer than the standard library's whole reading.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def json_text(value: Any) -> str:
    """A JSON parameter's text: orjson's, or the standard library's for what orjson does not write the same way
    (dict keys that are not strings, integers beyond 64 bits, strings that are not valid UTF-8) -- the same value
    either way. About 12 times faster than the standard library on a checkout's order row (bench/RESULTS.md,
    issue 7)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value)


def json_value(text: str) -> Any:
    """A JSON column's value: orjson's reading, or the standard library's where orjson would read otherwise (an
    integer beyond 64 bits, which orjson makes a float; a number beyond a double's range, which it refuses).
    About twice as fast as the standard library on a checkout's order row."""
    raw = text.encode()
    if raw.translate(_DIGITS_AS_ZERO).find(_LONG_NUMBER) < 0:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python objects, not strings.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json_text, decoder=json_value, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a released connection needs beyond asyncpg's own clean-up: nothing.

    asyncpg always rolls back a transaction left open and drops the connection's listeners when
    it takes a connection back. Its default reset also sends ``pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL`` -- a round trip on every release, about a quarter of all
    statements of a checkout. Nothing the platform runs on a pool connection leaves session
    state: no ``SET``, no ``LISTEN`` (the relay listens on a connection of
    its own), cursors only inside transactions, and the one session advisory lock (migrations)
    is released in a ``finally``; a connection whose release fails is closed by the pool.
    """


async def open_pool(min_size: int, max_size: int, *, plan_once: bool = False, relax: bool = False) -> asyncpg.Pool:
    """A new pool on the configured server, its connections set up as every pool of the platform's: JSON
    columns as Python objects, released without a reset round trip. For a part that must not share the
    process-wide :func:`pool` (the sandbox payment provider stands for another company's system); every other
    caller uses :func:`pool`. ``plan_once``: the connections plan each prepared statement once, for any
    parameters (``plan_cache_mode = force_generic_plan``; see :func:`pool`). ``relax``: their commits do not wait
    for the WAL flush (``synchronous_commit = off``; see :func:`pool`)."""
    s = get_settings()
    if not s.postgres_url:
        raise RuntimeError("NEXUS_POSTGRES_URL is not set: start the embedded stores or configure it")
    settings = {"plan_cache_mode": "force_generic_plan"} if plan_once else {}
    if relax:
        settings["synchronous_commit"] = "off"
    return await asyncpg.create_pool(s.postgres_url, min_size=min_size, max_size=max_size, init=_init_connection,
                                     reset=_keep_session, command_timeout=30, server_settings=settings)


async def pool() -> asyncpg.Pool:
    """The process-wide pool, created (and the schema migrated) on first use; inside a group commit's writer
    (:data:`in_batch`) or where commits may be relaxed (:data:`relaxed`), the process-wide pool for that.

    **Plans.** The batch pools' connections plan each statement once. PostgreSQL otherwise plans a prepared
    statement again for each call's parameters for as long as those plans come out cheaper than a plan for any
    parameters, and a group commit's statements (a batch's rows as arrays, ``unnest``) always do: their arrays are
    short. Their plans look rows up by key whatever the keys, so planning them again only costs. At one order a
    batch, binding (where the planning is) took 2.0-2.2 ms of PostgreSQL's 8.5-9.1 on a checkout's statements, and
    1.0 of 7.6 through the batch pool (bench/RESULTS.md, issue 7). Everything else keeps plans made for its
    parameters: a range, a skewed column or a partial index can make one plan for any value much worse.

    **Relaxed commits.** A relaxed pool's commits return without waiting for the WAL to reach the disk
    (``synchronous_commit = off``). A crash of PostgreSQL can then lose the last of them, never a part of one, and
    never one that is followed by a commit which did wait: the WAL is flushed in order, so a waiting commit makes
    every commit before it durable. What the platform lets out of the database -- an HTTP answer, an event to the
    broker, a webhook -- must therefore come after a waiting commit:

    * the checkout saga (the only relaxed work) answers its request after a write that waits (the one that lets
      the order's lease go: :mod:`nexus_ray.deployments.commerce.orders.saga`), so the answer never names what a
      crash could take back; a crash before it leaves a prefix of the saga, which recovery finishes or compensates
      as it does after any crash, the collaborators replaying by their idempotency keys;
    * the outbox relay's read of a batch makes its events durable before they are sent
      (:meth:`nexus_ray.stores.events.OutboxRelay.publish_batch`), and a webhook is claimed by a waiting commit
      before it is sent (``billing/webhooks.py``).

    Another request may read a relaxed commit's rows before they are durable (PostgreSQL's own trade,
    about ``3 x wal_writer_delay`` at most): for the saga those are an order's steps in progress.
    """
    global _pool
    if _pool is None:
        async with _pool_lock:
            if _pool is None:
                s = get_settings()
                p = await open_pool(s.postgres_pool_min, s.postgres_pool_max)
                await migrate(p)
                _pool = p
    kind = (in_batch.get(), relaxed.get())
    if kind == (False, False):
        return _pool
    if (other := _pools.get(kind)) is None:
        async with _pool_lock:
            if (other := _pools.get(kind)) is None:
                s = get_settings()
                other = _pools[kind] = await open_pool(s.postgres_pool_min, s.postgres_pool_max, plan_once=kind[0],
                                                       relax=kind[1])
    return other


async def close_pool() -> None:
    """Close the process-wide pools (tests and shutdown), and stop listening for what kept reads drop."""
    global _pool
    await kept.stop()
    others = list(_pools.values())
    _pools.clear()
    for p in (*others, _pool):
        if p is not None:
            await p.close()
    _pool = None


def migration_folders() -> list[Path]:
    """The core migrations folder, then each catalogued service's ``migrations/`` that exists."""
    from nexus_ray.catalog import SERVICES

    folders = [Path(str(resources.files("nexus_ray.stores") / "migrations"))]
    for s in SERVICES:
        try:
            # find_spec imports the parents (namespace packages), not the service package itself.
            spec = importlib.util.find_spec(s.package)
        except ModuleNotFoundError:
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / "migrations"
            if folder.is_dir():
                folders.append(folder)
    return folders


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) of every migration of the core and the services, in version order."""
    found: dict[str, Path] = {}
    for folder in migration_folders():
        for f in folder.glob("*.sql"):
            version = f.name.removesuffix(".sql")
            number = version.split("_", 1)[0]
            clash = [v for v in found if v.split("_", 1)[0] == number]
            if clash:
                raise RuntimeError(f"migration number {number} is used twice: {clash[0]} and {f}")
            found[version] = f
    return [(v, found[v].read_text()) for v in sorted(found)]


async def migrate(p: asyncpg.Pool) -> list[str]:
    """Apply the migrations not yet applied; returns the versions applied now."""
    applied_now: list[str] = []
    async with p.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version text PRIMARY KEY,
                       checksum text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
            done = {r["version"]: r["checksum"] for r in rows}
            for version, sql in migration_files():
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != checksum:
                        raise RuntimeError(f"migration {version} was changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)", version, checksum
                    )
                applied_now.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


_PROTOCOL_ERRORS = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
_BEGIN_ATTEMPTS = 3


def _lost(conn: asyncpg.Connection) -> bool:
    """Whether a pool connection is closed (a closed one may already be back in the pool: its proxy says so
    by refusing every call)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


@asynccontextmanager
async def transaction() -> AsyncIterator[asyncpg.Connection]:
    """A connection inside a transaction: committed on exit, rolled back on error.

    When the connection dies under the transaction (the server terminated its backend, or went away), the error
    that says so reaches the caller as :class:`asyncpg.ConnectionDoesNotExistError`, whatever asyncpg raised
    first: a statement sent after the server's farewell fails with a protocol-state error, and asyncpg's own
    transaction block would replace the error with "the underlying connection is closed" on its way out. The
    edge answers that one error with a 503 to retry (``edge/errors.py``), not a 500.

    A connection whose server ended it while it sat idle in the pool is refused by its own ``BEGIN`` (asyncpg
    has taken the server's farewell but not yet the closed socket, which comes a turn of the loop later, so the
    pool still hands it out): it is closed and another is taken, since nothing of the caller's has run yet.
    """
    p = await pool()
    for attempt in range(1, _BEGIN_ATTEMPTS + 1):
        async with p.acquire() as conn:
            tx = conn.transaction()
            try:
                await tx.start()
            except _PROTOCOL_ERRORS as exc:
                conn.terminate()  # dead on arrival: the pool opens a new one in its place
                if attempt == _BEGIN_ATTEMPTS:
                    raise asyncpg.ConnectionDoesNotExistError("no live connection to begin a transaction") from exc
                continue
            try:
                yield conn
            except BaseException as exc:
                lost = _lost(conn)
                if not lost:
                    try:
                        await tx.rollback()
                    except _PROTOCOL_ERRORS:  # it cannot even roll back: not to be handed out again
                        conn.terminate()
                        lost = True
                if lost and isinstance(exc, _PROTOCOL_ERRORS):
                    raise asyncpg.ConnectionDoesNotExistError("the connection was lost during the transaction") from exc
                raise
            if _lost(conn):
                raise asyncpg.ConnectionDoesNotExistError("the connection was lost before the commit")
            try:
                await tx.commit()
            except _PROTOCOL_ERRORS as exc:  # the server's farewell came before the COMMIT could be sent
                conn.terminate()
                raise asyncpg.ConnectionDoesNotExistError("the connection was lost before the commit") from exc
            return


async def ping() -> bool:
    """Readiness probe: True when PostgreSQL answers."""
    p = await pool()
    return await p.fetchval("SELECT 1") == 1
