"""Revoked access tokens, as the edge sees them: kept in Redis until the tokens would expire anyway.

Access tokens are JWTs the edge verifies offline, so revoking one needs a list the edge
consults. Three things can be revoked:

* one token, by its ``jti`` (RFC 7009 revocation of an access token);
* every token of one sign-in, by the grant id ``gid`` the OAuth provider puts in them
  (refresh-token reuse, code replay, a revoked refresh token);
* every token of a subject issued before now (password change or reset, a disabled or erased account:
  :mod:`nexus_ray.deployments.auth.credentials`).

Each entry lives only as long as a token it could match (``token_max_ttl_s`` at most),
so the list stays small. The edge checks it in the same Redis round trip as the rate
limit (:func:`nexus_ray.edge.ratelimit.admit`), so revocation costs no extra call.
"""

from __future__ import annotations

import time

from nexus_ray.config import get_settings
from nexus_ray.stores.cache import redis_client

_PREFIX = "nexus:revoked:"


def token_key(jti: str) -> str:
    return f"{_PREFIX}jti:{jti}"


def grant_key(gid: str) -> str:
    return f"{_PREFIX}gid:{gid}"


def subject_key(subject: str) -> str:
    return f"{_PREFIX}sub:{subject}"


def _ttl(until: float | None = None) -> int:
    longest = get_settings().token_max_ttl_s + get_settings().jwt_leeway_s
    if until is None:
        return longest
    return max(1, min(longest, int(until - time.time()) + get_settings().jwt_leeway_s + 1))


async def revoke_token(jti: str, *, expires_at: float | None = None) -> None:
    """Refuse the access token ``jti`` at the edge from now until it expires."""
    await redis_client().set(token_key(jti), b"1", ex=_ttl(expires_at))


async def revoke_grant(gid: str) -> None:
    """Refuse every access token of the sign-in (grant) ``gid``."""
    await redis_client().set(grant_key(gid), b"1", ex=_ttl())


async def revoke_grants(gids: list[str]) -> None:
    """:func:`revoke_grant` for each of ``gids``, in one round trip."""
    if not gids:
        return
    async with redis_client().pipeline(transaction=False) as pipe:
        for gid in gids:
            pipe.set(grant_key(gid), b"1", ex=_ttl())
        await pipe.execute()


async def revoke_subject(subject: str) -> None:
    """Refuse every access token of ``subject`` issued up to now (tokens issued later still work)."""
    await redis_client().set(subject_key(subject), str(int(time.time()) + 1).encode(), ex=_ttl())


async def issued_at_for(subject: str) -> int:
    """The ``iat`` a token issued now for ``subject`` carries: now, or the end of the second in which the
    subject's tokens were revoked (iat has one-second resolution, and a revocation refuses the whole second
    it was made in), so a token issued just after a revocation -- the new sign-in after a password
    change -- is not refused with the old ones."""
    now = int(time.time())
    cut = await redis_client().get(subject_key(subject))
    return max(now, int(cut)) if cut else now
