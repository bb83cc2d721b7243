"""Every credential of one account, ended at once: what a password change, a reset, a disable or an erasure does.

The identity services hand an account five kinds of credential: legacy sessions (Redis), v2
access tokens (JWTs the edge verifies offline, refused through the subject revocation of
:mod:`nexus_ray.edge.revocations`), OAuth grants with their refresh tokens and pending codes
(PostgreSQL), and API keys (PostgreSQL, cached per replica for at most ``api_key_cache_s``).

:func:`end_all` runs on the connection of the transaction that makes the change, so the
PostgreSQL part commits or rolls back with it. The Redis part (sessions, the subject
revocation) is written *before* the commit: if Redis fails the change rolls back and nothing
is half-done; if the commit fails afterwards, credentials were ended for a change that did
not happen, which is the safe direction (the user signs in again). Writing it after the
commit instead could lose it to a crash between the two; an outbox consumer would end the
tokens only after a delay. :func:`after_commit` sweeps the Redis part once more, for
sessions and tokens created from the old password while the change was in flight, and makes
this replica forget the revoked API keys at once (other replicas within ``api_key_cache_s``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from nexus_ray.deployments.auth.auth import sessions
from nexus_ray.edge import apikeys, revocations


@dataclass
class Ended:
    """What :func:`end_all` ended."""

    user_id: str
    sessions: int = 0
    grants: int = 0
    api_keys: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"sessions_revoked": self.sessions, "grants_revoked": self.grants,
                "api_keys_revoked": len(self.api_keys)}


async def end_all(conn: asyncpg.Connection, *, user_id: uuid.UUID, reason: str, api_keys: bool = True) -> Ended:
    """End every credential of ``user_id`` inside the caller's transaction on ``conn``.

    ``api_keys=False`` leaves the keys in place (a disabled account's keys are refused at use,
    because the edge checks the owner's status, and work again when it is enabled).
    """
    if not conn.is_in_transaction():
        raise RuntimeError("credentials are ended inside the transaction of the change that ends them")
    subject = str(user_id)
    ended = Ended(subject)
    if api_keys:
        rows = await conn.fetch(
            "UPDATE api_keys SET revoked_at = now() WHERE principal = $1 AND revoked_at IS NULL RETURNING key_id",
            subject,
        )
        ended.api_keys = [r["key_id"] for r in rows]
    # The grants' rows stay locked until the commit: a refresh in flight waits and then finds its grant revoked.
    ended.grants = len(await conn.fetch(
        "UPDATE oauth_grants SET revoked_at = now(), revoked_reason = $2 WHERE user_id = $1 AND revoked_at IS NULL "
        "RETURNING grant_id",
        user_id, reason,
    ))
    await conn.execute("UPDATE oauth_codes SET used_at = now() WHERE user_id = $1 AND used_at IS NULL", user_id)
    # Redis before the commit (see the module's note). The subject revocation refuses every v2 access
    # token of the account issued up to now, the OAuth provider's included, and the one making the change.
    await revocations.revoke_subject(subject)
    ended.sessions = await sessions.revoke_all(user_id=subject)
    return ended


async def after_commit(ended: Ended) -> None:
    """Once the change committed: sweep the account's sessions and tokens again, forget its revoked keys here."""
    await revocations.revoke_subject(ended.user_id)
    ended.sessions += await sessions.revoke_all(user_id=ended.user_id)
    apikeys.forget(*ended.api_keys)
