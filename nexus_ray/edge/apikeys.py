"""Scoped API keys: created once in plain text, stored as a keyed hash, verified at the edge.

A key reads ``nxk_<key id>_<secret>``. Only HMAC-SHA256(master key, secret) is
stored, so a copy of the database does not yield usable keys. Verified keys are
cached in the replica for ``api_key_cache_s`` seconds, which bounds how long a
revoked key keeps working.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from nexus_ray.config import get_settings
from nexus_ray.edge import digests
from nexus_ray.exceptions import Unauthorized
from nexus_ray.stores import postgres

PREFIX = "nxk_"


@dataclass(frozen=True)
class ApiKeyRecord:
    """What the edge needs of a key: who it acts for and what it may do."""

    key_id: str
    principal: str
    scopes: frozenset[str]
    expires_at: datetime | None


_cache: dict[str, tuple[float, bytes, ApiKeyRecord | None]] = {}


_PURPOSE = "api-key"


def split(key: str) -> tuple[str, str]:
    """(key id, secret) of a presented key; Unauthorized if it is not shaped like one."""
    if not key.startswith(PREFIX):
        raise Unauthorized("malformed API key")
    key_id, _, secret = key[len(PREFIX):].partition("_")
    if not key_id or len(secret) < 20:
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
    return key_id, f"{PREFIX}{key_id}_{secret}"


async def revoke(*, key_id: str) -> bool:
    """Revoke a key; True if it existed and was active. Replica caches forget it within api_key_cache_s."""
    pg = await postgres.pool()
    done = await pg.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING true", key_id
    )
    _cache.pop(key_id, None)
    return bool(done)


async def verify(key: str) -> ApiKeyRecord:
    """The record of a valid, unrevoked, unexpired key; Unauthorized otherwise."""
    key_id, secret = split(key)
    now = time.monotonic()
    hit = _cache.get(key_id)
    if hit is None or hit[0] < now:
        pg = await postgres.pool()
        row = await pg.fetchrow(
            "SELECT secret_hash, principal, scopes, expires_at FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
            key_id,
        )
        record = None
        stored = b""
        if row is not None:
            stored = bytes(row["secret_hash"])
            record = ApiKeyRecord(key_id, row["principal"], frozenset(row["scopes"]), row["expires_at"])
        hit = (now + get_settings().api_key_cache_s, stored, record)
        _cache[key_id] = hit
    _, stored, record = hit
    if record is None or not digests.matches(stored, _PURPOSE, secret):
        raise Unauthorized("invalid API key")
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        raise Unauthorized("API key expired")
    return record
