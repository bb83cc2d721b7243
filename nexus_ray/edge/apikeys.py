"""Scoped API keys: created once in plain text, stored as a keyed digest, verified at the edge.

A key reads ``nxk_<key id>_<secret>``. Only the keyed digest of the secret is stored
(:mod:`nexus_ray.edge.digests`), so a copy of the database does not yield usable keys.

A key acts for its principal. When that principal is an account of user-auth, the key is
held to the account as it is now: refused while the account is not active, and never
beyond the scopes the account's roles give it now (a key keeps only those of its scopes
the account still holds). Keys of other principals (an operator's ``nexus api-key``) keep
their own scopes.

Each replica caches what it looked up, for ``api_key_cache_s`` seconds (which bounds how
long a revoked key, a disabled account or a removed role takes to reach a key), in an LRU
of at most ``api_key_cache_size`` entries, unknown key ids included: a flood of made-up
ids costs memory bounded by the size and at most one query per id and period. Look-ups
that miss the cache share one query per key id, and at most ``api_key_max_lookups`` run
at once per replica; those beyond it wait while the queue is at most four times that, and
any further one is answered 503 with ``Retry-After`` at once: a flood of unknown ids then
holds neither PostgreSQL connections (the pool serves the services' own work) nor request
slots, and keys already cached keep working throughout.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from nexus_ray.config import get_settings
from nexus_ray.edge import digests
from nexus_ray.exceptions import ServiceUnavailable, Unauthorized
from nexus_ray.stores import postgres

PREFIX = "nxk_"
_PURPOSE = "api-key"
_QUEUE_FACTOR = 4


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the edge needs of a key: who it acts for and what it may do."""

    key_id: str
    principal: str
    scopes: frozenset[str]
    expires_at: datetime | None
    secret_hash: bytes = b""
    #: False when the key's principal is an account that is not active (disabled or erased).
    owner_active: bool = True


# key id -> (monotonic expiry, record or None for "no such live key"), least recently used first.
_cache: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()
_pending: dict[str, asyncio.Future] = {}
_slots: asyncio.Semaphore | None = None
_slots_limit = [0]
_waiting = 0


def split(key: str) -> tuple[str, str]:
    """(key id, secret) of a presented key; Unauthorized if it is not shaped like one."""
    if not key.startswith(PREFIX):
        raise Unauthorized("malformed API key")
    key_id, _, secret = key[len(PREFIX):].partition("_")
    if not key_id or len(key_id) > 32 or len(secret) < 20 or len(secret) > 200:
        raise Unauthorized("malformed API key")
    return key_id, secret


async def create(
    *,
    principal: str,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    conn: asyncpg.Connection | None = None,
) -> tuple[str, str]:
    """Create a key; returns (key id, the full key). The full key is never stored or shown again.

    With ``conn`` the key is written in that connection's transaction (it exists only if it commits).
    """
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    pg = conn if conn is not None else await postgres.pool()
    await pg.execute(
        "INSERT INTO api_keys (key_id, secret_hash, principal, name, scopes, expires_at) VALUES ($1,$2,$3,$4,$5,$6)",
        key_id,
        digests.digest(_PURPOSE, secret),
        principal,
        name,
        sorted(set(scopes)),
        expires_at,
    )
    forget(key_id)  # a cached "unknown" for this id would refuse the new key for a while
    return key_id, f"{PREFIX}{key_id}_{secret}"


async def revoke(*, key_id: str) -> bool:
    """Revoke a key; True if it existed and was active. Other replicas' caches forget it within api_key_cache_s."""
    pg = await postgres.pool()
    done = await pg.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING true", key_id
    )
    forget(key_id)
    return bool(done)


def forget(*key_ids: str, principal: str | None = None) -> None:
    """Drop cached look-ups of ``key_ids`` and of every key of ``principal`` from this replica's cache."""
    for key_id in key_ids:
        _cache.pop(key_id, None)
    if principal is not None:
        for key_id in [k for k, (_, r) in _cache.items() if r is not None and r.principal == principal]:
            _cache.pop(key_id, None)


def forget_all() -> None:
    """Drop this replica's whole cache (a role changed: the scopes of many owners' keys may have)."""
    _cache.clear()


def _remember(key_id: str, record: ApiKeyRecord | None) -> None:
    s = get_settings()
    _cache[key_id] = (time.monotonic() + s.api_key_cache_s, record)
    _cache.move_to_end(key_id)
    while len(_cache) > s.api_key_cache_size:
        _cache.popitem(last=False)


def _cached(key_id: str) -> tuple[bool, ApiKeyRecord | None]:
    hit = _cache.get(key_id)
    if hit is None or hit[0] < time.monotonic():
        return False, None
    _cache.move_to_end(key_id)
    return True, hit[1]


async def _query(key_id: str) -> ApiKeyRecord | None:
    from nexus_ray.edge.security import has_scope  # the security module imports this one

    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT k.secret_hash, k.principal, k.scopes, k.expires_at, a.is_account, a.active, a.scopes AS held "
        "FROM api_keys k LEFT JOIN LATERAL api_key_account(k.principal) a ON true "
        "WHERE k.key_id = $1 AND k.revoked_at IS NULL",
        key_id,
    )
    if row is None:
        return None
    scopes = frozenset(row["scopes"])
    if row["is_account"]:
        held = frozenset(row["held"])
        scopes = frozenset(s for s in scopes if has_scope(held, s))
    return ApiKeyRecord(key_id, row["principal"], scopes, row["expires_at"], bytes(row["secret_hash"]),
                        owner_active=bool(row["active"]) or not row["is_account"])


def _semaphore() -> asyncio.Semaphore:
    global _slots
    limit = get_settings().api_key_max_lookups
    if _slots is None or _slots_limit[0] != limit:
        _slots, _slots_limit[0] = asyncio.Semaphore(limit), limit
    return _slots


async def _look_up(key_id: str) -> ApiKeyRecord | None:
    """The record of ``key_id`` from PostgreSQL: one query per id at a time, a bounded number at once."""
    global _waiting
    pending = _pending.get(key_id)
    if pending is not None:
        return await asyncio.shield(pending)
    limit = get_settings().api_key_max_lookups
    slots = _semaphore()
    if slots.locked() and _waiting >= limit * _QUEUE_FACTOR:
        raise ServiceUnavailable("too many API key verifications at once; retry shortly",
                                 headers={"Retry-After": "1"})
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    _pending[key_id] = future
    try:
        _waiting += 1
        try:
            await slots.acquire()
        finally:
            _waiting -= 1
        try:
            record = await _query(key_id)
        finally:
            slots.release()
        _remember(key_id, record)
        future.set_result(record)
        return record
    except BaseException as exc:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved: those sharing it re-raise it, nobody logs it as lost
        raise
    finally:
        _pending.pop(key_id, None)


async def verify(key: str) -> ApiKeyRecord:
    """The record of a valid, unrevoked, unexpired key of an active owner; Unauthorized otherwise."""
    key_id, secret = split(key)
    found, record = _cached(key_id)
    if not found:
        record = await _look_up(key_id)
    if record is None or not digests.matches(record.secret_hash, _PURPOSE, secret):
        raise Unauthorized("invalid API key")
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        raise Unauthorized("API key expired")
    if not record.owner_active:
        raise Unauthorized("the API key's account is not active")
    return record
