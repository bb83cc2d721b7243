"""Legacy session tokens: opaque, kept in Redis under a keyed hash of the token.

A token reads ``nxs_<43 url-safe characters>`` (never two dots, so the edge tells it
from a JWT). Redis holds, per session, a hash under ``nexus:auth:session:<id>`` where
``<id>`` is the keyed digest of the token (:mod:`nexus_ray.edge.digests`) in hex: a copy of Redis yields no usable
token, and the id can be shown to the user (to list and revoke sessions) safely.
``nexus:auth:user-sessions:<user id>`` is the set of a user's session ids.

Idle expiry is the key's TTL, renewed on each use; the absolute expiry is a field
checked on each use. Scripts run atomically in Redis (single node: they name keys
they build from the user's set).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.edge import digests
from nexus_ray.stores.cache import redis_client, script

PREFIX = "nxs_"
_SESSION_KEY = "nexus:auth:session:"
_USER_KEY = "nexus:auth:user-sessions:"
_PURPOSE = "legacy-session"
SESSION_ID_PATTERN = rf"^[0-9a-f]{{{2 * digests.DIGEST_BYTES}}}$"
_FIELDS = ("user_id", "created_at", "last_used_at", "expires_at", "ip", "user_agent", "device")

# KEYS[1] session; ARGV now, idle seconds. Returns the fields, or nil when absent or past its absolute expiry.
_RESOLVE = """
local v = redis.call('HMGET', KEYS[1], 'user_id', 'created_at', 'last_used_at', 'expires_at', 'ip', 'user_agent',
                     'device')
if not v[1] then return nil end
local now = tonumber(ARGV[1])
local left = tonumber(v[4]) - now
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return nil
end
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(math.min(tonumber(ARGV[2]), left))))
v[3] = ARGV[1]
return v
"""

# KEYS[1] the user's set; ARGV session key prefix, the id to keep ('' for none). Returns how many were revoked.
_REVOKE_ALL = """
local n = 0
for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if sid ~= ARGV[2] then
    n = n + redis.call('DEL', ARGV[1] .. sid)
    redis.call('SREM', KEYS[1], sid)
  end
end
return n
"""

# KEYS session, the user's set; ARGV user id, session id. Ends the session only if it is that user's.
_REVOKE_ONE = """
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


@dataclass(frozen=True)
class LegacySession:
    """One session as its user may see it (never the token)."""

    session_id: str
    user_id: str
    created_at: float
    last_used_at: float
    expires_at: float
    ip: str
    user_agent: str
    device: str

    def public(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: bytes | str) -> str:
    # The client returns bytes (decode_responses=False); its type hints also allow str.
    return value.decode() if isinstance(value, bytes) else value


def looks_like_token(token: str) -> bool:
    return token.startswith(PREFIX) and 40 <= len(token) <= 80


def session_id_of(token: str) -> str:
    """The id (keyed digest) under which a new session of ``token`` is stored."""
    return digests.hex_digest(_PURPOSE, token)


def _ids_of(token: str) -> list[str]:
    """The ids ``token``'s session may be stored under: one per live master key, current first."""
    return digests.hex_candidates(_PURPOSE, token)


def _decode(session_id: str, values: list[Any]) -> LegacySession:
    v = [x.decode() if isinstance(x, bytes) else (x or "") for x in values]
    return LegacySession(session_id, v[0], float(v[1]), float(v[2]), float(v[3]), v[4], v[5], v[6])


async def create(*, user_id: str, ip: str, user_agent: str, device: str) -> tuple[str, LegacySession]:
    """A new session for ``user_id``: (the token, shown once, and the session)."""
    s = auth_settings()
    token = PREFIX + secrets.token_urlsafe(32)
    sid = session_id_of(token)
    now = time.time()
    session = LegacySession(sid, user_id, now, now, now + s.auth_session_absolute_s, ip, user_agent[:512], device)
    fields: dict[bytes | bytearray | memoryview | str | int | float, bytes | bytearray | memoryview | str | int | float]
    fields = {k: str(v) for k, v in asdict(session).items() if k != "session_id"}
    async with redis_client().pipeline(transaction=True) as pipe:
        pipe.hset(_SESSION_KEY + sid, mapping=fields)
        pipe.expire(_SESSION_KEY + sid, min(s.auth_session_idle_s, s.auth_session_absolute_s))
        pipe.sadd(_USER_KEY + user_id, sid)
        # The newest session expires last: the set lives as long as any of its sessions can.
        pipe.expire(_USER_KEY + user_id, s.auth_session_absolute_s)
        await pipe.execute()
    return token, session


async def resolve(token: str) -> LegacySession | None:
    """The live session of ``token``, marked as used now; None if unknown, revoked or expired."""
    if not looks_like_token(token):
        return None
    client = redis_client()
    for sid in _ids_of(token):  # one call, unless a master-key rotation is under way
        values = await script(_RESOLVE)(
            keys=[_SESSION_KEY + sid], args=[repr(time.time()), auth_settings().auth_session_idle_s], client=client
        )
        if values is not None:
            return _decode(sid, values)
    return None


async def revoke(token: str) -> bool:
    """Revoke the session of ``token``; False if there was none (logout is idempotent)."""
    if not looks_like_token(token):
        return False
    for sid in _ids_of(token):
        user_id = await redis_client().hget(_SESSION_KEY + sid, "user_id")
        if user_id is not None:
            return await revoke_id(user_id=_text(user_id), session_id=sid)
    return False


async def owner_of(session_id: str) -> str | None:
    """The user id of the live session ``session_id``; None if there is none."""
    owner = await redis_client().hget(_SESSION_KEY + session_id, "user_id")
    return _text(owner) if owner is not None else None


async def revoke_id(*, user_id: str, session_id: str) -> bool:
    """Revoke one of ``user_id``'s sessions by id; False (and nothing ended) if it is not a live session of
    that user: the owner is checked in the same atomic step as the deletion."""
    return bool(
        await script(_REVOKE_ONE)(
            keys=[_SESSION_KEY + session_id, _USER_KEY + user_id], args=[user_id, session_id], client=redis_client()
        )
    )


async def revoke_all(*, user_id: str, keep: str | None = None) -> int:
    """Revoke every session of ``user_id`` but ``keep`` (a session id); returns how many were live."""
    return int(
        await script(_REVOKE_ALL)(
            keys=[_USER_KEY + user_id], args=[_SESSION_KEY, keep or ""], client=redis_client()
        )
    )


async def list_for(*, user_id: str) -> list[LegacySession]:
    """``user_id``'s live sessions, most recently used first; forgets ids whose session expired."""
    client = redis_client()
    sids = sorted(_text(m) for m in await client.smembers(_USER_KEY + user_id))
    if not sids:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.hmget(_SESSION_KEY + sid, *_FIELDS)
        rows = await pipe.execute()
    now = time.time()
    live, dead = [], []
    for sid, values in zip(sids, rows, strict=True):
        if values[0] is None:
            dead.append(sid)
            continue
        session = _decode(sid, values)
        if session.expires_at > now:
            live.append(session)
        else:
            dead.append(sid)
    if dead:
        async with client.pipeline(transaction=True) as pipe:
            pipe.srem(_USER_KEY + user_id, *dead)
            pipe.delete(*(_SESSION_KEY + sid for sid in dead))
            await pipe.execute()
    return sorted(live, key=lambda x: x.last_used_at, reverse=True)
