"""auth-service-v2's logic: registered clients, and the OAuth 2.0 / OpenID Connect protocol over them.

Plain async functions with keyword-only arguments and no HTTP in them (:mod:`.protocol` reads and
writes the wire format, :mod:`.views` routes). Protocol failures are raised as Authlib's OAuth error
classes (``authlib.oauth2.rfc6749.errors``, ``authlib.oidc.core.errors``): the vocabulary of RFC 6749
section 5.2, which the views send as it is; administration failures are platform errors (problem+json).

Why the protocol is written here rather than in Authlib's ``AuthorizationServer`` and grants: their
storage hooks (``query_client``, ``query_authorization_code``, ``save_token``, ``authenticate_user``,
``ClientMixin.check_client_secret``...) are synchronous calls made from inside the grants' own
validation, so our async stores and key-service's async, audited signing cannot be awaited there;
bridging would park one worker thread per request on ``run_coroutine_threadsafe``. The grants also
log issued tokens (``log.debug("Issue token %r ...")``), accept ``plain`` PKCE unless subclassed,
and have no refresh-token reuse detection or code-replay revocation, which this provider needs with
single-use enforced atomically in PostgreSQL. So the endpoints follow the RFCs here, with Authlib's
primitives: its error classes, RFC 7636's S256 challenge and verifier syntax, OIDC's ``at_hash``.

Tokens:

* access tokens are platform JWTs (``tokens.access_claims``, signed by key-service, ``typ: at+jwt``)
  with ``client_id`` and, for a user's sign-in, ``gid`` (the grant); the edge verifies them offline
  and refuses revoked ones through :mod:`nexus_ray.edge.revocations`;
* ID tokens (``aud`` = the client, ``nonce``, ``at_hash``) are signed with the client's algorithm;
* refresh tokens are opaque (``nxr_...``), stored as keyed hashes, rotated on every use; presenting
  a rotated one revokes its grant, the whole family;
* codes (``nxa_...``) are single-use, live ``oauth_code_ttl_s``, bound to client, redirect URI and
  PKCE challenge; a replayed code revokes the grant its first exchange opened.

Single use is decided by one conditional UPDATE (``... AND used_at IS NULL RETURNING``), in a transaction
that does nothing but that and what it opens. Tokens are signed before it, outside any transaction:
key-service's audit write and user-auth's reads take pool connections of their own, and a transaction
held open while waiting for another connection deadlocks a busy pool.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
    UnsupportedResponseTypeError,
)
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oauth2.rfc7636.challenge import CODE_CHALLENGE_PATTERN, CODE_VERIFIER_PATTERN
from authlib.oidc.core.errors import RequestNotSupportedError, RequestURINotSupportedError
from authlib.oidc.core.util import create_half_hash

from nexus_ray.config import get_settings
from nexus_ray.deployments.auth.auth import sessions as legacy_sessions
from nexus_ray.deployments.auth.oauth.settings import settings as oauth_settings
from nexus_ray.deployments.auth.users import service as users
from nexus_ray.deployments.auth.users.models import check_scope
from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.specialized.keys import service as keys
from nexus_ray.edge import digests, revocations, tokens
from nexus_ray.edge.security import Principal, has_scope
from nexus_ray.exceptions import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from nexus_ray.stores import postgres

from .models import CLIENT_ID_PATTERN

log = logging.getLogger(__name__)

ACTOR = "auth-service-v2"
"""Who key-service's audit records as the signer of this provider's tokens."""
OIDC_SCOPES = ("openid", "profile", "email")
"""OpenID Connect scopes: allowed to every authorization-code client, granted only in that flow."""
ACCESS_TOKEN_ALG = "ES256"
ID_TOKEN_ALGS = ("RS256", "ES256", "EdDSA")
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
CODE_PREFIX = "nxa_"
REFRESH_PREFIX = "nxr_"
PROMPTS = frozenset({"none", "login", "consent", "select_account"})

_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)
# RFC 6749 appendix A.4: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")
_MAX_STATE = 2048
_MAX_NONCE = 512


class UnsupportedTokenTypeError(OAuth2Error):
    """RFC 7009 section 2.2.1 (400; Authlib's class of that name is a 401 for resource servers)."""

    error = "unsupported_token_type"


# -- clients --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A registered client as the protocol needs it."""

    client_id: str
    client_type: str
    name: str
    redirect_uris: tuple[str, ...]
    allowed_scopes: frozenset[str]
    grant_types: frozenset[str]
    id_token_alg: str
    introspect_any: bool
    secret_hash: bytes | None = field(default=None, repr=False)

    @property
    def confidential(self) -> bool:
        return self.client_type == "confidential"


_COLUMNS = (
    "client_id, client_type, name, redirect_uris, allowed_scopes, grant_types, id_token_alg, introspect_any, "
    "created_by, created_at, updated_at, secret_rotated_at"
)


def _digest(kind: str, value: str) -> bytes:
    """Keyed hash under which a credential of ``kind`` (client-secret, code, refresh) is stored."""
    return digests.digest(f"oauth-{kind}", value)


def _candidates(kind: str, value: str) -> list[bytes]:
    """The keyed hashes a stored credential of ``kind`` may have (one per live master key)."""
    return digests.candidates(f"oauth-{kind}", value)


def _read(row: asyncpg.Record) -> dict[str, Any]:
    out = {k: row[k] for k in _COLUMNS.split(", ") if k != "id_token_alg"}
    out["id_token_signed_response_alg"] = row["id_token_alg"]
    out["token_endpoint_auth_methods"] = (
        ["client_secret_basic", "client_secret_post"] if row["client_type"] == "confidential" else ["none"]
    )
    return out


def _check_client(
    *, client_type: str, redirect_uris: list[str], grant_types: list[str], introspect_any: bool
) -> None:
    """Refuse (422 naming the field) a combination of client settings the protocol cannot honour."""
    grants = set(grant_types)
    if len(grants) != len(grant_types):
        raise ValidationFailed.for_field("grant_types", "must not repeat a grant type", "duplicate")
    if len(set(redirect_uris)) != len(redirect_uris):
        raise ValidationFailed.for_field("redirect_uris", "must not repeat a URI", "duplicate")
    if client_type == "public" and "client_credentials" in grants:
        raise ValidationFailed.for_field("grant_types", "client_credentials needs a confidential client", "public")
    if "refresh_token" in grants and "authorization_code" not in grants:
        raise ValidationFailed.for_field("grant_types", "refresh_token comes with authorization_code", "combination")
    if "authorization_code" in grants and not redirect_uris:
        raise ValidationFailed.for_field("redirect_uris", "authorization_code needs at least one redirect URI",
                                         "missing")
    if introspect_any and client_type == "public":
        raise ValidationFailed.for_field("introspect_any", "only confidential clients may introspect", "public")


async def register_client(
    *,
    name: str,
    client_type: str,
    redirect_uris: list[str],
    allowed_scopes: list[str],
    grant_types: list[str],
    id_token_alg: str = "RS256",
    introspect_any: bool = False,
    grantor: Principal,
) -> dict[str, Any]:
    """Register a client; the result holds its secret (confidential clients), which is never shown again.

    The grantor must hold every scope it allows the client (403 naming ``allowed_scopes`` otherwise).
    """
    users.ensure_grantable(grantor, allowed_scopes, field="allowed_scopes")
    _check_client(client_type=client_type, redirect_uris=redirect_uris, grant_types=grant_types,
                  introspect_any=introspect_any)
    client_id = "nxc_" + secrets.token_hex(12)
    secret = secrets.token_urlsafe(32) if client_type == "confidential" else None
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "INSERT INTO oauth_clients (client_id, client_type, secret_hash, name, redirect_uris, allowed_scopes, "
        f"grant_types, id_token_alg, introspect_any, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
        f"RETURNING {_COLUMNS}",
        client_id, client_type, _digest("client-secret", secret) if secret else None, name, redirect_uris,
        sorted(set(allowed_scopes)), grant_types, id_token_alg, introspect_any, grantor.subject,
    )
    log.info("registered OAuth client", extra={"client_id": client_id, "client_type": client_type})
    return {**_read(row), "client_secret": secret}


async def get_client(*, client_id: str) -> dict[str, Any]:
    pg = await postgres.pool()
    row = await pg.fetchrow(f"SELECT {_COLUMNS} FROM oauth_clients WHERE client_id = $1", client_id)
    if row is None:
        raise NotFound("no such client")
    return _read(row)


async def list_clients(*, limit: int = 50, after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Clients ordered by id; ``after`` is the last id of the previous page."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {_COLUMNS} FROM oauth_clients WHERE ($1::text IS NULL OR client_id > $1) ORDER BY client_id "
        "LIMIT $2",
        after, limit + 1,
    )
    items = [_read(r) for r in rows[:limit]]
    return items, (items[-1]["client_id"] if len(rows) > limit else None)


_UPDATABLE = {
    "name": "name", "redirect_uris": "redirect_uris", "allowed_scopes": "allowed_scopes",
    "grant_types": "grant_types", "id_token_signed_response_alg": "id_token_alg", "introspect_any": "introspect_any",
}


async def update_client(*, client_id: str, changes: dict[str, Any], grantor: Principal) -> dict[str, Any]:
    """Apply ``changes`` (fields of ClientUpdate). Newly allowed scopes must be held by the grantor.

    Tokens issued before keep their scopes until they expire; refreshes are held to the new allowance.
    """
    for key, value in changes.items():
        if value is None:
            raise ValidationFailed.for_field(key, "cannot be removed", "required")
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            "SELECT client_type, redirect_uris, allowed_scopes, grant_types, introspect_any FROM oauth_clients "
            "WHERE client_id = $1 FOR UPDATE",
            client_id,
        )
        if row is None:
            raise NotFound("no such client")
        if "allowed_scopes" in changes:
            added = [s for s in changes["allowed_scopes"] if s not in set(row["allowed_scopes"])]
            users.ensure_grantable(grantor, added, field="allowed_scopes")
            changes["allowed_scopes"] = sorted(set(changes["allowed_scopes"]))
        merged = {k: changes.get(k, row[k]) for k in ("redirect_uris", "grant_types", "introspect_any")}
        _check_client(client_type=row["client_type"], **merged)
        if not changes:
            updated = await conn.fetchrow(f"SELECT {_COLUMNS} FROM oauth_clients WHERE client_id = $1", client_id)
            return _read(updated)
        columns = [_UPDATABLE[k] for k in changes]
        assignments = ", ".join(f"{col} = ${i}" for i, col in enumerate(columns, start=2))
        updated = await conn.fetchrow(
            f"UPDATE oauth_clients SET {assignments}, updated_at = now() WHERE client_id = $1 RETURNING {_COLUMNS}",
            client_id, *changes.values(),
        )
    return _read(updated)


async def rotate_secret(*, client_id: str) -> dict[str, Any]:
    """A new secret for a confidential client; the previous one stops working at once. Shown once."""
    secret = secrets.token_urlsafe(32)
    pg = await postgres.pool()
    kind = await pg.fetchval("SELECT client_type FROM oauth_clients WHERE client_id = $1", client_id)
    if kind is None:
        raise NotFound("no such client")
    if kind != "confidential":
        raise Conflict("a public client has no secret", extra={"errors": [
            {"field": "client_id", "message": "public client", "type": "public"}]})
    await pg.execute(
        "UPDATE oauth_clients SET secret_hash = $2, secret_rotated_at = now(), updated_at = now() "
        "WHERE client_id = $1",
        client_id, _digest("client-secret", secret),
    )
    log.info("rotated an OAuth client's secret", extra={"client_id": client_id})
    return {"client_id": client_id, "client_secret": secret}


async def delete_client(*, client_id: str) -> bool:
    """Delete a client with its codes, grants and refresh tokens, and end its access tokens at the edge: those
    of its users' sign-ins (by grant) and its own (client credentials: the client is their subject). In the
    deletion's transaction, the revocations written before the commit (see
    :mod:`nexus_ray.deployments.auth.credentials`). False if there was none."""
    async with postgres.transaction() as conn:
        if not await conn.fetchval("SELECT true FROM oauth_clients WHERE client_id = $1 FOR UPDATE", client_id):
            return False
        grants = await conn.fetch(
            "SELECT grant_id FROM oauth_grants WHERE client_id = $1 AND revoked_at IS NULL", client_id
        )
        await revocations.revoke_grants([str(g["grant_id"]) for g in grants])
        await revocations.revoke_subject(client_id)
        await conn.execute("DELETE FROM oauth_clients WHERE client_id = $1", client_id)
    log.info("deleted OAuth client", extra={"client_id": client_id, "grants_revoked": len(grants)})
    return True


async def find_client(client_id: str) -> Client | None:
    """The registered client ``client_id``; None if there is none (or the id cannot be one)."""
    if not isinstance(client_id, str) or not _CLIENT_ID.match(client_id):
        return None
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT client_id, client_type, name, redirect_uris, allowed_scopes, grant_types, id_token_alg, "
        "introspect_any, secret_hash FROM oauth_clients WHERE client_id = $1",
        client_id,
    )
    if row is None:
        return None
    return Client(
        client_id=row["client_id"], client_type=row["client_type"], name=row["name"],
        redirect_uris=tuple(row["redirect_uris"]), allowed_scopes=frozenset(row["allowed_scopes"]),
        grant_types=frozenset(row["grant_types"]), id_token_alg=row["id_token_alg"],
        introspect_any=row["introspect_any"],
        secret_hash=bytes(row["secret_hash"]) if row["secret_hash"] is not None else None,
    )


async def authenticate_client(*, client_id: str, secret: str | None, method: str) -> Client:
    """The client that ``client_id`` and ``secret`` authenticate with ``method`` (client_secret_basic,
    client_secret_post or none); InvalidClientError (401) otherwise (RFC 6749 sections 2.3 and 5.2)."""
    client = await find_client(client_id)
    if client is None:
        raise InvalidClientError("client_id: unknown client", status_code=401)
    if method == "none":
        if client.confidential:
            raise InvalidClientError("client_secret: a confidential client must authenticate", status_code=401)
        return client
    if not client.confidential or client.secret_hash is None:
        raise InvalidClientError("client_secret: a public client has no secret", status_code=401)
    if not digests.matches(client.secret_hash, "oauth-client-secret", secret or ""):
        raise InvalidClientError("client_secret: does not match", status_code=401)
    return client


# -- scopes ---------------------------------------------------------------------------------------


def intersect(a: Iterable[str], b: Iterable[str]) -> set[str]:
    """The scopes granted by both ``a`` and ``b``, wildcards understood: {commerce:*} and
    {commerce:orders:read, auth:users:read} -> {commerce:orders:read}."""
    out: set[str] = set()
    b = list(b)
    for x in a:
        for y in b:
            if has_scope({y}, x):
                out.add(x)
            elif has_scope({x}, y):
                out.add(y)
    return out


def _minimal(scopes: set[str]) -> set[str]:
    """``scopes`` without those another of them already grants."""
    return {s for s in scopes if not any(o != s and has_scope({o}, s) for o in scopes)}


def narrow(
    requested: Iterable[str] | None,
    *,
    allowance: Iterable[str],
    held: Iterable[str] | None = None,
    oidc: bool = False,
) -> list[str]:
    """The scopes a token gets: those requested (all allowed ones when None) that the client's allowance
    and, for a user's token, the user's own scopes (``held``) both grant. With ``oidc`` the requested
    OpenID scopes are kept too. Scopes nobody grants are dropped, not refused (RFC 6749 section 3.3):
    the response says which were granted."""
    req = None if requested is None else set(requested)
    allowed = set(allowance) if held is None else intersect(allowance, held)
    platform = allowed if req is None else intersect({s for s in req if _is_platform_scope(s)}, allowed)
    oidc_part = [s for s in OIDC_SCOPES if oidc and req and s in req]
    return oidc_part + sorted(_minimal(platform))


def _is_platform_scope(value: str) -> bool:
    """A scope the edge can check (``ns:slug:action`` with ``*`` wildcards); anything else is never granted."""
    try:
        check_scope(value)
    except ValueError:
        return False
    return True


def parse_scope(value: str | None) -> list[str] | None:
    """The scope parameter as a list (None when absent); InvalidScopeError when malformed."""
    if value is None:
        return None
    scopes = value.split(" ")
    if len(scopes) > 200 or not all(_SCOPE_TOKEN.match(s) for s in scopes):
        raise InvalidScopeError("scope: space-separated scope tokens of printable ASCII")
    return list(dict.fromkeys(scopes))


# -- authorization endpoint -----------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request (RFC 6749 section 4.1.1, RFC 7636, OIDC Core 3.1.2.1)."""

    client: Client
    redirect_uri: str
    code_challenge: str
    scopes: list[str] | None
    state: str | None
    nonce: str | None
    prompt: frozenset[str]
    max_age: int | None


async def validate_authorization_request(params: dict[str, str]) -> AuthorizationRequest:
    """Check an authorization request. Errors about the client or its redirect URI must not redirect
    (RFC 6749 section 4.1.2.1): they carry no ``redirect_uri``; every later one does, with ``state``."""
    client_id = params.get("client_id")
    if not client_id:
        raise InvalidRequestError("client_id: required")
    client = await find_client(client_id)
    if client is None:
        raise InvalidRequestError("client_id: unknown client")
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri:
        raise InvalidRequestError("redirect_uri: required")
    if redirect_uri not in client.redirect_uris:
        raise InvalidRequestError("redirect_uri: not registered for this client (redirect URIs match exactly)")

    state = params.get("state")
    if state is not None and len(state) > _MAX_STATE:
        state = None
        raise InvalidRequestError(f"state: at most {_MAX_STATE} characters", redirect_uri=redirect_uri)

    def refuse(cls: type[OAuth2Error], description: str) -> OAuth2Error:
        return cls(description, state=state, redirect_uri=redirect_uri)

    if "request" in params:
        raise refuse(RequestNotSupportedError, "request: request objects are not supported")
    if "request_uri" in params:
        raise refuse(RequestURINotSupportedError, "request_uri: request objects are not supported")
    response_type = params.get("response_type")
    if not response_type:
        raise refuse(InvalidRequestError, "response_type: required")
    if response_type != "code":
        # Authlib's class puts the (unchecked) value in its description; the error code is what matters.
        raise OAuth2Error("response_type: only code is supported", state=state, redirect_uri=redirect_uri,
                          error=UnsupportedResponseTypeError.error)
    if "authorization_code" not in client.grant_types:
        raise refuse(UnauthorizedClientError, "client_id: the client may not use the authorization code grant")
    if params.get("response_mode", "query") != "query":
        raise refuse(InvalidRequestError, "response_mode: only query is supported")
    challenge = params.get("code_challenge")
    if not challenge:
        raise refuse(InvalidRequestError, "code_challenge: required (PKCE with S256)")
    if params.get("code_challenge_method") != "S256":
        raise refuse(InvalidRequestError, "code_challenge_method: must be S256 (plain is not accepted)")
    if len(challenge) != 43 or not CODE_CHALLENGE_PATTERN.match(challenge):
        raise refuse(InvalidRequestError, "code_challenge: must be the base64url SHA-256 of the code verifier")
    nonce = params.get("nonce")
    if nonce is not None and len(nonce) > _MAX_NONCE:
        raise refuse(InvalidRequestError, f"nonce: at most {_MAX_NONCE} characters")
    try:
        scopes = parse_scope(params.get("scope"))
    except InvalidScopeError as exc:
        raise refuse(InvalidScopeError, exc.description) from None
    prompt = frozenset(params.get("prompt", "").split())
    if not prompt <= PROMPTS:
        raise refuse(InvalidRequestError, "prompt: one or more of none, login, consent, select_account")
    if "none" in prompt and len(prompt) > 1:
        raise refuse(InvalidRequestError, "prompt: none cannot be combined with other values")
    max_age = params.get("max_age")
    if max_age is not None and not (max_age.isdigit() and len(max_age) <= 9):
        raise refuse(InvalidRequestError, "max_age: a number of seconds")
    return AuthorizationRequest(
        client=client, redirect_uri=redirect_uri, code_challenge=challenge, scopes=scopes, state=state,
        nonce=nonce, prompt=prompt, max_age=int(max_age) if max_age is not None else None,
    )


async def signed_in_user(session_token: str) -> tuple[str, float] | None:
    """(user id, time of sign-in) of a live legacy session token, as auth-service keeps them; None otherwise."""
    session = await legacy_sessions.resolve(session_token)
    if session is None:
        return None
    return session.user_id, session.created_at


async def issue_code(*, request: AuthorizationRequest, user_id: str, auth_time: float) -> str:
    """An authorization code for ``user_id`` (authenticated at ``auth_time``); errors redirect."""
    held = await users.active_scopes(user_id)
    if held is None:
        raise AccessDeniedError("the account is not active", state=request.state, redirect_uri=request.redirect_uri)
    scopes = narrow(request.scopes, allowance=request.client.allowed_scopes, held=held, oidc=True)
    if not scopes:
        raise InvalidScopeError("scope: nothing requested can be granted to this client and user",
                                state=request.state, redirect_uri=request.redirect_uri)
    code = CODE_PREFIX + secrets.token_urlsafe(32)
    pg = await postgres.pool()
    await pg.execute(
        "INSERT INTO oauth_codes (code_hash, client_id, user_id, redirect_uri, scopes, nonce, code_challenge, "
        "auth_time, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8), "
        "now() + make_interval(secs => $9))",
        _digest("code", code), request.client.client_id, uuid.UUID(user_id), request.redirect_uri, scopes,
        request.nonce, request.code_challenge, auth_time, float(oauth_settings().oauth_code_ttl_s),
    )
    return code


# -- token endpoint -------------------------------------------------------------------------------


async def token(*, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """The token endpoint (RFC 6749 section 5.1) for an authenticated ``client``."""
    grant_type = params.get("grant_type")
    if not grant_type:
        raise InvalidRequestError("grant_type: required")
    if grant_type not in GRANT_TYPES:
        raise OAuth2Error("grant_type: one of " + ", ".join(GRANT_TYPES), error=UnsupportedGrantTypeError.error)
    if grant_type not in client.grant_types:
        raise UnauthorizedClientError(f"grant_type: {grant_type} is not allowed for this client")
    if grant_type == "authorization_code":
        return await exchange_code(client=client, params=params)
    if grant_type == "refresh_token":
        return await refresh(client=client, params=params)
    return await client_credentials(client=client, params=params)


def _ttl() -> int:
    s = get_settings()
    return min(oauth_settings().oauth_access_token_ttl_s, s.token_max_ttl_s)


async def _issue(
    *,
    client: Client,
    subject: str,
    kind: str,
    scopes: list[str],
    grant_id: uuid.UUID | None = None,
    id_token: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The token response: an access token (and an ID token when asked and ``openid`` is granted), signed by
    key-service. The caller adds the refresh token once it is stored."""
    ttl = _ttl()
    extra: dict[str, Any] = {"client_id": client.client_id, "iat": await revocations.issued_at_for(subject)}
    if grant_id is not None:
        extra["gid"] = str(grant_id)
    claims = tokens.access_claims(subject, scopes, ttl_s=ttl, kind=kind, extra=extra)
    access_token = await keys.sign(claims, alg=ACCESS_TOKEN_ALG, typ="at+jwt", actor=ACTOR)
    body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl,
                            "scope": " ".join(scopes)}
    if id_token is not None and "openid" in scopes:
        body["id_token"] = await _id_token(client=client, subject=subject, access_token=access_token, ttl=ttl,
                                           **id_token)
    return body


async def _id_token(
    *, client: Client, subject: str, access_token: str, ttl: int, auth_time: float, nonce: str | None = None
) -> str:
    """An ID token (OIDC Core 2, 3.1.3.6) for ``client``, bound to ``access_token`` by ``at_hash``."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": get_settings().jwt_issuer,
        "sub": subject,
        "aud": client.client_id,
        "azp": client.client_id,
        "iat": now,
        "exp": now + ttl,
        "auth_time": int(auth_time),
        "at_hash": create_half_hash(access_token, client.id_token_alg).decode("ascii"),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    return await keys.sign(claims, alg=client.id_token_alg, typ="JWT", actor=ACTOR)


async def _new_refresh_token(conn: asyncpg.Connection, *, grant_id: uuid.UUID, grant_created_at: datetime) -> str:
    """A refresh token in ``grant_id``'s family, living oauth_refresh_token_ttl_s within the grant's max age."""
    value = REFRESH_PREFIX + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, expires_at) VALUES ($1, $2, "
        "least(now() + make_interval(secs => $3), $4::timestamptz + make_interval(secs => $5)))",
        _digest("refresh", value), grant_id, float(oauth_settings().oauth_refresh_token_ttl_s), grant_created_at,
        float(oauth_settings().oauth_grant_max_age_s),
    )
    return value


async def _revoke_grant(conn: asyncpg.Connection | asyncpg.Pool, grant_id: uuid.UUID, reason: str) -> bool:
    # The edge refuses the grant's access tokens from now on (before the commit: revoking early
    # is the safe direction if the transaction then fails).
    await revocations.revoke_grant(str(grant_id))
    return bool(await conn.fetchval(
        "UPDATE oauth_grants SET revoked_at = now(), revoked_reason = $2 WHERE grant_id = $1 AND revoked_at IS NULL "
        "RETURNING true",
        grant_id, reason,
    ))


def _check_code(row: asyncpg.Record, *, client: Client, redirect_uri: str, verifier: str) -> OAuth2Error | None:
    if row["client_id"] != client.client_id:
        return InvalidGrantError("code: was issued to another client")
    if row["expired"]:
        return InvalidGrantError("code: expired")
    if row["redirect_uri"] != redirect_uri:
        return InvalidGrantError("redirect_uri: does not match the authorization request")
    if not hmac.compare_digest(create_s256_code_challenge(verifier), row["code_challenge"]):
        return InvalidGrantError("code_verifier: does not match the code_challenge")
    return None


def _used_code() -> InvalidGrantError:
    return InvalidGrantError("code: unknown, expired or already used")


async def _burn_code(code_hash: bytes) -> None:
    """Use up a code whose exchange failed: a code is good for one attempt, whatever its outcome."""
    pg = await postgres.pool()
    await pg.execute("UPDATE oauth_codes SET used_at = now() WHERE code_hash = $1 AND used_at IS NULL", code_hash)


async def _code_replayed(code_hash: bytes) -> None:
    """A used code came again: revoke the grant its first exchange opened (RFC 6749 section 4.1.2)."""
    pg = await postgres.pool()
    used = await pg.fetchrow("SELECT client_id, grant_id FROM oauth_codes WHERE code_hash = $1", code_hash)
    if used is None or used["grant_id"] is None:
        return
    if await _revoke_grant(pg, used["grant_id"], "code-replayed"):
        log.warning("authorization code used twice: the grant it opened was revoked",
                    extra={"client_id": used["client_id"], "grant_id": str(used["grant_id"])})


async def exchange_code(*, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """Authorization code grant (RFC 6749 section 4.1.3, RFC 7636 section 4.5).

    A code is good for one exchange, whatever its outcome. The tokens are signed first; then one
    transaction marks the code used, if it still is not (of concurrent exchanges exactly one wins), and
    opens the grant, so that any later exchange finds the grant to revoke. If signing fails, the code
    stays unused. No transaction stays open while key-service's audit or user-auth takes another pool
    connection: holding one while waiting for another deadlocks a busy pool.
    """
    code = params.get("code")
    if not code:
        raise InvalidRequestError("code: required")
    redirect_uri = params.get("redirect_uri")
    if not redirect_uri:
        raise InvalidRequestError("redirect_uri: required (the one of the authorization request)")
    verifier = params.get("code_verifier")
    if not verifier:
        raise InvalidRequestError("code_verifier: required (PKCE)")
    if not CODE_VERIFIER_PATTERN.match(verifier):
        raise InvalidRequestError("code_verifier: 43 to 128 characters of A-Z, a-z, 0-9 and - . _ ~")
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT code_hash, client_id, user_id, redirect_uri, scopes, nonce, code_challenge, auth_time, used_at, "
        "expires_at <= now() AS expired FROM oauth_codes WHERE code_hash = ANY($1::bytea[])",
        _candidates("code", code),
    )
    if row is None:
        raise _used_code()
    digest = bytes(row["code_hash"])
    if row["used_at"] is not None:
        await _code_replayed(digest)
        raise _used_code()
    user_id = str(row["user_id"])
    failure = _check_code(row, client=client, redirect_uri=redirect_uri, verifier=verifier)
    scopes: list[str] = []
    if failure is None:
        held = await users.active_scopes(user_id)
        if held is None:
            failure = InvalidGrantError("code: the user account is no longer active")
        else:
            scopes = narrow(row["scopes"], allowance=client.allowed_scopes, held=held, oidc=True)
            if not scopes:
                failure = InvalidScopeError("scope: nothing granted remains within the client's and the user's "
                                            "scopes")
    if failure is not None:
        await _burn_code(digest)
        raise failure

    grant_id = uuid.uuid4()
    body = await _issue(client=client, subject=user_id, kind="user", scopes=scopes, grant_id=grant_id,
                        id_token={"auth_time": row["auth_time"].timestamp(), "nonce": row["nonce"]})
    async with postgres.transaction() as conn:
        won = await conn.fetchval(
            "UPDATE oauth_codes SET used_at = now() WHERE code_hash = $1 AND used_at IS NULL RETURNING true", digest
        )
        if won:
            created_at = await conn.fetchval(
                "INSERT INTO oauth_grants (grant_id, client_id, user_id, scopes, auth_time) "
                "VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
                grant_id, client.client_id, row["user_id"], scopes, row["auth_time"],
            )
            await conn.execute("UPDATE oauth_codes SET grant_id = $2 WHERE code_hash = $1", digest, grant_id)
            if "refresh_token" in client.grant_types:
                body["refresh_token"] = await _new_refresh_token(conn, grant_id=grant_id, grant_created_at=created_at)
    if not won:
        # Another exchange of this code won meanwhile: this one is the replay; its tokens are dropped unsent.
        await _code_replayed(digest)
        raise _used_code()
    return body


async def _family_reused(grant_id: uuid.UUID, client_id: str) -> None:
    pg = await postgres.pool()
    if await _revoke_grant(pg, grant_id, "refresh-token-reused"):
        log.warning("rotated refresh token presented again: its family was revoked",
                    extra={"client_id": client_id, "grant_id": str(grant_id)})


async def refresh(*, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """Refresh token grant (RFC 6749 section 6) with rotation: the presented token is used up and a new one
    issued. Presenting a used one again means it was copied: the whole family (grant) is revoked. Of
    concurrent uses of one token exactly one rotates it; the others count as reuse."""
    presented = params.get("refresh_token")
    if not presented:
        raise InvalidRequestError("refresh_token: required")
    requested = parse_scope(params.get("scope"))
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT r.token_hash, r.grant_id, r.used_at, r.expires_at <= now() AS expired, g.client_id, g.user_id, "
        "g.scopes, g.auth_time, g.created_at AS grant_created_at, g.revoked_at, "
        "g.created_at + make_interval(secs => $2) <= now() AS grant_expired "
        "FROM oauth_refresh_tokens r JOIN oauth_grants g USING (grant_id) WHERE r.token_hash = ANY($1::bytea[])",
        _candidates("refresh", presented), float(oauth_settings().oauth_grant_max_age_s),
    )
    if row is None:
        raise InvalidGrantError("refresh_token: unknown")
    digest = bytes(row["token_hash"])
    if row["client_id"] != client.client_id:
        raise InvalidGrantError("refresh_token: was issued to another client")
    if row["revoked_at"] is not None:
        raise InvalidGrantError("refresh_token: revoked")
    if row["used_at"] is not None:
        await _family_reused(row["grant_id"], client.client_id)
        raise InvalidGrantError("refresh_token: already used; every token of this sign-in was revoked")
    if row["expired"] or row["grant_expired"]:
        raise InvalidGrantError("refresh_token: expired")
    granted = list(row["scopes"])
    if requested is not None and not all(
        s in granted if s in OIDC_SCOPES else has_scope(set(granted), s) for s in requested
    ):
        # RFC 6749 section 6: never beyond what the resource owner granted.
        raise InvalidScopeError("scope: exceeds the scope originally granted")
    user_id = str(row["user_id"])
    held = await users.active_scopes(user_id)
    if held is None:
        await _revoke_grant(pg, row["grant_id"], "user-inactive")
        raise InvalidGrantError("refresh_token: the user account is no longer active")
    # Held to the client's and the user's scopes as they are now, not as they were at sign-in.
    scopes = narrow(requested if requested is not None else granted, allowance=client.allowed_scopes, held=held,
                    oidc=True)
    if not scopes:
        raise InvalidScopeError("scope: nothing granted remains within the client's and the user's scopes")

    # OIDC Core 12.2: a refreshed ID token keeps the original auth_time and has no nonce.
    body = await _issue(client=client, subject=user_id, kind="user", scopes=scopes, grant_id=row["grant_id"],
                        id_token={"auth_time": row["auth_time"].timestamp()})
    async with postgres.transaction() as conn:
        # Waits for a revocation of the grant in flight (a password change holds the row until it commits).
        live = await conn.fetchval(
            "SELECT revoked_at IS NULL FROM oauth_grants WHERE grant_id = $1 FOR SHARE", row["grant_id"]
        )
        if not live:
            raise InvalidGrantError("refresh_token: revoked")
        won = await conn.fetchval(
            "UPDATE oauth_refresh_tokens SET used_at = now() WHERE token_hash = $1 AND used_at IS NULL "
            "RETURNING true",
            digest,
        )
        if won:
            body["refresh_token"] = await _new_refresh_token(conn, grant_id=row["grant_id"],
                                                             grant_created_at=row["grant_created_at"])
    if not won:
        await _family_reused(row["grant_id"], client.client_id)
        raise InvalidGrantError("refresh_token: already used; every token of this sign-in was revoked")
    return body


async def client_credentials(*, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """Client credentials grant (RFC 6749 section 4.4): the client's allowance within the requested scopes;
    the client is the token's subject. No refresh token (section 4.4.3)."""
    if not client.confidential:
        raise UnauthorizedClientError("grant_type: client_credentials needs a confidential client")
    scopes = narrow(parse_scope(params.get("scope")), allowance=client.allowed_scopes)
    if not scopes:
        raise InvalidScopeError("scope: none of the requested scopes is allowed for this client")
    return await _issue(client=client, subject=client.client_id, kind="service", scopes=scopes)


# -- revocation and introspection -----------------------------------------------------------------


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and len(value) < 16384


async def _verified(value: str) -> dict[str, Any] | None:
    try:
        return await tokens.verify(value)
    except Unauthorized:
        return None


def _check_hint(hint: str | None) -> None:
    if hint is not None and hint not in ("access_token", "refresh_token"):
        raise UnsupportedTokenTypeError("token_type_hint: access_token or refresh_token")


async def revoke(*, client: Client, params: dict[str, str]) -> None:
    """Token revocation (RFC 7009). A refresh token revokes its whole grant; an access token is remembered
    as revoked until it expires (introspection reports it inactive; the edge refuses it through the
    revocation list). Unknown, invalid and expired tokens are no error (section 2.2)."""
    value = params.get("token")
    if not value:
        raise InvalidRequestError("token: required")
    _check_hint(params.get("token_type_hint"))
    if _looks_like_jwt(value):
        claims = await _verified(value)
        if claims is None:
            return
        if claims.get("client_id") != client.client_id:
            raise InvalidGrantError("token: was not issued to this client")
        pg = await postgres.pool()
        await pg.execute(
            "INSERT INTO oauth_revoked_access_tokens (jti, client_id, expires_at) VALUES ($1, $2, to_timestamp($3)) "
            "ON CONFLICT (jti) DO NOTHING",
            str(claims.get("jti")), client.client_id, float(claims["exp"]),
        )
        await revocations.revoke_token(str(claims.get("jti")), expires_at=float(claims["exp"]))
        return
    if not value.startswith(REFRESH_PREFIX):
        return
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT g.grant_id, g.client_id FROM oauth_refresh_tokens r JOIN oauth_grants g USING (grant_id) "
        "WHERE r.token_hash = ANY($1::bytea[])",
        _candidates("refresh", value),
    )
    if row is None:
        return
    if row["client_id"] != client.client_id:
        raise InvalidGrantError("token: was not issued to this client")
    await _revoke_grant(pg, row["grant_id"], "revoked")


_INACTIVE: dict[str, Any] = {"active": False}


async def introspect(*, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """Token introspection (RFC 7662) for an authenticated confidential client. A client sees its own
    tokens; one registered with ``introspect_any`` (a resource server) sees every client's. Whatever it
    may not see, or is unknown, revoked or expired, is ``{"active": false}``."""
    if not client.confidential:
        raise InvalidClientError("client_id: only confidential clients may introspect", status_code=401)
    value = params.get("token")
    if not value:
        raise InvalidRequestError("token: required")
    if _looks_like_jwt(value):
        return await _introspect_access_token(client, value)
    if value.startswith(REFRESH_PREFIX):
        return await _introspect_refresh_token(client, value)
    return dict(_INACTIVE)


async def _introspect_access_token(client: Client, value: str) -> dict[str, Any]:
    claims = await _verified(value)
    if claims is None:
        return dict(_INACTIVE)
    owner = claims.get("client_id")
    if owner != client.client_id and not client.introspect_any:
        return dict(_INACTIVE)
    try:
        grant_id = uuid.UUID(claims["gid"]) if "gid" in claims else None
    except (TypeError, ValueError):
        return dict(_INACTIVE)
    pg = await postgres.pool()
    state = await pg.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM oauth_revoked_access_tokens WHERE jti = $1) AS revoked, "
        "(SELECT revoked_at IS NULL FROM oauth_grants WHERE grant_id = $2) AS grant_live, "
        "EXISTS (SELECT 1 FROM oauth_clients WHERE client_id = $3) AS client_exists",
        str(claims.get("jti")), grant_id, owner,
    )
    if state["revoked"] or (grant_id is not None and not state["grant_live"]):
        return dict(_INACTIVE)
    if owner is not None and not state["client_exists"]:
        return dict(_INACTIVE)
    if claims.get("kind") == "user" and await users.active_scopes(claims["sub"]) is None:
        return dict(_INACTIVE)
    out = {"active": True, "token_type": "Bearer"}
    for k in ("scope", "client_id", "sub", "exp", "iat", "nbf", "iss", "aud", "jti"):
        if k in claims:
            out[k] = claims[k]
    return out


async def _introspect_refresh_token(client: Client, value: str) -> dict[str, Any]:
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "SELECT r.issued_at, r.expires_at, g.client_id, g.user_id, g.scopes FROM oauth_refresh_tokens r "
        "JOIN oauth_grants g USING (grant_id) WHERE r.token_hash = ANY($1::bytea[]) AND r.used_at IS NULL "
        "AND r.expires_at > now() AND g.revoked_at IS NULL AND g.created_at + make_interval(secs => $2) > now()",
        _candidates("refresh", value), float(oauth_settings().oauth_grant_max_age_s),
    )
    if row is None or (row["client_id"] != client.client_id and not client.introspect_any):
        return dict(_INACTIVE)
    if await users.active_scopes(row["user_id"]) is None:
        return dict(_INACTIVE)
    return {
        "active": True, "token_type": "refresh_token", "scope": " ".join(row["scopes"]),
        "client_id": row["client_id"], "sub": str(row["user_id"]), "iss": get_settings().jwt_issuer,
        "iat": int(row["issued_at"].timestamp()), "exp": int(row["expires_at"].timestamp()),
    }


# -- OpenID Connect: discovery, keys, userinfo ----------------------------------------------------


def discovery(*, issuer: str) -> dict[str, Any]:
    """The OpenID Provider Metadata of the provider whose issuer identifier is ``issuer``
    (OpenID Connect Discovery 1.0 section 3; RFC 8414; RFC 9207)."""
    base = issuer.rstrip("/")
    auth_methods = ["client_secret_basic", "client_secret_post"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks",
        "userinfo_endpoint": f"{base}/userinfo",
        "revocation_endpoint": f"{base}/revoke",
        "introspection_endpoint": f"{base}/introspect",
        "scopes_supported": list(OIDC_SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGS),
        "token_endpoint_auth_methods_supported": [*auth_methods, "none"],
        "revocation_endpoint_auth_methods_supported": [*auth_methods, "none"],
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": sorted(PROMPTS),
        "claims_supported": ["iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "at_hash", "name",
                             "preferred_username", "locale", "email", "email_verified"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
    }


async def jwks() -> dict[str, Any]:
    """key-service's platform JWKS, with a key of every ID-token algorithm in it (created on first use), so
    a client that fetched it verifies whichever algorithm its ID tokens use."""
    await asyncio.gather(*(keys.current_signer(alg) for alg in ID_TOKEN_ALGS))
    return await keys.jwks("platform")


async def userinfo(*, principal: Principal) -> dict[str, Any]:
    """OIDC UserInfo (Core 5.3) for the user of an access token: ``sub``, and the profile and email claims
    its scopes allow."""
    user_id = users.as_user_id(principal.subject)
    if user_id is None or principal.kind != "user":
        raise Forbidden("userinfo describes users; this token was issued to a client")
    user = await users.get_user(user_id=user_id)
    info: dict[str, Any] = {"sub": str(user_id)}
    if "profile" in principal.scopes:
        info.update(name=user["display_name"], preferred_username=user["username"], locale=user["locale"])
    if "email" in principal.scopes and user["email"]:
        info.update(email=user["email"], email_verified=user["email_verified"])
    return info


# -- housekeeping ---------------------------------------------------------------------------------


async def purge_expired() -> dict[str, int]:
    """Delete what can no longer matter: codes and refresh tokens a day past expiry (late replays are still
    recognised until then), revoked access tokens past expiry, grants revoked longer ago than any access
    token lives and grants past their max age (with their refresh tokens)."""
    s = get_settings()
    counts = {}
    async with postgres.transaction() as conn:
        for name, sql, args in (
            ("codes", "DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day'", ()),
            ("refresh_tokens", "DELETE FROM oauth_refresh_tokens WHERE expires_at < now() - interval '1 day'", ()),
            ("revoked_access_tokens",
             "DELETE FROM oauth_revoked_access_tokens WHERE expires_at < now() - make_interval(secs => $1)",
             (float(s.jwt_leeway_s),)),
            ("grants",
             "DELETE FROM oauth_grants WHERE revoked_at < now() - make_interval(secs => $1) "
             "OR created_at + make_interval(secs => $2) < now()",
             (float(s.token_max_ttl_s + s.jwt_leeway_s), float(oauth_settings().oauth_grant_max_age_s + 86400))),
        ):
            status = await conn.execute(sql, *args)
            counts[name] = int(status.split()[-1])
    return counts


async def purge_loop(interval_s: float = 3600.0) -> None:
    """Run :func:`purge_expired` every ``interval_s`` for the app's lifetime (idempotent in every replica)."""
    async def purge_once() -> None:
        counts = await purge_expired()
        if any(counts.values()):
            log.info("purged expired OAuth records", extra=counts)

    await loops.repeat("OAuth purge", purge_once, interval_s, wait_first=True)
