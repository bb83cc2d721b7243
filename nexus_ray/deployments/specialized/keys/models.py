"""Schemas of key-service's HTTP API."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Algorithm = Literal["RS256", "ES256", "EdDSA"]
PurposeName = Literal["platform", "pv-keys"]
KeyStatus = Literal["current", "previous", "retired", "revoked"]
AuditAction = Literal["generate", "sign", "rotate", "revoke", "encrypt", "decrypt", "reseal"]

KID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_B64URL = r"^[A-Za-z0-9_-]+$"
_CONTEXT = Field(
    min_length=1,
    max_length=256,
    pattern=r"^[\x21-\x7e]+$",
    description="What the data belongs to, e.g. billing:card:42 (visible ASCII, no spaces). The same context "
    "must be given to decrypt.",
)


class Jwks(BaseModel):
    """A JSON Web Key Set (RFC 7517): the public keys tokens are verified with."""

    keys: list[dict[str, Any]] = Field(description="Public JWKs with kid, alg and use.")


class SigningKeyRead(BaseModel):
    """A signing key as it may be shown: never its private half."""

    kid: str = Field(description="Key id: the RFC 7638 thumbprint of the public key.")
    purpose: PurposeName
    alg: Algorithm
    status: KeyStatus = Field(
        description="current: signs; previous: rotated, still verifies until retires_at; retired or revoked: "
        "verifies nothing."
    )
    public_jwk: dict[str, Any]
    created_at: datetime
    rotated_at: datetime | None = None
    retires_at: datetime | None = Field(None, description="When a rotated key stops verifying.")
    revoked_at: datetime | None = None


class SigningKeyList(BaseModel):
    items: list[SigningKeyRead]


class RotationCreate(BaseModel):
    """Which signing key to rotate."""

    model_config = ConfigDict(extra="forbid")

    alg: Algorithm = Field(description="Algorithm of the key to rotate.")
    purpose: PurposeName = Field("platform", description="platform (access and ID tokens) or pv-keys.")


class RotationRead(BaseModel):
    current: SigningKeyRead = Field(description="The new key, now signing.")
    previous: SigningKeyRead | None = Field(description="The key it replaced, verifying until its retires_at.")


class Envelope(BaseModel):
    """Data encrypted under a fresh data key, the data key wrapped under the master key (all base64url)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    alg: Literal["A256GCM"]
    master_key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Which master key wrapped the data key.")
    wrapped_key: str = Field(max_length=128, pattern=_B64URL, description="Nonce and wrapped data key.")
    nonce: str = Field(max_length=32, pattern=_B64URL)
    ciphertext: str = Field(max_length=2_000_000, pattern=_B64URL, description="Ciphertext and GCM tag.")


def _standard_b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None


class EncryptCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plaintext: str = Field(max_length=1_000_000, description="The data to encrypt, standard base64.")
    context: str = _CONTEXT

    @field_validator("plaintext")
    @classmethod
    def _plaintext_is_base64(cls, v: str) -> str:
        _standard_b64(v)
        return v

    def data(self) -> bytes:
        return _standard_b64(self.plaintext)


class DecryptCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    envelope: Envelope
    context: str = _CONTEXT


class RewrapCreate(BaseModel):
    """An envelope to re-wrap under the current master key, with the context it was sealed for."""

    model_config = ConfigDict(extra="forbid")

    envelope: Envelope
    context: str = _CONTEXT


class ResealRead(BaseModel):
    """What re-sealing the signing keys under the current master key did."""

    master_key_id: str = Field(description="The current master key's id: every re-sealed key is sealed under it.")
    resealed: list[str] = Field(description="Kids of the signing keys re-sealed now (empty when none was left).")
    unreadable: list[str] = Field(
        description="Kids of signing keys sealed under a master key this platform does not hold (not in "
        "NEXUS_PREVIOUS_MASTER_KEYS): left as they were."
    )


class DecryptRead(BaseModel):
    plaintext: str = Field(description="The decrypted data, standard base64.")


class AuditRead(BaseModel):
    """One use of a key. Carries no key material, token or plaintext."""

    id: int
    at: datetime
    action: AuditAction
    outcome: str = Field(description="ok, tampered or malformed.")
    kid: str | None = Field(description="Signing key id, or the master key id for envelopes.")
    alg: str | None
    purpose: str | None
    actor: str = Field(description="Who used the key.")
    context: str | None
    request_id: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditRead]
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null at the end.")
