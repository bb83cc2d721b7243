"""pv-keys logic: assets and their owners, Ed25519 access keys (issue, verify, revoke), ownership transfer.

Access keys are signed through key-service (purpose ``pv-keys``, EdDSA), so their signing key
is stored sealed under the master key, rotates with overlap and every signature is audited.
Their format and offline verification are in :mod:`.offline`.

A transfer moves an asset from its owner to a new holder in one transaction: the old holder's
active keys for the asset are revoked, the owner changes and the new holder gets a key. It is
idempotent by its idempotency key: the same key with the same request replays the first result
(the same access key), with another request it is refused. Idempotency keys belong to the principal
that sent them (``actor``): another principal's identical key is another transfer.

Objects belong to someone. Every function that acts on an asset or an access key takes
``caller``: the principal it acts for, or None for administrators and trusted in-process
callers. A caller may act on the assets it owns (and, for a key, on the keys it holds);
anything else reads exactly as an object that does not exist (404), so that nobody learns
which asset ids are taken by probing.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from datetime import datetime
from typing import Any

import asyncpg

from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.deployments.specialized import keys
from nexus_ray.exceptions import Conflict, NotFound, ValidationFailed
from nexus_ray.stores import postgres

from . import offline
from .settings import PvKeysSettings

PURPOSE = "pv-keys"
DEFAULT_TTL_S = 30 * 86400
OWNER_PERMISSIONS = ("owner",)

_KEY_COLUMNS = (
    "key_id, asset_id, holder, permissions, issued_at, expires_at, issued_by, kid, revoked_at, revoked_by, "
    "revoked_reason"
)


def _not_found(field: str, what: str) -> NotFound:
    return NotFound(what, extra={"errors": [{"field": field, "message": "not found", "type": "not_found"}]})


def _asset_not_found(asset_id: str) -> NotFound:
    return _not_found("asset_id", f"no asset {asset_id}: register it first")


def _key_not_found(key_id: str) -> NotFound:
    return _not_found("key_id", f"no access key {key_id}")


def _check_ttl(ttl_s: int) -> int:
    limit = settings_of(PvKeysSettings).pv_key_max_ttl_s
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 60 <= ttl_s <= limit:
        raise ValidationFailed.for_field("ttl_s", f"must be between 60 and {limit} seconds")
    return ttl_s


def _state(row: asyncpg.Record, now: float) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    return "expired" if row["expires_at"] <= now else "active"


def _read(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["permissions"] = list(row["permissions"])
    out["state"] = _state(row, time.time())
    return out


async def _sign(row: asyncpg.Record | dict[str, Any], *, actor: str) -> str:
    claims = offline.claims_for(
        key_id=row["key_id"], holder=row["holder"], asset_id=row["asset_id"], permissions=list(row["permissions"]),
        issued_at=row["issued_at"], expires_at=row["expires_at"], issuer=get_settings().jwt_issuer,
    )
    return await keys.sign(claims, alg=offline.ALGORITHM, purpose=PURPOSE, typ=offline.TYP, actor=actor)


async def public_keys() -> dict[str, Any]:
    """The JWKS that verifies access keys offline (the current pv-keys key, created on first use)."""
    await keys.current_signer(offline.ALGORITHM, purpose=PURPOSE)
    return await keys.jwks(PURPOSE)


# -- assets ---------------------------------------------------------------------------------------


async def register_asset(*, asset_id: str, owner: str, actor: str = "system") -> tuple[dict[str, Any], bool]:
    """Record ``owner`` as the holder of ``asset_id``; (asset, created). Conflict if someone else owns it."""
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            "INSERT INTO pv_assets (asset_id, owner) VALUES ($1, $2) ON CONFLICT (asset_id) DO NOTHING "
            "RETURNING asset_id, owner, created_at, updated_at",
            asset_id, owner,
        )
        if row is not None:
            return dict(row), True
        row = await conn.fetchrow("SELECT asset_id, owner, created_at, updated_at FROM pv_assets WHERE asset_id = $1",
                                  asset_id)
    if row["owner"] != owner:
        raise Conflict(
            f"asset {asset_id} is registered to another owner; transfer it instead",
            extra={"errors": [{"field": "owner", "message": "the asset has another owner", "type": "conflict"}]},
        )
    return dict(row), False


async def _asset_for(conn: asyncpg.Connection, asset_id: str, caller: str | None, lock: str = "") -> asyncpg.Record:
    """The asset row when ``caller`` (None: anyone) owns it, locked with ``lock``; NotFound otherwise."""
    asset = await conn.fetchrow(
        f"SELECT asset_id, owner, created_at, updated_at FROM pv_assets WHERE asset_id = $1 {lock}", asset_id
    )
    if asset is None or (caller is not None and asset["owner"] != caller):
        raise _asset_not_found(asset_id)
    return asset


async def get_asset(asset_id: str, *, caller: str | None = None) -> dict[str, Any]:
    """The asset, its owner and its active access keys (for its owner, or any caller when ``caller`` is None)."""
    pg = await postgres.pool()
    async with pg.acquire() as conn:
        asset = await _asset_for(conn, asset_id, caller)
    rows = await pg.fetch(
        f"SELECT {_KEY_COLUMNS} FROM pv_access_keys WHERE asset_id = $1 AND revoked_at IS NULL "
        "AND expires_at > extract(epoch FROM now()) ORDER BY issued_at, key_id",
        asset_id,
    )
    return {**dict(asset), "active_keys": [_read(r) for r in rows]}


# -- access keys ----------------------------------------------------------------------------------


async def _insert_key(
    conn: asyncpg.Connection, *, asset_id: str, holder: str, permissions: list[str], ttl_s: int, actor: str
) -> asyncpg.Record:
    signer = await keys.current_signer(offline.ALGORITHM, purpose=PURPOSE)
    now = int(time.time())
    return await conn.fetchrow(
        "INSERT INTO pv_access_keys (key_id, asset_id, holder, permissions, issued_at, expires_at, issued_by, kid) "
        f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_KEY_COLUMNS}",
        f"pvk_{secrets.token_hex(12)}", asset_id, holder, _unique(permissions), now, now + ttl_s, actor, signer.kid,
    )


def _unique(permissions: list[str]) -> list[str]:
    return list(dict.fromkeys(permissions))


async def issue(
    *,
    asset_id: str,
    holder: str,
    permissions: list[str],
    ttl_s: int = DEFAULT_TTL_S,
    actor: str = "system",
    caller: str | None = None,
) -> dict[str, Any]:
    """A new access key to ``asset_id`` for ``holder`` granting ``permissions``, valid ``ttl_s`` seconds.

    Only the asset's owner issues keys to it (``caller``; None: an administrator). Returns the
    key's record with ``access_key``, the signed key (not stored: shown to the caller).
    """
    _check_ttl(ttl_s)
    if not permissions:
        raise ValidationFailed.for_field("permissions", "must grant at least one permission")
    async with postgres.transaction() as conn:
        # FOR SHARE: a transfer committing meanwhile would otherwise leave the old owner's new key active.
        await _asset_for(conn, asset_id, caller, "FOR SHARE")
        row = await _insert_key(conn, asset_id=asset_id, holder=holder, permissions=permissions, ttl_s=ttl_s,
                                actor=actor)
    return {**_read(row), "access_key": await _sign(row, actor=actor)}


_KEY_AND_OWNER = (
    "SELECT {columns}, a.owner FROM pv_access_keys k JOIN pv_assets a USING (asset_id) WHERE k.key_id = $1 {lock}"
)


async def _key_for(conn: asyncpg.Connection, key_id: str, caller: str | None, lock: str = "") -> asyncpg.Record:
    """The key row when ``caller`` (None: anyone) holds it or owns its asset, locked with ``lock``; NotFound else."""
    columns = ", ".join(f"k.{c.strip()}" for c in _KEY_COLUMNS.split(","))
    row = await conn.fetchrow(_KEY_AND_OWNER.format(columns=columns, lock=lock), key_id)
    if row is None or (caller is not None and caller not in (row["owner"], row["holder"])):
        raise _key_not_found(key_id)
    return row


def _key_read(row: asyncpg.Record) -> dict[str, Any]:
    out = _read(row)
    out.pop("owner", None)
    return out


async def status(key_id: str, *, caller: str | None = None) -> dict[str, Any]:
    """The record of an access key with its state (active, expired, revoked): the online revocation check.

    For the key's holder or its asset's owner (``caller``; None: anyone).
    """
    pg = await postgres.pool()
    async with pg.acquire() as conn:
        return _key_read(await _key_for(conn, key_id, caller))


async def verify(access_key: str, *, asset_id: str | None = None, permission: str | None = None) -> dict[str, Any]:
    """The claims of an access key that verifies, is in force and is not revoked; InvalidAccessKey otherwise."""
    jwks = await keys.jwks(PURPOSE)
    claims = offline.verify_offline(
        access_key, jwks, asset_id=asset_id, permission=permission, issuer=get_settings().jwt_issuer
    )
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT revoked_at FROM pv_access_keys WHERE key_id = $1", claims["jti"])
    if row is None:
        raise offline.InvalidAccessKey.because("unknown_key", "was not issued here")
    if row["revoked_at"] is not None:
        raise offline.InvalidAccessKey.because("revoked", "was revoked")
    return claims


async def revoke(
    *, key_id: str, reason: str = "revoked", actor: str = "system", caller: str | None = None
) -> dict[str, Any]:
    """Revoke an access key (revoking a revoked key changes nothing); its record.

    For the asset's owner and the key's own holder (``caller``; None: an administrator).
    """
    async with postgres.transaction() as conn:
        # The asset row is locked so that the owner checked is the owner until this commits.
        await _key_for(conn, key_id, caller, "FOR SHARE OF a")
        row = await conn.fetchrow(
            "UPDATE pv_access_keys SET revoked_at = now(), revoked_by = $2, revoked_reason = $3 "
            f"WHERE key_id = $1 AND revoked_at IS NULL RETURNING {_KEY_COLUMNS}",
            key_id, actor, reason,
        )
        if row is None:
            row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM pv_access_keys WHERE key_id = $1", key_id)
    return _read(row)


async def revocations(
    *, since: datetime | None = None, after: str = "", limit: int = 500
) -> list[dict[str, Any]]:
    """Keys revoked after (``since``, ``after`` key id), oldest first: for offline verifiers' revocation lists."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT key_id, asset_id, revoked_at FROM pv_access_keys WHERE revoked_at IS NOT NULL "
        "AND ($1::timestamptz IS NULL OR (revoked_at, key_id) > ($1, $2)) ORDER BY revoked_at, key_id LIMIT $3",
        since, after, limit,
    )
    return [dict(r) for r in rows]


# -- transfer -------------------------------------------------------------------------------------


def _request_hash(**request: Any) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def _replay(conn: asyncpg.Connection, done: asyncpg.Record, request_hash: str) -> dict[str, Any]:
    if done["request_hash"] != request_hash:
        raise Conflict(
            "this idempotency key was used for another transfer",
            extra={"errors": [{"field": "Idempotency-Key", "message": "already used for another request",
                               "type": "conflict"}]},
        )
    row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM pv_access_keys WHERE key_id = $1", done["new_key_id"])
    return {"done": done, "key": row, "replayed": True}


async def transfer(
    *,
    asset_id: str,
    from_holder: str,
    to_holder: str,
    idempotency_key: str,
    permissions: list[str] | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    actor: str = "system",
    caller: str | None = None,
) -> dict[str, Any]:
    """Move ``asset_id`` from ``from_holder`` (its owner) to ``to_holder``, in one transaction.

    The old holder's active keys to the asset are revoked and the new holder gets a key with
    ``permissions`` (default: owner). Only the owner transfers its asset (``caller``; None: an
    administrator). Replaying the same ``idempotency_key`` from the same ``actor`` with the same
    request returns the first result (``replayed: true``, the same access key); the key of another
    actor is another transfer.
    """
    _check_ttl(ttl_s)
    if to_holder == from_holder:
        raise ValidationFailed.for_field("to_holder", "must differ from from_holder")
    permissions = _unique(list(permissions or OWNER_PERMISSIONS))
    request_hash = _request_hash(asset_id=asset_id, from_holder=from_holder, to_holder=to_holder,
                                 permissions=permissions, ttl_s=ttl_s)
    select_done = "SELECT * FROM pv_transfers WHERE actor = $1 AND idempotency_key = $2"
    try:
        async with postgres.transaction() as conn:
            done = await conn.fetchrow(select_done, actor, idempotency_key)
            if done is None:
                asset = await _asset_for(conn, asset_id, caller, "FOR UPDATE")
                # A concurrent transfer with this key held the lock until it committed: look again.
                done = await conn.fetchrow(select_done, actor, idempotency_key)
            if done is not None:
                result = await _replay(conn, done, request_hash)
            else:
                if asset["owner"] != from_holder:
                    raise Conflict(
                        f"asset {asset_id} is not held by {from_holder}",
                        extra={"errors": [{"field": "from_holder", "message": "is not the asset's owner",
                                           "type": "conflict"}]},
                    )
                revoked = await conn.fetch(
                    "UPDATE pv_access_keys SET revoked_at = now(), revoked_by = $3, revoked_reason = 'transferred' "
                    "WHERE asset_id = $1 AND holder = $2 AND revoked_at IS NULL RETURNING key_id",
                    asset_id, from_holder, actor,
                )
                await conn.execute("UPDATE pv_assets SET owner = $2, updated_at = now() WHERE asset_id = $1",
                                   asset_id, to_holder)
                row = await _insert_key(conn, asset_id=asset_id, holder=to_holder, permissions=permissions,
                                        ttl_s=ttl_s, actor=actor)
                done = await conn.fetchrow(
                    "INSERT INTO pv_transfers (idempotency_key, request_hash, asset_id, from_holder, to_holder, "
                    "new_key_id, revoked_key_ids, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
                    idempotency_key, request_hash, asset_id, from_holder, to_holder, row["key_id"],
                    sorted(r["key_id"] for r in revoked), actor,
                )
                result = {"done": done, "key": row, "replayed": False}
    except asyncpg.UniqueViolationError:
        # The same actor's idempotency key committed meanwhile by a transfer of another asset.
        async with postgres.transaction() as conn:
            result = await _replay(conn, await conn.fetchrow(select_done, actor, idempotency_key), request_hash)
    done, row = result["done"], result["key"]
    return {
        "idempotency_key": done["idempotency_key"],
        "asset_id": done["asset_id"],
        "from_holder": done["from_holder"],
        "to_holder": done["to_holder"],
        "revoked_key_ids": list(done["revoked_key_ids"]),
        "created_at": done["created_at"],
        "replayed": result["replayed"],
        "access_key": {**_read(row), "access_key": await _sign(row, actor=actor)},
    }
