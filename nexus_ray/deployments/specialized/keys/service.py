"""key-service logic: signing keys with rotation and overlap, the JWKS, envelope encryption, the key-use audit.

Other services call it in-process, from any replica (the state is in PostgreSQL)::

    from nexus_ray.deployments.specialized import keys

    token = await keys.sign({"sub": "u1", "exp": now + 900, ...}, alg="ES256")
    envelope = await keys.encrypt(secret, context="billing:card:42")
    secret = await keys.decrypt(envelope, context="billing:card:42")

Signing keys come in purposes: ``platform`` (access and ID tokens; the JWKS the edge verifies
against) and ``pv-keys`` (virtual-world access keys). Each (purpose, algorithm) has one current
key, created on first use. :func:`rotate` makes a new key current; the previous one keeps
verifying (it stays in the JWKS) until ``retires_at = rotated_at + the purpose's longest token
lifetime``, then it stops. :func:`sign` refuses claims that would outlive that overlap, so
everything it signs expires before its key retires. Private keys are stored only sealed
(AES-256-GCM under a key derived from the master key, see :mod:`.crypto`).

Audit: every key use writes a ``key_audit`` row before its result is returned (never key
material, tokens or plaintext). Concurrent uses share one round trip (group commit), and that
statement also reports the current key of every (purpose, algorithm): a replica that signed
with a key rotated elsewhere since it loaded it notices, and signs again with the new key.

Master-key rotation: set ``master_key`` to the new secret and put the old one first in
``previous_master_keys``. Signing keys sealed under a previous master key still unseal, and
envelopes wrapped under one still open, by their ``master_key_id``; new ones are sealed under
the current key. :func:`reseal` (``POST .../master-key/reseal``, ``nexus reseal-keys``)
re-seals every stored signing key under the current master key, in one audited transaction,
and :func:`rewrap` does the same for an envelope its holder sends back. Re-sealing is asked
for, not done at start-up: during a rolling update, replicas still on the old master key would
no longer open keys re-sealed by a replica that already has the new one. Once every replica
runs with the new key, re-seal (and re-wrap), then drop the previous key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import asyncpg
import jwt
from cryptography.exceptions import InvalidTag

from nexus_ray.config import Settings, get_settings
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import NotFound, ServiceUnavailable, ValidationFailed
from nexus_ray.logs import request_id_var
from nexus_ray.stores import postgres

from . import crypto

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purpose:
    """A family of signing keys: the algorithms it uses and the longest life of what it signs."""

    name: str
    algorithms: tuple[str, ...]
    max_ttl_s: Callable[[Settings], int]


def _pv_key_max_ttl_s(_settings: Settings) -> int:
    # pv-keys' own setting, imported on use: pv-keys imports this module.
    from nexus_ray.deployments.specialized.pv_keys.settings import PvKeysSettings

    return settings_of(PvKeysSettings).pv_key_max_ttl_s


PURPOSES: dict[str, Purpose] = {
    p.name: p
    for p in (
        Purpose("platform", crypto.ALGORITHMS, lambda s: s.token_max_ttl_s),
        Purpose("pv-keys", ("EdDSA",), _pv_key_max_ttl_s),
    )
}


def purpose_of(name: str, alg: str | None = None) -> Purpose:
    """The purpose ``name`` (checking that it uses ``alg``); ValidationFailed naming the field otherwise."""
    p = PURPOSES.get(name)
    if p is None:
        raise ValidationFailed.for_field("purpose", f"must be one of: {', '.join(PURPOSES)}")
    if alg is not None and alg not in p.algorithms:
        raise ValidationFailed.for_field("alg", f"must be one of: {', '.join(p.algorithms)} (purpose {name})")
    return p


@lru_cache(maxsize=8)
def _derive(secret: str) -> crypto.MasterKeys:
    return crypto.master_keys(secret)


def master() -> crypto.MasterKeys:
    """The keys derived from the configured master key: everything new is sealed under them."""
    return _derive(get_settings().master_key.get_secret_value())


def masters() -> dict[str, crypto.MasterKeys]:
    """Every master key this process holds, by id: the configured one first, then the previous ones, newest first."""
    held: dict[str, crypto.MasterKeys] = {}
    for keys in (master(), *(_derive(k.get_secret_value()) for k in get_settings().previous_master_keys)):
        held.setdefault(keys.id, keys)
    return held


def _held(master_key_id: Any) -> crypto.MasterKeys | None:
    return masters().get(master_key_id) if isinstance(master_key_id, str) else None


# -- audit ----------------------------------------------------------------------------------------


@dataclass
class KeyUse:
    """One use of a key, as the audit records it."""

    action: str
    actor: str
    kid: str | None = None
    alg: str | None = None
    purpose: str | None = None
    context: str | None = None
    outcome: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    request_id: str | None = field(default_factory=request_id_var.get)
    # Set once the batch holding this use has been written (or failed to be).
    written: bool = False
    awaited: bool = False
    error: BaseException | None = None
    current: dict[tuple[str, str], str] = field(default_factory=dict)


_COLUMNS = "at, action, outcome, kid, alg, purpose, actor, context, request_id, detail"
_WRITE_BATCH = f"""
WITH written AS (
    INSERT INTO key_audit ({_COLUMNS})
    SELECT at, action, outcome, kid, alg, purpose, actor, context, request_id, detail::jsonb
    FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::text[]) AS u({_COLUMNS})
)
SELECT purpose, alg, kid FROM signing_keys WHERE rotated_at IS NULL
"""


def _row(use: KeyUse) -> tuple:
    return (use.at, use.action, use.outcome, use.kid, use.alg, use.purpose, use.actor, use.context,
            use.request_id, json.dumps(use.detail, default=str))


class AuditLog:
    """Writes key uses to ``key_audit`` in batches: concurrent uses share one round trip (group commit)."""

    def __init__(self) -> None:
        self._pending: list[KeyUse] = []
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def record(self, use: KeyUse) -> dict[tuple[str, str], str]:
        """Write ``use`` (with whatever else is pending); returns the current kid of each (purpose, alg).

        Raises ServiceUnavailable when it cannot be written: an unaudited use must not complete.
        """
        use.awaited = True
        self._pending.append(use)
        async with self._get_lock():
            if not use.written:
                await self._flush()
        if use.error is not None:
            raise ServiceUnavailable("the key use could not be audited, so it was not completed") from use.error
        return use.current

    def record_soon(self, use: KeyUse) -> None:
        """Queue ``use`` from synchronous code: a task writes it when a loop runs, else the next flush does."""
        self._pending.append(use)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Write every queued use now."""
        async with self._get_lock():
            await self._flush()

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            pg = await postgres.pool()
            rows = await pg.fetch(_WRITE_BATCH, *map(list, zip(*map(_row, batch), strict=True)))
        except Exception as exc:
            log.error("key audit could not be written (%d uses): %s", len(batch), type(exc).__name__)
            # Nobody waits on queued uses: keep them for the next flush rather than lose them.
            self._pending[:0] = [u for u in batch if not u.awaited]
            for u in batch:
                if u.awaited:
                    u.written, u.error = True, exc
            return
        current = {(r["purpose"], r["alg"]): r["kid"] for r in rows}
        for u in batch:
            u.written, u.current = True, current
        _follow_rotations(current)


_audit = AuditLog()


async def flush_audit() -> None:
    """Write the audit rows queued by synchronous signing (:func:`sign_loaded`); call before exiting."""
    await _audit.flush()


async def _audit_in(conn: asyncpg.Connection, use: KeyUse) -> None:
    """Write ``use`` on ``conn``: inside the transaction of the change it records."""
    await conn.execute(
        f"INSERT INTO key_audit ({_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::text::jsonb)", *_row(use)
    )


# -- signing keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """A current signing key, unsealed in this process."""

    kid: str
    alg: str
    purpose: str
    private_key: Any = field(repr=False)

    def sign(self, claims: dict[str, Any], *, typ: str = "JWT") -> str:
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers={"kid": self.kid, "typ": typ})


_signers: dict[tuple[str, str], Signer] = {}

_META = "kid, purpose, alg, public_jwk, created_at, rotated_at, retires_at, revoked_at"
_CURRENT = (
    "SELECT kid, purpose, alg, private_key, master_key_id FROM signing_keys "
    "WHERE purpose = $1 AND alg = $2 AND rotated_at IS NULL"
)


def _status(row: asyncpg.Record | dict, now: datetime) -> str:
    if row["revoked_at"] is not None:
        return "revoked"
    if row["rotated_at"] is None:
        return "current"
    return "previous" if row["retires_at"] > now else "retired"


def _meta(row: asyncpg.Record) -> dict[str, Any]:
    """What may be shown of a signing key: everything but the sealed private key."""
    out = {k: row[k] for k in ("kid", "purpose", "alg", "public_jwk", "created_at", "rotated_at", "retires_at",
                               "revoked_at")}
    out["status"] = _status(row, datetime.now(UTC))
    return out


def _unseal(row: asyncpg.Record) -> Signer:
    kid = row["kid"]
    keys = _held(row["master_key_id"])
    if keys is None:
        raise ServiceUnavailable(
            f"signing key {kid} was sealed under a master key this platform does not hold: "
            "put it in NEXUS_PREVIOUS_MASTER_KEYS until the keys are re-sealed"
        )
    try:
        private_key = crypto.open_private_key(
            bytes(row["private_key"]), storage=keys.storage, kid=kid, alg=row["alg"], purpose=row["purpose"]
        )
    except InvalidTag:
        raise ServiceUnavailable(f"stored signing key {kid} failed authentication: it was altered") from None
    return Signer(kid=kid, alg=row["alg"], purpose=row["purpose"], private_key=private_key)


async def _insert(conn: asyncpg.Connection, new: crypto.GeneratedKey, purpose: str) -> asyncpg.Record | None:
    """Insert ``new`` as the current key of its (purpose, alg), unless another is current already."""
    keys = master()
    sealed = crypto.seal_private_key(new.private_key, storage=keys.storage, kid=new.kid, alg=new.alg, purpose=purpose)
    return await conn.fetchrow(
        "INSERT INTO signing_keys (kid, purpose, alg, public_jwk, private_key, master_key_id) "
        "VALUES ($1, $2, $3, $4, $5, $6) "
        f"ON CONFLICT (purpose, alg) WHERE rotated_at IS NULL DO NOTHING RETURNING {_META}",
        new.kid, purpose, new.alg, new.jwk, sealed, keys.id,
    )


async def _lock(conn: asyncpg.Connection, purpose: str, alg: str) -> None:
    # Serialises rotations of one (purpose, alg) across replicas for the transaction.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"nexus:signing-key:{purpose}:{alg}")


async def _keys_changed(purpose: str) -> None:
    """Make this process's edge read the platform keys now: it refuses a key id it has not read (tokens.py)."""
    if purpose == "platform":
        from nexus_ray.edge import tokens

        await tokens.ring().refresh()


async def current_signer(alg: str = "ES256", *, purpose: str = "platform") -> Signer:
    """The current key of (purpose, alg), unsealed and cached in this process; created on first use."""
    purpose_of(purpose, alg)
    signer = _signers.get((purpose, alg))
    if signer is not None:
        return signer
    pg = await postgres.pool()
    row = await pg.fetchrow(_CURRENT, purpose, alg)
    if row is None:
        new = await asyncio.to_thread(crypto.generate, alg)
        async with postgres.transaction() as conn:
            if await _insert(conn, new, purpose) is not None:
                await _audit_in(conn, KeyUse("generate", "key-service", new.kid, alg, purpose))
        await _keys_changed(purpose)
        row = await pg.fetchrow(_CURRENT, purpose, alg)
    signer = _unseal(row)
    _signers[(purpose, alg)] = signer
    return signer


_reloading: set[tuple[str, str]] = set()
_reload_tasks: set[asyncio.Task] = set()


def _follow_rotations(current: dict[tuple[str, str], str]) -> None:
    """Reload, in the background, cached signers whose key an audit write showed was rotated elsewhere.

    :func:`sign` re-signs by itself; this keeps :func:`sign_loaded` (synchronous) from going on
    with a key that will retire before what it signs expires.
    """
    for key, signer in list(_signers.items()):
        kid = current.get(key)
        if kid is None or kid == signer.kid or key in _reloading:
            continue
        _reloading.add(key)
        task = asyncio.get_running_loop().create_task(_reload(key), name="signer-reload")
        _reload_tasks.add(task)
        task.add_done_callback(_reload_tasks.discard)


async def _reload(key: tuple[str, str]) -> None:
    try:
        pg = await postgres.pool()
        row = await pg.fetchrow(_CURRENT, *key)
        if row is not None:
            _signers[key] = _unseal(row)
    except Exception as exc:  # the next audit write tries again
        log.warning("signing key could not be reloaded: %s", type(exc).__name__)
    finally:
        _reloading.discard(key)


def _check_claims(claims: Any, purpose: Purpose) -> None:
    if not isinstance(claims, dict):
        raise ValidationFailed.for_field("claims", "must be an object")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int):
        raise ValidationFailed.for_field("exp", "is required: the expiry in whole seconds since the epoch")
    now = int(time.time())
    limit = purpose.max_ttl_s(get_settings())
    if exp <= now:
        raise ValidationFailed.for_field("exp", "must be in the future")
    if exp > now + limit:
        raise ValidationFailed.for_field(
            "exp", f"is more than {limit} s ahead: nothing may outlive its signing key's rotation overlap"
        )


def _sign_use(signer: Signer, claims: dict[str, Any], typ: str, actor: str) -> KeyUse:
    detail: dict[str, Any] = {k: claims[k] for k in ("sub", "jti", "exp") if k in claims}
    return KeyUse("sign", actor, signer.kid, signer.alg, signer.purpose, detail={**detail, "typ": typ})


async def sign(
    claims: dict[str, Any],
    *,
    alg: str = "ES256",
    purpose: str = "platform",
    typ: str = "JWT",
    actor: str = "system",
) -> str:
    """A JWS of ``claims`` signed with the current key of (purpose, alg), its ``kid`` in the header.

    ``claims["exp"]`` is required and may be at most the purpose's longest token lifetime ahead
    (``token_max_ttl_s`` for ``platform``). The use is audited before the token is returned.
    """
    p = purpose_of(purpose, alg)
    _check_claims(claims, p)
    for _ in range(3):
        signer = await current_signer(alg, purpose=purpose)
        token = signer.sign(claims, typ=typ)
        current = await _audit.record(_sign_use(signer, claims, typ, actor))
        if current.get((purpose, alg), signer.kid) == signer.kid:
            return token
        # Rotated in another replica since this one loaded its key: sign again with the new key.
        _signers.pop((purpose, alg), None)
    raise ServiceUnavailable("the signing key kept changing while signing; try again")


def sign_loaded(
    claims: dict[str, Any],
    *,
    alg: str = "ES256",
    purpose: str = "platform",
    typ: str = "JWT",
    actor: str = "system",
) -> str:
    """:func:`sign` for synchronous callers (``tokens.issue``: the CLI and tests).

    Uses the key the last :func:`current_signer` (or :func:`rotate`) loaded in this process; the
    audit row is queued and written in the background (:func:`flush_audit` writes it now).
    """
    p = purpose_of(purpose, alg)
    _check_claims(claims, p)
    signer = _signers.get((purpose, alg))
    if signer is None:
        raise RuntimeError(f"no {purpose} {alg} signing key loaded in this process: await current_signer() first")
    token = signer.sign(claims, typ=typ)
    _audit.record_soon(_sign_use(signer, claims, typ, actor))
    return token


async def rotate(alg: str, *, purpose: str = "platform", actor: str = "system") -> dict[str, Any]:
    """Make a new key current for (purpose, alg); the previous one verifies until its ``retires_at``.

    Returns ``{"current": <key>, "previous": <key or None>}`` (metadata, never private material).
    """
    p = purpose_of(purpose, alg)
    new = await asyncio.to_thread(crypto.generate, alg)
    overlap = float(p.max_ttl_s(get_settings()))
    async with postgres.transaction() as conn:
        await _lock(conn, purpose, alg)
        previous = await conn.fetchrow(
            "UPDATE signing_keys SET rotated_at = now(), retires_at = now() + make_interval(secs => $3) "
            f"WHERE purpose = $1 AND alg = $2 AND rotated_at IS NULL RETURNING {_META}",
            purpose, alg, overlap,
        )
        current = await _insert(conn, new, purpose)
        detail = {"previous": previous["kid"], "previous_retires_at": previous["retires_at"]} if previous else {}
        await _audit_in(conn, KeyUse("rotate", actor, new.kid, alg, purpose, detail=detail))
    _signers[(purpose, alg)] = Signer(new.kid, alg, purpose, new.private_key)
    await _keys_changed(purpose)
    log.info("rotated the %s %s signing key", purpose, alg, extra={"kid": new.kid})
    return {"current": _meta(current), "previous": _meta(previous) if previous is not None else None}


async def revoke_key(kid: str, *, actor: str = "system") -> dict[str, Any]:
    """Withdraw a key at once (compromise): it leaves the JWKS and stops verifying within ``jwks_cache_s``.

    A current key is replaced by a new one first. Revoking a revoked key changes nothing.
    """
    pg = await postgres.pool()
    found = await pg.fetchrow("SELECT purpose, alg, rotated_at FROM signing_keys WHERE kid = $1", kid)
    if found is None:
        raise NotFound(f"no signing key {kid}", extra={"errors": [{"field": "kid", "message": "unknown key"}]})
    purpose, alg = found["purpose"], found["alg"]
    # A key that is not current now never becomes current again: only a current one needs a successor.
    new = await asyncio.to_thread(crypto.generate, alg) if found["rotated_at"] is None else None
    async with postgres.transaction() as conn:
        await _lock(conn, purpose, alg)
        row = await conn.fetchrow(f"SELECT {_META} FROM signing_keys WHERE kid = $1", kid)
        if row["revoked_at"] is not None:
            return _meta(row)
        was_current = row["rotated_at"] is None
        row = await conn.fetchrow(
            "UPDATE signing_keys SET revoked_at = now(), rotated_at = coalesce(rotated_at, now()), "
            f"retires_at = least(coalesce(retires_at, now()), now()) WHERE kid = $1 RETURNING {_META}",
            kid,
        )
        detail = {}
        if was_current and new is not None:
            await _insert(conn, new, purpose)
            detail["replaced_by"] = new.kid
        await _audit_in(conn, KeyUse("revoke", actor, kid, alg, purpose, detail=detail))
    if was_current and new is not None:
        _signers[(purpose, alg)] = Signer(new.kid, alg, purpose, new.private_key)
    elif _signers.get((purpose, alg)) and _signers[(purpose, alg)].kid == kid:
        _signers.pop((purpose, alg), None)
    await _keys_changed(purpose)
    log.warning("revoked the %s %s signing key", purpose, alg, extra={"kid": kid})
    return _meta(row)


async def verification_keys(purpose: str = "platform") -> list[dict[str, Any]]:
    """Every key of ``purpose`` that verifies now: kid, alg, public JWK, retires_at; newest first."""
    purpose_of(purpose)
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT kid, alg, public_jwk, retires_at FROM signing_keys WHERE purpose = $1 AND revoked_at IS NULL "
        "AND (retires_at IS NULL OR retires_at > now()) ORDER BY created_at DESC",
        purpose,
    )
    return [dict(r) for r in rows]


async def jwks(purpose: str = "platform") -> dict[str, Any]:
    """The JWKS document of ``purpose``: the current keys and the rotated ones still in their overlap."""
    return {"keys": [r["public_jwk"] for r in await verification_keys(purpose)]}


async def list_keys(*, purpose: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Metadata and status (current, previous, retired, revoked) of signing keys, newest first."""
    if purpose is not None:
        purpose_of(purpose)
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {_META} FROM signing_keys WHERE $1::text IS NULL OR purpose = $1 ORDER BY created_at DESC LIMIT $2",
        purpose, limit,
    )
    return [_meta(r) for r in rows]


# -- envelopes ------------------------------------------------------------------------------------


async def encrypt(plaintext: bytes, *, context: str, actor: str = "system") -> dict[str, Any]:
    """An envelope of ``plaintext``: a fresh data key encrypts it (AES-256-GCM) and is wrapped under the
    master key; both are bound to ``context``, which :func:`decrypt` must be given again."""
    crypto.check_context(context)
    if not isinstance(plaintext, bytes | bytearray | memoryview):
        raise ValidationFailed.for_field("plaintext", "must be bytes")
    keys = master()
    envelope = crypto.seal_envelope(bytes(plaintext), context=context, master=keys)
    await _audit.record(KeyUse("encrypt", actor, keys.id, "A256GCM", context=context,
                               detail={"bytes": len(plaintext)}))
    return envelope


async def decrypt(envelope: dict[str, Any], *, context: str, actor: str = "system") -> bytes:
    """The plaintext of an envelope from :func:`encrypt` under the same ``context``.

    :class:`.crypto.TamperedEnvelope` (422) when it was altered or the context differs;
    ValidationFailed naming the field when it is malformed. Failures are audited too.
    """
    crypto.check_context(context)
    # Wrapped under a previous master key during a rotation: opened with that one.
    keys = _held(envelope.get("master_key_id") if isinstance(envelope, dict) else None) or master()
    try:
        plaintext = crypto.open_envelope(envelope, context=context, master=keys)
    except ValidationFailed as exc:
        outcome = "tampered" if isinstance(exc, crypto.TamperedEnvelope) else "malformed"
        await _audit.record(KeyUse("decrypt", actor, keys.id, "A256GCM", context=context, outcome=outcome))
        raise
    await _audit.record(KeyUse("decrypt", actor, keys.id, "A256GCM", context=context,
                               detail={"bytes": len(plaintext)}))
    return plaintext


async def rewrap(envelope: dict[str, Any], *, context: str, actor: str = "system") -> dict[str, Any]:
    """The envelope re-sealed under the current master key (itself when it already is): for a master-key rotation.

    The plaintext never leaves key-service; both the opening and the sealing are audited.
    """
    plaintext = await decrypt(envelope, context=context, actor=actor)
    if envelope.get("master_key_id") == master().id:
        return dict(envelope)
    return await encrypt(plaintext, context=context, actor=actor)


# -- master-key rotation --------------------------------------------------------------------------


async def reseal(*, actor: str = "system") -> dict[str, Any]:
    """Re-seal under the current master key every signing key sealed under a previous one.

    One transaction, one ``reseal`` audit row per key; running it again changes nothing. Keys
    sealed under a master key this process does not hold (or whose sealed bytes were altered)
    are left as they are and listed in ``unreadable``.
    """
    current = master()
    resealed: list[str] = []
    unreadable: list[str] = []
    async with postgres.transaction() as conn:
        rows = await conn.fetch(
            "SELECT kid, purpose, alg, private_key, master_key_id FROM signing_keys WHERE master_key_id <> $1 "
            "ORDER BY created_at, kid FOR UPDATE",
            current.id,
        )
        for row in rows:
            try:
                signer = _unseal(row)
            except ServiceUnavailable:
                unreadable.append(row["kid"])
                continue
            sealed = crypto.seal_private_key(
                signer.private_key, storage=current.storage, kid=signer.kid, alg=signer.alg, purpose=signer.purpose
            )
            await conn.execute(
                "UPDATE signing_keys SET private_key = $2, master_key_id = $3 WHERE kid = $1",
                signer.kid, sealed, current.id,
            )
            await _audit_in(conn, KeyUse("reseal", actor, signer.kid, signer.alg, signer.purpose,
                                         detail={"from_master_key_id": row["master_key_id"],
                                                 "to_master_key_id": current.id}))
            resealed.append(signer.kid)
    if resealed:
        log.info("re-sealed %d signing keys under the current master key", len(resealed))
    if unreadable:
        log.warning("%d signing keys are sealed under a master key this platform does not hold", len(unreadable),
                    extra={"kids": unreadable})
    return {"master_key_id": current.id, "resealed": resealed, "unreadable": unreadable}


# -- audit reads ----------------------------------------------------------------------------------


async def audit_log(
    *, kid: str | None = None, action: str | None = None, before: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Audit rows, newest first, optionally for one key or action; ``before`` pages by row id."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT id, {_COLUMNS} FROM key_audit WHERE ($1::text IS NULL OR kid = $1) "
        "AND ($2::text IS NULL OR action = $2) AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        kid, action, before, limit,
    )
    return [dict(r) for r in rows]
