"""PuaboVerse access keys: their format, and verification that needs only the public key.

An access key is a compact JWS signed with Ed25519 (``alg: EdDSA``) by pv-keys' signing key,
which key-service keeps sealed under the master key::

    header  {"alg": "EdDSA", "kid": <signing key id>, "typ": "pvk+jwt"}
    claims  {"iss", "aud": "pv-keys", "jti": <access key id>, "sub": <holder>,
             "asset": <asset id>, "perms": [...], "iat", "nbf", "exp"}

:func:`verify_offline` checks one with nothing but the public key (``GET
/specialized/v1/pv-keys/public-key`` serves it as a JWKS): no network, no store. Whether a
key was revoked since it was issued is the one thing it cannot know; that is the online
status route (``GET .../access-keys/{key_id}/status``) or the revocation list.

Ed25519 signatures are deterministic, so the same claims signed by the same key give the
same access key: a replayed transfer hands back the very key it issued the first time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nexus_ray.exceptions import Unauthorized

ALGORITHM = "EdDSA"
TYP = "pvk+jwt"
AUDIENCE = "pv-keys"
MAX_LENGTH = 4096


class InvalidAccessKey(Unauthorized):
    """An access key that does not grant what was asked; ``reason`` says why (a short code)."""

    @classmethod
    def because(cls, reason: str, detail: str) -> InvalidAccessKey:
        return cls(f"access key {detail}", extra={"reason": reason})

    @property
    def reason(self) -> str:
        return str(self.extra.get("reason", "invalid"))


class MalformedAccessKey(InvalidAccessKey):
    """Text that is not an access key at all."""


def claims_for(
    *, key_id: str, holder: str, asset_id: str, permissions: list[str], issued_at: int, expires_at: int, issuer: str
) -> dict[str, Any]:
    """The claims of an access key, always in the same order (so the same key re-signs to the same text)."""
    return {
        "iss": issuer,
        "aud": AUDIENCE,
        "jti": key_id,
        "sub": holder,
        "asset": asset_id,
        "perms": list(permissions),
        "iat": issued_at,
        "nbf": issued_at,
        "exp": expires_at,
    }


def public_keys(public_key: Any) -> dict[str | None, Ed25519PublicKey]:
    """Ed25519 public keys by kid from what a verifier holds.

    Accepts an ``Ed25519PublicKey``, its 32 raw bytes, a PEM (str or bytes), a JWK dict or a
    JWKS dict (``{"keys": [...]}``). A key given without a kid is stored under ``None`` and
    verifies whatever kid a token names.
    """
    if isinstance(public_key, Ed25519PublicKey):
        return {None: public_key}
    if isinstance(public_key, bytes | bytearray) and len(public_key) == 32:
        return {None: Ed25519PublicKey.from_public_bytes(bytes(public_key))}
    if isinstance(public_key, str | bytes | bytearray):
        data = public_key.encode() if isinstance(public_key, str) else bytes(public_key)
        if data.lstrip().startswith(b"{"):
            return public_keys(json.loads(data))
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the public key is not an Ed25519 key")
        return {None: key}
    if isinstance(public_key, dict) and "keys" in public_key:
        found: dict[str | None, Ed25519PublicKey] = {}
        for jwk in public_key["keys"]:
            if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
                found.update({jwk.get("kid"): _from_jwk(jwk)})
        return found
    if isinstance(public_key, dict):
        return {public_key.get("kid"): _from_jwk(public_key)}
    raise TypeError("public_key must be an Ed25519 public key, raw bytes, PEM, a JWK or a JWKS")


def _from_jwk(jwk: dict[str, Any]) -> Ed25519PublicKey:
    key = jwt.PyJWK({**jwk, "alg": ALGORITHM}, algorithm=ALGORITHM).key
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the JWK is not an Ed25519 public key")
    return key


def _int(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedAccessKey.because("malformed", f"claim {name} is missing or not an integer")
    return value


def verify_offline(
    access_key: str,
    public_key: Any,
    *,
    asset_id: str | None = None,
    permission: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
    leeway_s: int = 0,
) -> dict[str, Any]:
    """The claims of ``access_key`` when ``public_key`` verifies it and it is in force at ``now``.

    With ``asset_id`` / ``permission`` it must also be for that asset / grant that permission;
    with ``issuer`` it must come from that issuer. Raises :class:`InvalidAccessKey` (its
    ``reason``: malformed, algorithm, unknown_key, signature, audience, issuer, not_yet_valid,
    expired, asset, permission) otherwise. Needs no network and no store: revocation is not
    checked here.
    """
    if not isinstance(access_key, str) or not 0 < len(access_key) <= MAX_LENGTH or access_key.count(".") != 2:
        raise MalformedAccessKey.because("malformed", "is not a compact JWS")
    try:
        header = jwt.get_unverified_header(access_key)
    except jwt.PyJWTError:
        raise MalformedAccessKey.because("malformed", "has an unreadable header") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidAccessKey.because("algorithm", "is not signed with EdDSA")
    if header.get("typ") != TYP:
        raise InvalidAccessKey.because("malformed", f"is not of type {TYP}")
    keys = public_keys(public_key)
    key = keys.get(header.get("kid")) or keys.get(None)
    if key is None:
        raise InvalidAccessKey.because("unknown_key", "is signed by a key this verifier does not hold")
    try:
        claims = jwt.decode(
            access_key,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_iss": False},
        )
    except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError):
        raise InvalidAccessKey.because("audience", f"is not for {AUDIENCE}") from None
    except jwt.DecodeError as exc:
        if isinstance(exc, jwt.InvalidSignatureError):
            raise InvalidAccessKey.because("signature", "signature does not verify") from None
        raise MalformedAccessKey.because("malformed", "cannot be decoded") from None
    except jwt.PyJWTError:
        raise InvalidAccessKey.because("signature", "does not verify") from None
    for name in ("jti", "sub", "asset"):
        if not isinstance(claims.get(name), str):
            raise MalformedAccessKey.because("malformed", f"claim {name} is missing")
    perms = claims.get("perms")
    if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
        raise MalformedAccessKey.because("malformed", "claim perms is not a list of permissions")
    issued, expires = _int(claims, "nbf"), _int(claims, "exp")
    at = time.time() if now is None else now
    if issuer is not None and claims.get("iss") != issuer:
        raise InvalidAccessKey.because("issuer", "comes from another issuer")
    if at + leeway_s < issued:
        raise InvalidAccessKey.because("not_yet_valid", "is not valid yet")
    if at - leeway_s >= expires:
        raise InvalidAccessKey.because("expired", "has expired")
    if asset_id is not None and claims["asset"] != asset_id:
        raise InvalidAccessKey.because("asset", "is for another asset")
    if permission is not None and permission not in perms:
        raise InvalidAccessKey.because("permission", f"does not grant {permission}")
    return claims
