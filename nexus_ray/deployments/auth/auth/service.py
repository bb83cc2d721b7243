"""auth-service's logic: password login to opaque sessions, logout, password changes, exchange for v2 tokens.

Passwords live as argon2id hashes in user-auth's ``users`` table (read and written through
:mod:`nexus_ray.deployments.auth.users.service`); sessions live in Redis
(:mod:`.sessions`); every password check goes through :mod:`.lockout` first.
:func:`session_principal` is how the edge accepts a legacy token on any route.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from nexus_ray.config import get_settings
from nexus_ray.deployments.auth import credentials
from nexus_ray.deployments.auth.auth import lockout, passwords, sessions
from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.deployments.auth.users import service as users
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.deployments.specialized.keys import service as keys
from nexus_ray.edge import revocations, tokens
from nexus_ray.edge.security import Principal, ensure_self_or
from nexus_ray.exceptions import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from nexus_ray.stores import events, postgres

ADMIN_SCOPE = scopes_of("auth-service").admin
"""Acts on other accounts' passwords, sessions and lockouts."""
SESSION_CREDENTIAL = "session:"
"""Prefix of ``Principal.credential_id`` for a principal authenticated by a legacy session."""


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def current_session_id(principal: Principal) -> str | None:
    """The legacy session a request was made with, if it was made with one."""
    cid = principal.credential_id or ""
    return cid[len(SESSION_CREDENTIAL):] if cid.startswith(SESSION_CREDENTIAL) else None


async def _resolve(token: str) -> tuple[sessions.LegacySession, list[str]] | None:
    session = await sessions.resolve(token)
    if session is None:
        return None
    scopes = await users.active_scopes(session.user_id)
    if scopes is None:  # erased or disabled since the login
        await sessions.revoke_id(user_id=session.user_id, session_id=session.session_id)
        return None
    return session, scopes


async def session_principal(token: str) -> Principal | None:
    """The principal of a live legacy session token (the user, with its current RBAC scopes); None otherwise."""
    resolved = await _resolve(token)
    if resolved is None:
        return None
    session, scopes = resolved
    return Principal(
        subject=session.user_id,
        scopes=frozenset(scopes),
        kind="user",
        credential_id=SESSION_CREDENTIAL + session.session_id,
    )


async def verify_credentials(*, username: str, password: str, address: str) -> dict[str, Any]:
    """The account of ``username`` if ``password`` is its password, under lockout and address throttling.

    Raises Unauthorized (wrong username or password, alike), AccountLocked (423),
    RateLimited (429) or Forbidden (right password, disabled account). For any flow that
    checks a password (this service's login, the OAuth provider's login page).
    """
    attempt = await lockout.begin(username=username, address=address)
    record = await users.login_record(username=username)
    stored = record["password_hash"] if record else None
    if not await passwords.verify_password(stored, password):
        await lockout.failed(attempt)
        raise Unauthorized("invalid username or password")
    await lockout.succeeded(attempt)
    assert record is not None and stored is not None
    if record["status"] != "active":
        raise Forbidden("the account is disabled")
    rehashed = await passwords.hash_password(password) if passwords.needs_rehash(stored) else None
    await users.note_login(user_id=record["user_id"], old_hash=stored, rehashed=rehashed)
    return record


async def login(*, username: str, password: str, address: str, user_agent: str, device: str) -> dict[str, Any]:
    """Check the password and open a session: the token is in the result, and only there."""
    record = await verify_credentials(username=username, password=password, address=address)
    return await _open_session(user_id=record["user_id"], address=address, user_agent=user_agent, device=device)


async def _open_session(*, user_id: uuid.UUID, address: str, user_agent: str, device: str) -> dict[str, Any]:
    token, session = await sessions.create(user_id=str(user_id), ip=address, user_agent=user_agent, device=device)
    return {
        "session_token": token,
        "user_id": user_id,
        "session_id": session.session_id,
        "expires_at": _at(session.expires_at),
        "idle_timeout_s": min(auth_settings().auth_session_idle_s, auth_settings().auth_session_absolute_s),
    }


async def logout(*, token: str) -> bool:
    """End the session of ``token``; False when it had already ended (logging out twice is fine)."""
    return await sessions.revoke(token)


PASSWORD_CHANGED_TOPIC = "auth.user.password_changed"


async def _set_password(*, user_id: uuid.UUID, new_hash: str, expected: str | None, by: str) -> credentials.Ended:
    # One transaction: the new hash, the end of every credential of the account (the Redis part
    # written before the commit: see nexus_ray.deployments.auth.credentials) and the security notice's event.
    async with postgres.transaction() as conn:
        if not await users.replace_password_hash(conn=conn, user_id=user_id, new_hash=new_hash, expected=expected):
            raise Conflict("the password was changed meanwhile; try again")
        ended = await credentials.end_all(conn, user_id=user_id, reason="password-changed")
        await events.emit(conn, PASSWORD_CHANGED_TOPIC, {"user_id": str(user_id), "by": by,
                                                         "at": datetime.now(UTC).isoformat()}, key=str(user_id))
    await credentials.after_commit(ended)
    return ended


async def change_password(
    *, principal: Principal, current_password: str, new_password: str, address: str, user_agent: str = ""
) -> dict[str, Any]:
    """The caller changes its own password. Every credential of the account ends -- legacy sessions, v2
    access tokens, OAuth grants, API keys -- the one making the change too (whoever holds a copy of it
    loses it); the caller, who has just proved the password, gets a new legacy session in the result."""
    user_id = users.as_user_id(principal.subject)
    record = await users.login_record(user_id=user_id) if user_id else None
    if record is None:
        raise Forbidden("only user accounts have passwords")
    if record["password_hash"] is None:
        raise ValidationFailed.for_field("current_password", "the account has no password", "missing")
    passwords.check_policy(new_password, field="new_password", username=record["username"])
    if new_password == current_password:
        raise ValidationFailed.for_field("new_password", "must differ from the current password", "unchanged")
    # The current password is a guess like any login: the same lockout applies.
    attempt = await lockout.begin(username=record["username"], address=address)
    if not await passwords.verify_password(record["password_hash"], current_password):
        await lockout.failed(attempt)
        raise ValidationFailed.for_field("current_password", "does not match", "mismatch")
    await lockout.succeeded(attempt)
    new_hash = await passwords.hash_password(new_password)
    ended = await _set_password(user_id=record["user_id"], new_hash=new_hash, expected=record["password_hash"],
                                by="self")
    return {**ended.counts(), "session": await _open_session(
        user_id=record["user_id"], address=address, user_agent=user_agent, device="password change")}


async def set_password(*, user_id: uuid.UUID, new_password: str, grantor: Principal) -> dict[str, int]:
    """An administrator sets an account's password: every credential of the account ends (see
    :func:`change_password`) and any lockout is lifted. Only for an administrator who outranks the account."""
    record = await users.login_record(user_id=user_id)
    if record is None or record["status"] == "erased":
        raise NotFound("no such user")
    await users.ensure_may_manage(grantor, user_id)
    passwords.check_policy(new_password, field="new_password", username=record["username"])
    new_hash = await passwords.hash_password(new_password)
    ended = await _set_password(user_id=user_id, new_hash=new_hash, expected=record["password_hash"],
                                by="administrator")
    await lockout.release(username=record["username"])
    return ended.counts()


async def exchange(*, session_token: str, scope: str | None = None) -> dict[str, Any]:
    """A v2 access token for the user of a live legacy session, with the user's scopes (or a subset).

    The token lives ``auth_exchange_ttl_s`` but never past the session's own absolute expiry.
    """
    resolved = await _resolve(session_token)
    if resolved is None:
        raise Unauthorized("invalid or expired session token")
    session, held = resolved
    granted = sorted(held)
    if scope is not None:
        requested = sorted(set(scope.split()))
        held_set = frozenset(held)
        missing = [s for s in requested if not Principal(session.user_id, held_set, "user").can(s)]
        if missing:
            raise Forbidden(
                "the account does not hold: " + " ".join(missing),
                extra={"errors": [{"field": "scope", "message": f"not held: {s}", "type": "scope_not_held"}
                                  for s in missing]},
            )
        granted = requested
    s = get_settings()
    ttl = int(min(auth_settings().auth_exchange_ttl_s, s.token_max_ttl_s, session.expires_at - time.time()))
    if ttl < 1:
        raise Unauthorized("invalid or expired session token")
    iat = await revocations.issued_at_for(session.user_id)
    claims = tokens.access_claims(
        session.user_id, granted, ttl_s=ttl, kind="user", extra={"sid": session.session_id, "amr": ["pwd"], "iat": iat}
    )
    # Signed by key-service with its current platform key (it re-signs if a rotation raced us) and
    # audited as auth-service's use; the edge verifies it against the live JWKS.
    access_token = await keys.sign(claims, actor="auth-service")
    return {"access_token": access_token, "expires_in": ttl, "scope": " ".join(granted)}


async def list_sessions(*, principal: Principal) -> list[dict[str, Any]]:
    """The caller's legacy sessions, most recently used first."""
    current = current_session_id(principal)
    return [
        {**s.public(), "created_at": _at(s.created_at), "last_used_at": _at(s.last_used_at),
         "expires_at": _at(s.expires_at), "current": s.session_id == current}
        for s in await sessions.list_for(user_id=principal.subject)
    ]


async def revoke_session(*, principal: Principal, session_id: str) -> None:
    """End a session by id: one of the caller's, or anyone's for an administrator who outranks its owner.

    NotFound alike for an unknown id and for another user's session, so ids cannot be probed.
    """
    unknown = "no such session"
    owner = await sessions.owner_of(session_id)
    if owner is None:
        raise NotFound(unknown)
    ensure_self_or(principal, owner, ADMIN_SCOPE, not_found=unknown)
    if owner != principal.subject:
        await users.ensure_may_manage(principal, owner)
    if not await sessions.revoke_id(user_id=owner, session_id=session_id):
        raise NotFound(unknown)


async def lockout_status(*, username: str) -> dict[str, Any]:
    seconds = await lockout.locked_for(username=username)
    return {"username": username, "locked": seconds > 0, "retry_after": seconds}
