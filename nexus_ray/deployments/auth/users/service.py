"""user-auth's logic: users and profiles, RBAC, email verification, API keys, export and erasure.

Plain async functions with keyword-only arguments and no HTTP in them. Scopes come
from roles: :func:`scopes_for` is what auth-service puts in the tokens it issues. A
principal may grant (to a role, a user or an API key) only scopes it holds itself.

Password hashing and legacy sessions belong to auth-service
(:mod:`nexus_ray.deployments.auth.auth`), which depends on this module; the few
calls this module makes into it import on use to keep the dependency one-way at
import time.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from nexus_ray.deployments.auth.users import mail
from nexus_ray.deployments.auth.users.settings import settings as users_settings
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge import apikeys, digests
from nexus_ray.edge.security import Principal, has_scope
from nexus_ray.exceptions import Conflict, Forbidden, NotFound, ValidationFailed
from nexus_ray.stores import events, postgres

DEFAULT_ROLE = "user"
"""Role every registered person gets."""
ADMIN_SCOPE = scopes_of("user-auth").admin
ERASED_TOPIC = "auth.user.erased"
"""Event emitted (through the outbox, in the erasure's transaction) when an account is erased."""
VERIFICATION_PREFIX = "nxv_"

_USER_COLUMNS = (
    "user_id, kind, status, username, email, email_verified_at, display_name, locale, bio, created_at, updated_at"
)
_PROFILE_COLUMNS = ("username", "email", "display_name", "locale", "bio")


# -- helpers ---------------------------------------------------------------------------


def as_user_id(value: Any) -> uuid.UUID | None:
    """``value`` as a user id; None if it cannot be one (a service principal's name, say)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _user(row: asyncpg.Record) -> dict[str, Any]:
    user = dict(row)
    user["email_verified"] = user["email_verified_at"] is not None
    return user


def _conflict(exc: asyncpg.UniqueViolationError) -> Conflict:
    field = "email" if "email" in (exc.constraint_name or "") else "username"
    return Conflict(
        f"{field} is already taken",
        extra={"errors": [{"field": field, "message": "already taken", "type": "unique"}]},
    )


_VERIFICATION_PURPOSE = "email-verification"


def ensure_grantable(grantor: Principal, scopes: Iterable[str], *, field: str = "scopes") -> None:
    """Refuse (403) to grant any scope ``grantor`` does not hold itself."""
    missing = [(i, s) for i, s in enumerate(scopes) if not grantor.can(s)]
    if missing:
        raise Forbidden(
            "a principal may only grant scopes it holds: " + " ".join(s for _, s in missing),
            extra={
                "scopes_not_held": [s for _, s in missing],
                "errors": [{"field": f"{field}[{i}]" if field == "scopes" else field,
                            "message": f"the caller does not hold {s}", "type": "scope_not_held"}
                           for i, s in missing],
            },
        )


async def _role_scopes_of(conn: asyncpg.Connection | asyncpg.Pool, user_id: uuid.UUID) -> list[str]:
    """The scopes of the account's roles, whatever its status."""
    return list(await conn.fetchval(
        "SELECT coalesce(array_agg(DISTINCT rs.scope), '{}') FROM user_roles ur "
        "JOIN role_scopes rs ON rs.role = ur.role WHERE ur.user_id = $1",
        user_id,
    ))


async def ensure_may_manage(
    grantor: Principal, user_id: str | uuid.UUID, *, conn: asyncpg.Connection | None = None
) -> None:
    """Refuse (403 naming ``user_id``) an administrator acting on another account that holds scopes the
    administrator does not: a lesser administrator cannot reset, disable, erase or strip a greater one."""
    uid = as_user_id(user_id)
    if uid is None or str(uid) == grantor.subject:
        return
    held = await _role_scopes_of(conn if conn is not None else await postgres.pool(), uid)
    missing = sorted(s for s in held if not grantor.can(s))
    if missing:
        raise Forbidden(
            "the account holds scopes the caller does not: " + " ".join(missing),
            extra={"scopes_not_held": missing,
                   "errors": [{"field": "user_id", "message": "the account outranks the caller",
                               "type": "outranked"}]},
        )


async def _locked_user(conn: asyncpg.Connection, user_id: uuid.UUID, *, mode: str = "UPDATE") -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1 AND status <> 'erased' FOR {mode}", user_id
    )
    if row is None:
        raise NotFound("no such user")
    return row


async def _active_scopes(conn: asyncpg.Connection | asyncpg.Pool, user_id: uuid.UUID) -> list[str] | None:
    row = await conn.fetchrow(
        "SELECT u.status, coalesce(array_agg(DISTINCT rs.scope) FILTER (WHERE rs.scope IS NOT NULL), '{}') AS scopes "
        "FROM users u LEFT JOIN user_roles ur ON ur.user_id = u.user_id LEFT JOIN role_scopes rs ON rs.role = ur.role "
        "WHERE u.user_id = $1 GROUP BY u.status",
        user_id,
    )
    if row is None or row["status"] != "active":
        return None
    return sorted(row["scopes"])


# -- scopes (what tokens carry) -----------------------------------------------------------


async def active_scopes(user_id: str | uuid.UUID) -> list[str] | None:
    """The RBAC scopes of an active account; None when there is no such active account."""
    uid = as_user_id(user_id)
    if uid is None:
        return None
    return await _active_scopes(await postgres.pool(), uid)


async def scopes_for(user_id: str | uuid.UUID) -> list[str]:
    """The scopes tokens issued to ``user_id`` carry: the union of its roles' scopes ([] if not active)."""
    return await active_scopes(user_id) or []


# -- users and profiles ------------------------------------------------------------------------


async def register(
    *, username: str, email: str, password: str, display_name: str | None = None, locale: str | None = None,
    bio: str | None = None,
) -> dict[str, Any]:
    """A new person with the default role; the verification mail is sent in the same transaction."""
    from nexus_ray.deployments.auth.auth import passwords

    passwords.check_policy(password, username=username)
    password_hash = await passwords.hash_password(password)
    user_id = uuid.uuid4()
    async with postgres.transaction() as conn:
        try:
            row = await conn.fetchrow(
                "INSERT INTO users (user_id, kind, username, email, display_name, locale, bio, password_hash, "
                f"password_changed_at) VALUES ($1, 'user', $2, $3, $4, $5, $6, $7, now()) RETURNING {_USER_COLUMNS}",
                user_id, username, email, display_name or username, locale, bio, password_hash,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _conflict(exc) from None
        await conn.execute(
            "INSERT INTO user_roles (user_id, role, granted_by) VALUES ($1, $2, 'registration')", user_id, DEFAULT_ROLE
        )
        await _send_verification(conn, user_id=user_id, email=email)
    return _user(row)


async def create_service_account(
    *, username: str, display_name: str | None, roles: list[str], grantor: Principal
) -> dict[str, Any]:
    """A non-person account (no email, no password) that acts through API keys."""
    user_id = uuid.uuid4()
    async with postgres.transaction() as conn:
        for role in roles:
            ensure_grantable(grantor, await _role_scopes(conn, role), field="roles")
        try:
            row = await conn.fetchrow(
                f"INSERT INTO users (user_id, kind, username, display_name) VALUES ($1, 'service', $2, $3) "
                f"RETURNING {_USER_COLUMNS}",
                user_id, username, display_name or username,
            )
        except asyncpg.UniqueViolationError as exc:
            raise _conflict(exc) from None
        await conn.executemany(
            "INSERT INTO user_roles (user_id, role, granted_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [(user_id, role, grantor.subject) for role in roles],
        )
    return _user(row)


async def get_user(*, user_id: uuid.UUID) -> dict[str, Any]:
    """A live (not erased) account; NotFound otherwise."""
    pg = await postgres.pool()
    row = await pg.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1 AND status <> 'erased'", user_id)
    if row is None:
        raise NotFound("no such user")
    return _user(row)


async def list_users(*, limit: int = 50, after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Live accounts ordered by username; ``after`` is the last username of the previous page."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE status <> 'erased' AND ($1::text IS NULL OR lower(username) > $1) "
        "ORDER BY lower(username) LIMIT $2",
        after.lower() if after else None,
        limit + 1,
    )
    users = [_user(r) for r in rows[:limit]]
    return users, (users[-1]["username"].lower() if len(rows) > limit else None)


async def update_user(*, user_id: uuid.UUID, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply profile ``changes``; a changed email address loses its verification and gets a new mail."""
    for field in ("username", "email"):
        if field in changes and changes[field] is None:
            raise ValidationFailed.for_field(field, "cannot be removed", "required")
    async with postgres.transaction() as conn:
        current = await _locked_user(conn, user_id)
        sets = {k: v for k, v in changes.items() if k in _PROFILE_COLUMNS and v != current[k]}
        new_email = "email" in sets and (current["email"] or "").lower() != sets["email"].lower()
        if not sets:
            return _user(current)
        assignments = [f"{col} = ${i}" for i, col in enumerate(sets, start=2)]
        if new_email:
            assignments.append("email_verified_at = NULL")
        try:
            row = await conn.fetchrow(
                f"UPDATE users SET {', '.join(assignments)}, updated_at = now() WHERE user_id = $1 "
                f"RETURNING {_USER_COLUMNS}",
                user_id, *sets.values(),
            )
        except asyncpg.UniqueViolationError as exc:
            raise _conflict(exc) from None
        if new_email:
            await _send_verification(conn, user_id=user_id, email=row["email"])
    return _user(row)


# -- email verification ---------------------------------------------------------------------------


async def _send_verification(conn: asyncpg.Connection, *, user_id: uuid.UUID, email: str) -> datetime:
    token = VERIFICATION_PREFIX + secrets.token_urlsafe(32)
    # A new token replaces those not yet used: only the latest mail verifies.
    await conn.execute("DELETE FROM email_verifications WHERE user_id = $1 AND used_at IS NULL", user_id)
    expires_at = await conn.fetchval(
        "INSERT INTO email_verifications (token_hash, user_id, email, expires_at) "
        "VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
        digests.digest(_VERIFICATION_PURPOSE, token), user_id, email, float(users_settings().email_verification_ttl_s),
    )
    body = (
        "Confirm that this address belongs to your Nexus account.\n\n"
        f"Verification code: {token}\n\n"
        "Submit it with POST /auth/v1/users/verify-email {\"token\": \"<code>\"}.\n"
        f"The code works once, until {expires_at.isoformat()}. If you did not ask for it, ignore this mail.\n"
    )
    await mail.provider().send(
        conn,
        mail.Mail(to=email, template="email-verification", subject="Confirm your email address", body_text=body,
                  user_id=user_id),
    )
    return expires_at


async def send_verification(*, user_id: uuid.UUID) -> dict[str, Any]:
    """Send a new verification mail to the account's address (the previous code stops working)."""
    async with postgres.transaction() as conn:
        user = await _locked_user(conn, user_id)
        if user["email"] is None:
            raise ValidationFailed.for_field("email", "the account has no email address", "missing")
        if user["email_verified_at"] is not None:
            raise Conflict(
                "the email address is already verified",
                extra={"errors": [{"field": "email", "message": "already verified", "type": "verified"}]},
            )
        expires_at = await _send_verification(conn, user_id=user_id, email=user["email"])
    return {"email": user["email"], "expires_at": expires_at}


async def verify_email(*, token: str) -> dict[str, Any]:
    """Use a verification code (once, before it expires): the address it was sent to becomes verified."""
    async with postgres.transaction() as conn:
        used = await conn.fetchrow(
            "UPDATE email_verifications SET used_at = now() "
            "WHERE token_hash = ANY($1::bytea[]) AND used_at IS NULL AND expires_at > now() RETURNING user_id, email",
            digests.candidates(_VERIFICATION_PURPOSE, token),
        )
        if used is None:
            raise ValidationFailed.for_field("token", "unknown, expired or already used", "invalid_token")
        row = await conn.fetchrow(
            "UPDATE users SET email_verified_at = now(), updated_at = now() "
            "WHERE user_id = $1 AND lower(email) = lower($2) AND status = 'active' "
            "RETURNING user_id, email, email_verified_at",
            used["user_id"], used["email"],
        )
        if row is None:
            raise ValidationFailed.for_field("token", "the address it verifies is no longer the account's",
                                             "invalid_token")
    return dict(row)


# -- roles and permissions --------------------------------------------------------------------------


async def _role_scopes(conn: asyncpg.Connection, role: str) -> list[str]:
    row = await conn.fetchrow(
        "SELECT coalesce(array_agg(rs.scope ORDER BY rs.scope) FILTER (WHERE rs.scope IS NOT NULL), '{}') AS scopes "
        "FROM roles r LEFT JOIN role_scopes rs ON rs.role = r.name WHERE r.name = $1 GROUP BY r.name",
        role,
    )
    if row is None:
        raise NotFound(f"no role {role!r}", extra={"errors": [{"field": "role", "message": "unknown role",
                                                               "type": "not_found"}]})
    return list(row["scopes"])


async def _roles(conn: asyncpg.Connection | asyncpg.Pool, name: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT r.name, r.description, r.builtin, r.created_at, r.updated_at, "
        "coalesce(array_agg(rs.scope ORDER BY rs.scope) FILTER (WHERE rs.scope IS NOT NULL), '{}') AS scopes "
        "FROM roles r LEFT JOIN role_scopes rs ON rs.role = r.name WHERE ($1::text IS NULL OR r.name = $1) "
        "GROUP BY r.name ORDER BY r.name",
        name,
    )
    return [dict(r) | {"scopes": list(r["scopes"])} for r in rows]


async def list_roles() -> list[dict[str, Any]]:
    """Every role with its scopes."""
    return await _roles(await postgres.pool())


async def put_role(
    *, name: str, description: str, scopes: list[str], grantor: Principal
) -> tuple[dict[str, Any], bool]:
    """Create or replace a role (idempotent); returns (role, created). Only scopes the grantor holds."""
    ensure_grantable(grantor, scopes)
    async with postgres.transaction() as conn:
        current = await conn.fetchrow("SELECT builtin FROM roles WHERE name = $1 FOR UPDATE", name)
        if current is not None:
            # Replacing a role takes its scopes from every holder: only for one who holds them all.
            ensure_grantable(grantor, await _role_scopes(conn, name), field="name")
            if current["builtin"] and not scopes:
                raise ValidationFailed.for_field("scopes", f"{name} is a built-in role: it keeps at least one scope",
                                                 "builtin")
        created = await conn.fetchval(
            "INSERT INTO roles (name, description) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, updated_at = now() "
            "RETURNING xmax = 0",
            name, description,
        )
        await conn.execute("DELETE FROM role_scopes WHERE role = $1", name)
        await conn.execute(
            "INSERT INTO role_scopes (role, scope) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            name, sorted(set(scopes)),
        )
        (role,) = await _roles(conn, name)
    return role, bool(created)


async def delete_role(*, name: str, grantor: Principal) -> bool:
    """Delete a role (and its grants); built-in roles stay, and only one who holds all its scopes deletes it.
    False if there was none."""
    async with postgres.transaction() as conn:
        builtin = await conn.fetchval("SELECT builtin FROM roles WHERE name = $1 FOR UPDATE", name)
        if builtin is None:
            return False
        if builtin:
            raise Conflict(f"{name} is a built-in role", extra={"errors": [{"field": "name", "message": "built-in",
                                                                            "type": "builtin"}]})
        ensure_grantable(grantor, await _role_scopes(conn, name), field="name")
        await conn.execute("DELETE FROM roles WHERE name = $1", name)
    apikeys.forget_all()  # its holders' keys lose its scopes here at once, elsewhere within api_key_cache_s
    return True


async def roles_of(*, user_id: uuid.UUID) -> dict[str, Any]:
    """The account's roles and its effective scopes."""
    pg = await postgres.pool()
    async with pg.acquire() as conn:
        status = await conn.fetchval("SELECT status FROM users WHERE user_id = $1", user_id)
        if status is None or status == "erased":
            raise NotFound("no such user")
        roles = await conn.fetch("SELECT role FROM user_roles WHERE user_id = $1 ORDER BY role", user_id)
        scopes = await _active_scopes(conn, user_id) or []
    return {"user_id": user_id, "roles": [r["role"] for r in roles], "scopes": scopes}


async def grant_role(*, user_id: uuid.UUID, role: str, grantor: Principal) -> dict[str, Any]:
    """Give ``role`` to the account (idempotent); the grantor must hold every scope of the role."""
    async with postgres.transaction() as conn:
        await _locked_user(conn, user_id, mode="SHARE")
        ensure_grantable(grantor, await _role_scopes(conn, role), field="role")
        await conn.execute(
            "INSERT INTO user_roles (user_id, role, granted_by) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            user_id, role, grantor.subject,
        )
    return await roles_of(user_id=user_id)


async def revoke_role(*, user_id: uuid.UUID, role: str, grantor: Principal) -> bool:
    """Take ``role`` from the account (idempotent); True if it had it. Like granting it, only for a grantor
    who holds every scope of the role. The account's API keys lose the role's scopes (they are held to their
    owner's roles at use: here at once, in other replicas within ``api_key_cache_s``)."""
    async with postgres.transaction() as conn:
        ensure_grantable(grantor, await _role_scopes(conn, role), field="role")
        had = bool(await conn.fetchval(
            "DELETE FROM user_roles WHERE user_id = $1 AND role = $2 RETURNING true", user_id, role
        ))
    apikeys.forget(principal=str(user_id))
    return had


async def set_status(*, user_id: uuid.UUID, status: str, grantor: Principal) -> dict[str, Any]:
    """Disable or enable an account (idempotent), as an administrator who outranks it.

    Disabling ends its sessions, v2 access tokens and OAuth grants in the same transaction; its API
    keys stay but are refused while it is disabled (the edge checks the owner's status at use), and
    work again once it is enabled.
    """
    from nexus_ray.deployments.auth import credentials

    ended = None
    async with postgres.transaction() as conn:
        current = await _locked_user(conn, user_id)
        await ensure_may_manage(grantor, user_id, conn=conn)
        if current["status"] != status:
            await conn.execute("UPDATE users SET status = $2, updated_at = now() WHERE user_id = $1", user_id, status)
            if status == "disabled":
                ended = await credentials.end_all(conn, user_id=user_id, reason="account-disabled", api_keys=False)
        row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = $1", user_id)
    if ended is not None:
        await credentials.after_commit(ended)
    apikeys.forget(principal=str(user_id))
    return _user(row)


# -- API keys ------------------------------------------------------------------------------------


def _key(row: asyncpg.Record, now: datetime) -> dict[str, Any]:
    key = {k: row[k] for k in ("key_id", "name", "created_at", "expires_at", "revoked_at")}
    key["scopes"] = list(row["scopes"])
    key["active"] = row["revoked_at"] is None and (row["expires_at"] is None or row["expires_at"] > now)
    return key


async def create_api_key(
    *, user_id: uuid.UUID, name: str, scopes: list[str], expires_in_s: int | None, grantor: Principal
) -> dict[str, Any]:
    """A new key acting for the account with ``scopes``; the full key is in the result, and only there.

    The scopes must be held both by the grantor and by the account itself, so a key never
    does more than its owner or its creator may. Keys cannot mint keys.
    """
    if grantor.kind == "api_key":
        raise Forbidden("an API key cannot create API keys; use the account's own credentials")
    ensure_grantable(grantor, scopes)
    async with postgres.transaction() as conn:
        await _locked_user(conn, user_id, mode="SHARE")  # erasure waits for this key, or this key for erasure
        owner = await _active_scopes(conn, user_id)
        if owner is None:
            raise NotFound("no such active user")
        beyond = [(i, s) for i, s in enumerate(scopes) if not has_scope(frozenset(owner), s)]
        if beyond:
            raise Forbidden(
                "the account itself does not hold: " + " ".join(s for _, s in beyond),
                extra={"errors": [{"field": f"scopes[{i}]", "message": f"the account does not hold {s}",
                                   "type": "scope_not_held"} for i, s in beyond]},
            )
        expires_at = None
        if expires_in_s is not None:
            expires_at = await conn.fetchval("SELECT now() + make_interval(secs => $1)", float(expires_in_s))
        key_id, key = await apikeys.create(
            principal=str(user_id), name=name, scopes=scopes, expires_at=expires_at, conn=conn
        )
        row = await conn.fetchrow("SELECT *, now() AS now FROM api_keys WHERE key_id = $1", key_id)
    return _key(row, row["now"]) | {"key": key}


async def list_api_keys(*, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """The account's keys, newest first, without secrets."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT *, now() AS now FROM api_keys WHERE principal = $1 ORDER BY created_at DESC, key_id", str(user_id)
    )
    return [_key(r, r["now"]) for r in rows]


async def revoke_api_key(*, user_id: uuid.UUID, key_id: str, grantor: Principal) -> bool:
    """Revoke one of the account's keys (idempotent); NotFound if it is not the account's.

    An administrator acting on another account must outrank it (:func:`ensure_may_manage`), as for
    every other action on an account: a lesser administrator cannot cut a greater one's keys."""
    pg = await postgres.pool()
    owner = await pg.fetchval("SELECT principal FROM api_keys WHERE key_id = $1", key_id)
    if owner != str(user_id):
        raise NotFound("no such API key for this account")
    await ensure_may_manage(grantor, user_id)
    return await apikeys.revoke(key_id=key_id)


# -- for auth-service -------------------------------------------------------------------------------


async def login_record(*, username: str | None = None, user_id: uuid.UUID | None = None) -> dict[str, Any] | None:
    """(user_id, username, status, password_hash) of a live account by username or id; None if none."""
    pg = await postgres.pool()
    columns = "SELECT user_id, username, status, password_hash FROM users WHERE status <> 'erased' AND "
    if username is not None:  # the unique index on lower(username) answers this one
        row = await pg.fetchrow(columns + "lower(username) = lower($1)", username)
    else:
        row = await pg.fetchrow(columns + "user_id = $1", user_id)
    return dict(row) if row else None


async def replace_password_hash(
    *, conn: asyncpg.Connection, user_id: uuid.UUID, new_hash: str, expected: str | None
) -> bool:
    """Set the password hash if it still is ``expected`` (compare-and-set on ``conn``); False otherwise."""
    return bool(await conn.fetchval(
        "UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now() "
        "WHERE user_id = $1 AND status <> 'erased' AND password_hash IS NOT DISTINCT FROM $3 RETURNING true",
        user_id, new_hash, expected,
    ))


async def note_login(*, user_id: uuid.UUID, old_hash: str, rehashed: str | None = None) -> None:
    """Record a successful login; store ``rehashed`` when the hash was made with outdated parameters."""
    pg = await postgres.pool()
    await pg.execute(
        "UPDATE users SET last_login_at = now(), "
        "password_hash = CASE WHEN $3::text IS NOT NULL AND password_hash = $2 THEN $3 ELSE password_hash END "
        "WHERE user_id = $1",
        user_id, old_hash, rehashed,
    )


# -- personal data --------------------------------------------------------------------------------------


async def export_user(*, user_id: uuid.UUID) -> dict[str, Any]:
    """Everything held about the account, as one JSON document (never a secret or a hash)."""
    from nexus_ray.deployments.auth.auth import sessions as legacy_sessions

    pg = await postgres.pool()
    async with pg.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        user = await conn.fetchrow(
            "SELECT user_id, kind, status, username, email, email_verified_at, display_name, locale, bio, "
            "password_hash IS NOT NULL AS has_password, password_changed_at, last_login_at, created_at, updated_at "
            "FROM users WHERE user_id = $1 AND status <> 'erased'",
            user_id,
        )
        if user is None:
            raise NotFound("no such user")
        roles = await conn.fetch(
            "SELECT role, granted_by, granted_at FROM user_roles WHERE user_id = $1 ORDER BY role", user_id
        )
        scopes = await _active_scopes(conn, user_id) or []
        keys = await conn.fetch(
            "SELECT *, now() AS now FROM api_keys WHERE principal = $1 ORDER BY created_at", str(user_id)
        )
        verifications = await conn.fetch(
            "SELECT email, created_at, expires_at, used_at FROM email_verifications WHERE user_id = $1 "
            "ORDER BY created_at",
            user_id,
        )
        # Message bodies are left out: they hold verification codes that may still work.
        messages = await conn.fetch(
            "SELECT message_id, to_address, template, subject, created_at, delivered_at FROM mail_outbox "
            "WHERE user_id = $1 ORDER BY id",
            user_id,
        )
        now = await conn.fetchval("SELECT now()")
    sessions = await legacy_sessions.list_for(user_id=str(user_id))
    return {
        "format": "nexus-personal-data/1",
        "exported_at": now,
        "user": dict(user),
        "roles": [dict(r) for r in roles],
        "scopes": scopes,
        "api_keys": [_key(k, k["now"]) for k in keys],
        "email_verifications": [dict(v) for v in verifications],
        "messages": [dict(m) for m in messages],
        "sessions": [
            {"session_id": s.session_id, "created_at": _at(s.created_at), "last_used_at": _at(s.last_used_at),
             "expires_at": _at(s.expires_at), "ip": s.ip, "user_agent": s.user_agent, "device": s.device}
            for s in sessions
        ],
    }


async def erase_user(*, user_id: uuid.UUID, grantor: Principal | None = None) -> dict[str, Any]:
    """Erase the account: anonymise it, end every credential, drop its personal data. Idempotent.

    One transaction: the row keeps only its id (other services refer to it) and
    ``status = 'erased'``; roles, verification codes and mail go; every credential ends
    (:func:`nexus_ray.deployments.auth.credentials.end_all`: API keys, OAuth grants, legacy
    sessions and v2 tokens, the Redis part before the commit, so a failure there rolls the
    erasure back); ``auth.user.erased`` is emitted through the outbox so services holding
    other data about the account (session-mgr) forget it. ``grantor``: an administrator
    erasing another account must outrank it.
    """
    from nexus_ray.deployments.auth import credentials

    if grantor is not None:
        await ensure_may_manage(grantor, user_id)
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            "SELECT status, erased_at FROM users WHERE user_id = $1 FOR UPDATE", user_id
        )
        if row is None:
            raise NotFound("no such user")
        if row["status"] == "erased":
            return {"user_id": user_id, "erased_at": row["erased_at"], "already_erased": True,
                    "api_keys_revoked": 0, "sessions_revoked": 0}
        ended = await credentials.end_all(conn, user_id=user_id, reason="account-erased")
        await conn.execute("UPDATE api_keys SET name = 'erased' WHERE principal = $1", str(user_id))
        await conn.execute("DELETE FROM user_roles WHERE user_id = $1", user_id)
        await conn.execute("DELETE FROM email_verifications WHERE user_id = $1", user_id)
        await conn.execute(
            "DELETE FROM mail_outbox WHERE user_id = $1 OR lower(to_address) = "
            "(SELECT lower(email) FROM users WHERE user_id = $1)",
            user_id,
        )
        erased_at = await conn.fetchval(
            "UPDATE users SET status = 'erased', username = 'erased-' || replace(user_id::text, '-', ''), "
            "email = NULL, email_verified_at = NULL, display_name = NULL, locale = NULL, bio = NULL, "
            "password_hash = NULL, password_changed_at = NULL, last_login_at = NULL, erased_at = now(), "
            "updated_at = now() WHERE user_id = $1 RETURNING erased_at",
            user_id,
        )
        await events.emit(conn, ERASED_TOPIC, {"user_id": str(user_id)}, key=str(user_id))
    await credentials.after_commit(ended)
    return {
        "user_id": user_id,
        "erased_at": erased_at,
        "already_erased": False,
        "api_keys_revoked": len(ended.api_keys),
        "sessions_revoked": ended.sessions,
    }
