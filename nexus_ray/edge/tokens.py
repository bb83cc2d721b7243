"""Access tokens: the platform's signing key and JWT issue/verification.

Until the identity services take over (key-service, auth-service-v2), the platform
signs with one ES256 development key kept in the data directory. Verification pins
the algorithm list to the key's own algorithm, so ``alg: none`` and HMAC tokens
made with the public key as secret are refused.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nexus_ray.config import get_settings
from nexus_ray.exceptions import Unauthorized

ALGORITHM = "ES256"


@dataclass(frozen=True)
class SigningKey:
    """A private key with its key id (``kid``)."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


def _load_or_create(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes()
    settings = get_settings()
    if settings.environment == "production":
        raise RuntimeError(f"signing key file {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Write-then-rename so replicas starting together all read one complete key.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)  # fails if another process won the race: theirs is the key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


@lru_cache(maxsize=1)
def signing_key() -> SigningKey:
    """The platform's current signing key (created in development on first use)."""
    pem = _load_or_create(get_settings().signing_key_path.resolve())
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise RuntimeError("the signing key must be an EC P-256 key")
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SigningKey(kid=hashlib.sha256(der).hexdigest()[:16], private_key=key)


def issue(
    subject: str,
    scopes: list[str] | tuple[str, ...],
    *,
    ttl_s: int = 900,
    kind: str = "user",
    extra: dict[str, Any] | None = None,
) -> str:
    """A signed access token for ``subject`` with ``scopes``, valid ``ttl_s`` seconds."""
    s = get_settings()
    key = signing_key()
    now = int(time.time())
    claims = {
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
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def verify(token: str) -> dict[str, Any]:
    """The claims of a valid token; :class:`Unauthorized` otherwise (the reason, never the token)."""
    s = get_settings()
    key = signing_key()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("malformed bearer token") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthorized("token algorithm not accepted")
    if header.get("kid") not in (None, key.kid):
        raise Unauthorized("token signed by an unknown key")
    try:
        return jwt.decode(
            token,
            key.public_key,
            algorithms=[ALGORITHM],
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
