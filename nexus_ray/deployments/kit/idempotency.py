"""Idempotency keys with Stripe's semantics, for any service whose changes live in PostgreSQL.

A request that changes state carries a key (the ``Idempotency-Key`` header, or an export's
``idempotency_key``), scoped to its caller. :meth:`Idempotency.run` runs the change once per
(scope, key) and stores its response -- status code and body, **errors included** -- in the
transaction of the change itself:

* the same key with the same request (its *fingerprint*) answers the stored response again,
  marked ``replayed``; nothing runs a second time;
* the same key with another request is refused with 422 naming the key's field
  (``type: idempotency_key_reused``): the caller reused a key by mistake;
* a concurrent request with the same key waits on the first one's row (an INSERT on its
  primary key) until that commits, then is answered as a replay: the change never runs twice;
* an error the change raises (:class:`~nexus_ray.exceptions.NexusError`: a 409 for an invalid
  transition, a 402 decline...) is stored and replayed like a success; the change's own writes
  are rolled back to a savepoint first, so a stored error changed nothing. Anything else
  (a crash, a lost database) rolls the whole transaction back and stores nothing: the key is
  free and the caller retries. Requests refused before the change runs (schema validation,
  authentication) never reach here and store nothing, as in Stripe;
* a key expires ``ttl_s`` after its first use: after that the same key is a new request. Expired
  rows are deleted by :meth:`Idempotency.purge` (run it from a background loop); a row past its
  expiry that was not purged yet is already treated as absent.

Each service keeps its records in a table of its own, created by its migrations in this shape::

    CREATE TABLE <service>_idempotency (
        scope       text        NOT NULL,      -- the caller (principal subject, or the calling service)
        key         text        NOT NULL,
        fingerprint text        NOT NULL,      -- hash of the operation and its parameters
        status      smallint,                  -- set in the same transaction as the claim: never seen NULL
        response    jsonb,
        created_at  timestamptz NOT NULL DEFAULT now(),
        expires_at  timestamptz NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE INDEX <service>_idempotency_expiry ON <service>_idempotency (expires_at);

Concurrent requests of one kind can be run together by :meth:`Idempotency.run_many`: one transaction claims
all their keys in one statement (which may also lock the rows the work starts from: :data:`Lead`), a batch's work
answers every request it runs, and one statement stores the answers -- the same semantics per request, in a few
statements for the whole batch (its work must refuse an item before writing for it: see the method).

Use::

    KEYS = Idempotency("billing_idempotency", ttl_s=lambda: settings.idempotency_ttl_s)

    async def work(conn) -> tuple[int, dict]:
        ...                                 # the change, on conn
        return 201, thing.model_dump(mode="json")

    outcome = await KEYS.run(scope=caller, key=key, fingerprint=fingerprint("create", params), work=work)
    thing = outcome.model(ThingRead)        # or raises the stored error
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, TypeVar

import asyncpg
import orjson
from fastapi import Header, Response
from pydantic import BaseModel

from nexus_ray.deployments.kit import loops
from nexus_ray.exceptions import Conflict, Forbidden, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import postgres

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Work = Callable[[asyncpg.Connection], Awaitable[tuple[int, dict[str, Any]]]]

#: What a key may look like (the ledger's pattern): visible, URL-safe, at most 255 characters.
KEY_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,255}$"
#: The response header that marks a stored response answered again.
REPLAYED_HEADER = "Idempotent-Replayed"
#: A route's optional ``Idempotency-Key`` header, where the body may carry the key as ``idempotency_key`` instead.
KeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", pattern=KEY_PATTERN,
                                         description="Idempotency key (or the body's idempotency_key).")]
_TABLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_ERRORS: dict[int, type[NexusError]] = {403: Forbidden, 404: NotFound, 409: Conflict, 422: ValidationFailed}


def fingerprint(operation: str, params: Mapping[str, Any]) -> str:
    """What a key is bound to: the operation and its parameters (without the key), as canonical JSON, hashed."""
    canonical = orjson.dumps({"op": operation, "params": params}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def key_reused(field_name: str) -> ValidationFailed:
    """The refusal of a key sent again with another request."""
    message = "was already used with another request; use a new key for a new request"
    return ValidationFailed(
        f"{field_name}: {message}",
        extra={"errors": [{"field": field_name, "message": message, "type": "idempotency_key_reused"}],
               "code": "idempotency_key_reused"})


def key_of(header: str | None, field_value: str | None) -> str | None:
    """The request's key, from the ``Idempotency-Key`` header or the body's ``idempotency_key``; both must agree."""
    if header is not None and field_value is not None and header != field_value:
        raise ValidationFailed.for_field("idempotency_key", "differs from the Idempotency-Key header")
    return field_value if field_value is not None else header


def mark_replayed(response: Response, replayed: bool, *, status: int | None = None) -> None:
    """Mark ``response`` as a stored one answered again (and give it ``status``, when the replay has its own)."""
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
        if status is not None:
            response.status_code = status


def error_from(status: int, problem: Mapping[str, Any], *, classes: Mapping[int, type[NexusError]] = {},
               headers: Mapping[str, str] | None = None) -> NexusError:
    """The platform error whose problem+json body ``problem`` is (to raise a stored error again)."""
    cls = classes.get(status) or _ERRORS.get(status)
    extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail", "instance",
                                                           "request_id")}
    err = (cls or NexusError)(str(problem.get("detail", "")), extra=extra, headers=dict(headers or {}))
    if cls is None:  # a status without a class of its own: keep it (on this instance only)
        err.status, err.title = status, str(problem.get("title", "Error"))
        err.slug = str(problem.get("type", "")).rsplit("/", 1)[-1] or "error"
    return err


@dataclass(frozen=True)
class Outcome:
    """The response of a keyed request: its status and body, and whether it is the stored one replayed."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status < 400

    def error(self, *, classes: Mapping[int, type[NexusError]] = {}) -> NexusError:
        """The stored error as a platform error (with ``Idempotent-Replayed: true`` when replayed)."""
        return error_from(self.status, self.body, classes=classes,
                          headers={REPLAYED_HEADER: "true"} if self.replayed else None)

    def model(self, cls: type[M], *, classes: Mapping[int, type[NexusError]] = {}) -> M:
        """The body as ``cls``; a stored error is raised."""
        if not self.ok:
            raise self.error(classes=classes)
        return cls.model_validate(self.body)


def _replayed(row: Mapping[str, Any] | None, fingerprint: str, field_name: str) -> Outcome:
    """The stored response of a key found taken (``row``, as read after the claim failed), for a request with
    ``fingerprint``; a key reused with another request, or not answered yet, is refused."""
    if row is None or row["status"] is None:  # purged between the claim and the read: the caller retries
        raise Conflict("a request with this idempotency key is in progress; retry",
                       extra={"code": "idempotency_key_in_progress"})
    if row["fingerprint"] != fingerprint:
        raise key_reused(field_name)
    return Outcome(int(row["status"]), row["response"], replayed=True, headers={REPLAYED_HEADER: "true"})


@dataclass(frozen=True)
class Keyed(Generic[T]):
    """One request of a batch run by :meth:`Idempotency.run_many`: its caller, its key (None: unkeyed), what its
    key is bound to, the item that the batch's work gets, and the field a reused key's 422 names."""

    scope: str
    key: str | None
    fingerprint: str
    item: T
    field_name: str = "Idempotency-Key"


#: What a batch's work answers each item with: ``(status, body)``, or the error that refuses it.
Answer = tuple[int, dict[str, Any]] | NexusError


class AnswerStore:
    """Given to a batch's work by :meth:`Idempotency.run_many`: the statement that stores the batch's answers, for
    the work to run as a part of its own last statement (one round trip fewer). Unused, ``run_many`` stores them
    itself. ``led``: the rows of the batch's lead read, when ``run_many`` was given one (see :data:`Lead`)."""

    def __init__(self, keys: Idempotency, requests: Sequence[Keyed[Any]],
                 led: list[asyncpg.Record] | None = None) -> None:
        self._keys = keys
        self._requests = requests
        self.answers: list[Answer] | None = None
        self.led = led

    def statement(self, answers: Sequence[Answer], first: int) -> tuple[str, list[Any]]:
        """The UPDATE that stores ``answers`` (the work's final ones, in order), its parameters numbered from
        ``first``: ``("", [])`` when no request of the batch has a key. The work must run it in its transaction
        and return these same answers."""
        self.answers = list(answers)
        kept = _kept(self._requests, self.answers)
        if not kept:
            return "", []
        return self._keys.store_statement(kept, first)


def _kept(requests: Sequence[Keyed[Any]], answers: Sequence[Answer]) -> list[tuple[Keyed[Any], Outcome]]:
    """The outcomes of the keyed requests among ``requests``, answered by ``answers`` (in order)."""
    kept = []
    for r, answer in zip(requests, answers, strict=True):
        if r.key is not None:
            status, body = (answer.status, answer.problem()) if isinstance(answer, NexusError) else answer
            kept.append((r, Outcome(status, body)))
    return kept


#: A batch's work: the items to run, on the batch's connection; an answer for each, in order (see ``run_many``).
BatchWork = Callable[[asyncpg.Connection, list[T], AnswerStore], Awaitable[Sequence[Answer]]]

#: A batch's lead read, given to ``run_many``: for the items of every request of the batch (replays included) and
#: the number of its first parameter, ``(sql, args)``: a ``SELECT ... ORDER BY ... FOR UPDATE`` with ``{claimed}``
#: at the end of its columns. It runs in the statement that claims the keys, after the claim
#: (:func:`~nexus_ray.stores.postgres.claim_then_lock`, one round trip fewer). Its rows reach the work as
#: ``store.led``.
Lead = Callable[[list[T], int], tuple[str, list[Any]]]


class Idempotency:
    """The idempotency records of one service, in its table ``table`` (the shape in this module's docstring)."""

    def __init__(self, table: str, *, ttl_s: Callable[[], float]) -> None:
        if not _TABLE.match(table):
            raise ValueError(f"not a table name: {table!r}")
        self.table = table
        self.ttl_s = ttl_s
        # The claim of keys (one, or a batch's): those claimed now come back; an expired record is claimed anew.
        self._claim = (
            f"INSERT INTO {table} AS t (scope, key, fingerprint, expires_at) "
            f"SELECT s, k, f, now() + make_interval(secs => $4) FROM unnest($1::text[], $2::text[], $3::text[]) "
            f"AS u(s, k, f) ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, "
            f"status = NULL, response = NULL, created_at = now(), expires_at = EXCLUDED.expires_at "
            f"WHERE t.expires_at <= now() RETURNING scope, key")

    async def run(self, *, scope: str, key: str | None, fingerprint: str, work: Work,
                  field_name: str = "Idempotency-Key") -> Outcome:
        """Run ``work`` once for (``scope``, ``key``) in one transaction and store its response; replay it after.

        ``key`` None runs ``work`` unkeyed (still all or nothing). ``field_name`` is what a reused key's
        422 names: the header for HTTP, the argument for a Python caller.
        """
        async with postgres.transaction() as conn:
            if key is not None and not await conn.fetch(self._claim, [scope], [key], [fingerprint],
                                                        float(self.ttl_s())):
                row = await conn.fetchrow(
                    f"SELECT fingerprint, status, response FROM {self.table} WHERE scope = $1 AND key = $2",
                    scope, key)
                return _replayed(row, fingerprint, field_name)
            # A savepoint, so that a refusal leaves nothing of the change behind. It is not released on success:
            # the commit ends it with the transaction, and a release would cost a round trip for nothing.
            await conn.execute("SAVEPOINT idempotent_work")
            try:
                status, body = await work(conn)
            except NexusError as err:
                await conn.execute("ROLLBACK TO SAVEPOINT idempotent_work")
                status, body = err.status, err.problem()
            if key is not None:
                await conn.execute(
                    f"UPDATE {self.table} SET status = $3, response = $4 WHERE scope = $1 AND key = $2",
                    scope, key, status, body)
        return Outcome(status, body)

    async def run_many(self, requests: Sequence[Keyed[T]], work: BatchWork[T], *,
                       lead: Lead[T] | None = None) -> list[Outcome | NexusError]:
        """Many requests, each as :meth:`run` runs one, in one transaction of a few statements whatever their number.

        ``work`` gets the items to run -- those whose key this batch claimed, and the unkeyed ones -- and answers
        each, in order: ``(status, body)``, or the :class:`NexusError` that refuses it. Its refusals are stored like
        its successes. It also gets an :class:`AnswerStore`: the statement that stores its answers, to run as a part
        of its last statement; if it does not, the answers are stored after it. Unlike ``run``'s, it must refuse an
        item before writing anything for it: there is no savepoint per item, so a refused item's writes would be
        kept. If ``work`` raises, the transaction is
        rolled back, nothing is stored and every request gets the exception (no key stays claimed: the callers
        retry).

        ``lead``: a locking read the work starts with (see :data:`Lead`), run in the claim's statement.

        The answer of each request, in order: its :class:`Outcome` (replayed for a key used before), or the error
        it was refused with before running (a key reused with another request, a key in progress). A key sent
        twice in one batch runs once, and its later requests are answered as if they came just after the first.
        """
        outcomes: list[Outcome | NexusError | None] = [None] * len(requests)
        first: dict[tuple[str, str], int] = {}
        again: list[int] = []
        for i, r in enumerate(requests):
            if r.key is not None:
                if (r.scope, r.key) in first:
                    again.append(i)
                else:
                    first[(r.scope, r.key)] = i
        async with postgres.transaction() as conn:
            keyed = sorted(first.items())  # two batches that share keys claim them in one order: no deadlock
            claim = ([s for (s, _), _ in keyed], [k for (_, k), _ in keyed],
                     [requests[i].fingerprint for _, i in keyed], float(self.ttl_s())) if keyed else None
            led: list[asyncpg.Record] | None = None
            if lead is not None:
                sql, args = lead([r.item for r in requests], 5 if claim else 1)
                led = await conn.fetch(postgres.claim_then_lock(sql, self._claim if claim else None, "scope", "key"),
                                       *(claim or ()), *args)
            if claim is not None:
                claimed = (await self._claimed(conn, led, claim[0], claim[1]) if led is not None
                           else {(r["scope"], r["key"]) for r in await conn.fetch(self._claim, *claim)})
                if taken := [(sk, i) for sk, i in keyed if sk not in claimed]:
                    stored = {(r["scope"], r["key"]): r for r in await conn.fetch(
                        f"SELECT scope, key, fingerprint, status, response FROM {self.table} "
                        f"WHERE (scope, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                        [s for (s, _), _ in taken], [k for (_, k), _ in taken])}
                    for sk, i in taken:
                        try:
                            outcomes[i] = _replayed(stored.get(sk), requests[i].fingerprint, requests[i].field_name)
                        except NexusError as err:
                            outcomes[i] = err
            repeated = set(again)
            runs = [i for i in range(len(requests)) if outcomes[i] is None and i not in repeated]
            store = AnswerStore(self, [requests[i] for i in runs], led)
            answers = list(await work(conn, [requests[i].item for i in runs], store)) if runs else []
            for i, answer in zip(runs, answers, strict=True):
                status, body = (answer.status, answer.problem()) if isinstance(answer, NexusError) else answer
                outcomes[i] = Outcome(status, body)
            by_work = store.answers is not None and len(store.answers) == len(answers) and all(
                a is b for a, b in zip(store.answers, answers, strict=True))  # the work stored these very answers
            if not by_work and (kept := _kept([requests[i] for i in runs], answers)):
                sql, args = self.store_statement(kept, 1)
                await conn.execute(sql, *args)
        for i in again:
            r = requests[i]
            j = first[(r.scope, str(r.key))]
            earlier = outcomes[j]
            if requests[j].fingerprint != r.fingerprint:
                outcomes[i] = key_reused(r.field_name)
            elif isinstance(earlier, Outcome):
                outcomes[i] = Outcome(earlier.status, earlier.body, replayed=True, headers={REPLAYED_HEADER: "true"})
            else:
                outcomes[i] = earlier
        return [o for o in outcomes if o is not None]

    async def _claimed(self, conn: asyncpg.Connection, led: Sequence[asyncpg.Record], scopes: list[str],
                       keys: list[str]) -> set[tuple[str, str]]:
        """The keys a lead read's statement claimed: from its rows, or, when it locked none (its claim ran all the
        same), the keys of this transaction, which are the ones still unanswered (a committed key has its
        answer)."""
        if led:
            return set(zip(led[0]["claimed_scope"] or (), led[0]["claimed_key"] or (), strict=True))
        return {(r["scope"], r["key"]) for r in await conn.fetch(
            f"SELECT scope, key FROM {self.table} WHERE (scope, key) IN (SELECT * FROM unnest($1::text[], "
            f"$2::text[])) AND status IS NULL", scopes, keys)}

    def store_statement(self, kept: Sequence[tuple[Keyed[Any], Outcome]], first: int) -> tuple[str, list[Any]]:
        """The UPDATE that stores the outcomes of claimed keys, its parameters numbered from ``first``."""
        s, k, st, r = (f"${first + n}" for n in range(4))
        return (f"UPDATE {self.table} t SET status = u.st, response = u.r::jsonb "
                f"FROM unnest({s}::text[], {k}::text[], {st}::int2[], {r}::text[]) AS u(s, k, st, r) "
                f"WHERE t.scope = u.s AND t.key = u.k",
                [[q.scope for q, _ in kept], [q.key for q, _ in kept], [o.status for _, o in kept],
                 [orjson.dumps(o.body).decode() for _, o in kept]])

    async def purge(self, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` expired records; returns how many."""
        pg = await postgres.pool()
        done = await pg.execute(
            f"DELETE FROM {self.table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {self.table} "
            f"WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED))", limit)
        return int(done.split()[-1])

    async def purge_forever(self, every_s: Callable[[], float]) -> None:
        """Background: purge expired records every ``every_s()`` seconds."""
        await loops.repeat(f"idempotency purge of {self.table}", self.purge, every_s, drain=True)
