"""Platform access tokens: signed with key-service's keys, verified at the edge against the live JWKS.

Verification runs on every request, so its hot path reads no store and parses no key: each
replica holds the verification keys of key-service's ``platform`` purpose (public JWKs read
from PostgreSQL), parsed once, in a :class:`KeyRing`. The ring is re-read

* in the background once it is older than ``jwks_cache_s`` -- how a replica learns that a key
  was rotated (its ``retires_at``) or revoked elsewhere; and
* when a token names a key id the ring does not know (a key made current in another replica),
  in the background, no sooner than ``jwks_refresh_min_s`` after the previous read and one read
  at a time, however many such tokens arrive.

A token naming an unknown key id is refused at once (401): it never waits for that read (only
the first tokens a replica sees wait for its first read, which it cannot do without). Until
the read, a replica cannot tell a made-up key id from a key made current elsewhere, and waiting
is what let a flood of made-up key ids hold every request slot for a second each. So the first
tokens of a freshly rotated key are refused by a replica that has not read the key yet -- for
the few milliseconds of the read it starts, or up to ``jwks_refresh_min_s`` while made-up key
ids are being sent -- and accepted from then on, so the same token sent again gets through.
Rotations are rare and planned, floods are not: a short refusal after a rotation is the price.

A token is accepted only with the algorithm of the key its ``kid`` names (RS256, ES256 or
EdDSA), so ``alg: none``, HMAC with a public key as secret and alg/key mix-ups are refused.
A rotated key verifies until its ``retires_at`` (rotation time + ``token_max_ttl_s``), which
the ring enforces itself between reads; then its tokens stop verifying.

Issuing: :func:`issue` signs platform claims with the current key loaded in this process by
:func:`prepare` (the ``nexus token`` command and the tests' ``bearer`` fixture). Services
sign through key-service itself (``await keys.sign(claims)``).

The edge stands below the services: it never imports key-service. Key-service is registered
as the edge's :class:`KeySource` at start-up (:func:`use_key_source`, called by
:func:`nexus_ray.deployments.wiring.wire_edge`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import jwt

from nexus_ray.config import get_settings
from nexus_ray.exceptions import Unauthorized

log = logging.getLogger(__name__)

#: The algorithms a platform token may be signed with; each key verifies only its own.
ACCEPTED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
_KID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_READ_TIMEOUT_S = 5.0
_VERIFIED_MAX = 20_000


@dataclass(frozen=True)
class VerificationKey:
    """A public key of the ring: parsed once, bound to its algorithm."""

    kid: str
    alg: str
    jwk: jwt.PyJWK = field(repr=False)
    source: tuple = field(repr=False)  # (alg, sorted JWK items): re-parse only when it changes
    retires_at: float | None = None  # epoch seconds; None while the key is current


def header_of(token: str) -> tuple[str, str]:
    """(alg, kid) of a token's header, refusing what no platform key could have signed."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise Unauthorized("malformed bearer token") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ACCEPTED_ALGORITHMS:
        raise Unauthorized("token algorithm not accepted")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise Unauthorized("token has no usable key id")
    return alg, kid


class KeyRing:
    """The verification keys one process trusts, by ``kid``, read through ``load``."""

    def __init__(
        self,
        load: Callable[[], Awaitable[list[dict[str, Any]]]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._clock = clock
        self._keys: dict[str, VerificationKey] = {}
        self._verified: dict[str, tuple[str, float, dict[str, Any]]] = {}  # token -> (kid, expires, claims)
        self._loaded_at = float("-inf")  # last successful read (clock time)
        self._last_read = float("-inf")  # last read started, successful or not
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: asyncio.Task | None = None
        self.reads = 0

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def replace(self, rows: Iterable[dict[str, Any]]) -> None:
        """Trust exactly ``rows`` (``kid``, ``alg``, ``public_jwk``, ``retires_at``) from now on."""
        keys: dict[str, VerificationKey] = {}
        for row in rows:
            kid, alg, jwk = row["kid"], row["alg"], row["public_jwk"]
            retires = row.get("retires_at")
            if isinstance(retires, datetime):
                retires = retires.timestamp()
            source = (alg, tuple(sorted(jwk.items())))
            old = self._keys.get(kid)
            if old is not None and old.source == source:
                keys[kid] = VerificationKey(kid, alg, old.jwk, source, retires)
                continue
            if alg not in ACCEPTED_ALGORITHMS:
                continue
            try:
                parsed = jwt.PyJWK({**jwk, "alg": alg}, algorithm=alg)
            except jwt.PyJWTError as exc:
                log.error("verification key %s cannot be parsed: %s", kid, type(exc).__name__)
                continue
            keys[kid] = VerificationKey(kid, alg, parsed, source, retires)
        self._keys = keys

    def check(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` if a key of the ring verifies it; Unauthorized (with the reason) otherwise."""
        alg, kid = header_of(token)
        key = self._keys.get(kid)
        if key is None:
            raise Unauthorized("token signed by an unknown key")
        return _decode(token, alg, key)

    async def verify(self, token: str) -> dict[str, Any]:
        """:meth:`check`, starting a background read of the keys when the token names a key id the ring lacks.

        A token that verified once is remembered until it expires: a client presents the same
        token on every call for its lifetime, and its signature cannot change. A remembered
        token still stops working the moment its key leaves the ring or retires.
        """
        hit = self._verified.get(token)
        if hit is not None:
            kid, expires, claims = hit
            key = self._keys.get(kid)
            now = time.time()
            if key is not None and now <= expires and (key.retires_at is None or now <= key.retires_at):
                self._refresh_if_stale()
                return dict(claims)
            del self._verified[token]
        kid, claims = await self._verify_signed(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()  # bounded memory; the next requests verify again
        self._verified[token] = (kid, float(claims["exp"]) + get_settings().jwt_leeway_s, claims)
        return dict(claims)

    async def _verify_signed(self, token: str) -> tuple[str, dict[str, Any]]:
        alg, kid = header_of(token)
        self._refresh_if_stale()
        key = self._keys.get(kid)
        if key is None and self._loaded_at == float("-inf"):
            # A replica that has not read the keys yet knows no key id at all: its first tokens
            # wait for that one read (shared, as every read) instead of all being refused.
            self._refresh_in_background(get_settings().jwks_refresh_min_s)
            if self._background is not None:  # a request that goes away leaves the read running
                await asyncio.shield(self._background)
            key = self._keys.get(kid)
        if key is None:
            self._refresh_in_background(get_settings().jwks_refresh_min_s)
            raise Unauthorized("token signed by an unknown key")
        return kid, _decode(token, alg, key)

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def refresh(self, *, min_interval: float = 0.0) -> bool:
        """Read the keys again, at most once per ``min_interval`` seconds; concurrent callers share one read.

        Returns False when the read failed: the ring keeps the keys it had (stale beats none while
        PostgreSQL is away).
        """
        asked = self._clock()
        async with self._get_lock():
            if self._last_read >= asked:  # a read started after we asked: it is as fresh as ours would be
                return self._loaded_at >= asked
            wait = self._last_read + min_interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_read = self._clock()
            self.reads += 1
            try:
                rows = await asyncio.wait_for(self._load(), _READ_TIMEOUT_S)
            except Exception as exc:
                log.warning("verification keys could not be read: %s", type(exc).__name__)
                return False
            self.replace(rows)
            self._loaded_at = self._last_read
            return True

    def _refresh_if_stale(self) -> None:
        s = get_settings()
        now = self._clock()
        if now - self._loaded_at <= s.jwks_cache_s or now - self._last_read < s.jwks_refresh_min_s:
            return
        self._refresh_in_background(0.0)

    def _refresh_in_background(self, min_interval: float) -> None:
        """Start a read of the keys unless one is already under way or waiting for its turn."""
        if self._background is None or self._background.done():
            self._background = asyncio.get_running_loop().create_task(
                self.refresh(min_interval=min_interval), name="jwks-refresh"
            )


def _decode(token: str, alg: str, key: VerificationKey) -> dict[str, Any]:
    if alg != key.alg:
        raise Unauthorized("token algorithm does not match its key")
    if key.retires_at is not None and time.time() > key.retires_at:
        raise Unauthorized("token signed by a retired key")
    s = get_settings()
    try:
        return jwt.decode(
            token,
            key.jwk,
            algorithms=[key.alg],
            audience=s.jwt_audience,
            issuer=s.jwt_issuer,
            leeway=s.jwt_leeway_s,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("token audience not accepted") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("token issuer not accepted") from None
    except jwt.PyJWTError:
        raise Unauthorized("invalid bearer token") from None


class KeySource(Protocol):
    """What the edge needs of the service that holds the signing keys (key-service)."""

    async def verification_keys(self, purpose: str = ...) -> list[dict[str, Any]]: ...

    async def current_signer(self, alg: str = ..., *, purpose: str = ...) -> Any: ...

    def sign_loaded(self, claims: dict[str, Any], *, alg: str = ..., purpose: str = ..., actor: str = ...) -> str: ...


_source: KeySource | None = None


def use_key_source(source: KeySource) -> None:
    """Register where verification keys come from and who signs (done once at start-up)."""
    global _source
    _source = source


def key_source() -> KeySource:
    """The registered key source; RuntimeError if start-up did not register one."""
    if _source is None:
        raise RuntimeError("no key source is registered with the edge: call nexus_ray.deployments.wiring.wire_edge()")
    return _source


async def load_platform_keys() -> list[dict[str, Any]]:
    """The platform's verification keys, as the key source (key-service, in PostgreSQL) holds them."""
    return await key_source().verification_keys("platform")


_ring = KeyRing(load_platform_keys)


def ring() -> KeyRing:
    """This process's ring of platform verification keys."""
    return _ring


async def verify(token: str) -> dict[str, Any]:
    """The claims of a valid platform token; :class:`Unauthorized` otherwise (the reason, never the token)."""
    return await _ring.verify(token)


def access_claims(
    subject: str,
    scopes: list[str] | tuple[str, ...],
    *,
    ttl_s: int = 900,
    kind: str = "user",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims of a platform access token for ``subject`` with ``scopes``, valid ``ttl_s`` seconds."""
    s = get_settings()
    now = int(time.time())
    return {
        "iss": s.jwt_issuer,
        "aud": s.jwt_audience,
        "sub": subject,
        "scope": " ".join(scopes),
        "kind": kind,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
        **(extra or {}),
    }


async def prepare(alg: str = "ES256") -> None:
    """Load the current ``alg`` signing key into this process (creating the first one) for :func:`issue`."""
    await key_source().current_signer(alg, purpose="platform")


def issue(
    subject: str,
    scopes: list[str] | tuple[str, ...],
    *,
    ttl_s: int = 900,
    kind: str = "user",
    extra: dict[str, Any] | None = None,
    alg: str = "ES256",
    actor: str = "platform",
) -> str:
    """A platform access token signed with the current key :func:`prepare` loaded; audited by key-service.

    ``ttl_s`` may be at most ``token_max_ttl_s`` (ValidationFailed naming ``exp`` otherwise).
    """
    claims = access_claims(subject, scopes, ttl_s=ttl_s, kind=kind, extra=extra)
    return key_source().sign_loaded(claims, alg=alg, purpose="platform", actor=actor)
