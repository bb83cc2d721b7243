"""Schemas of pv-keys' HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import offline

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
KEY_ID_PATTERN = r"^pvk_[0-9a-f]{24}$"

AssetId = Annotated[str, Field(pattern=ID_PATTERN, description="The virtual-world asset, e.g. world:7:sword:42.")]
Holder = Annotated[str, Field(pattern=ID_PATTERN, description="Who holds the key: a user or service id.")]
Permission = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$", description="e.g. enter, use, edit, owner.")]
Permissions = Annotated[list[Permission], Field(min_length=1, max_length=32)]


class AssetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    asset_id: AssetId
    owner: Holder


class AccessKeyRead(BaseModel):
    """An access key's record: never the signed key itself."""

    key_id: str = Field(description="The key's id (its jti claim).")
    asset_id: str
    holder: str
    permissions: list[str]
    issued_at: int = Field(description="Seconds since the epoch.")
    expires_at: int = Field(description="Seconds since the epoch.")
    kid: str = Field(description="The pv-keys signing key that signed it.")
    state: Literal["active", "expired", "revoked"]
    revoked_at: datetime | None = None
    revoked_reason: str | None = None


class AccessKeyIssued(AccessKeyRead):
    access_key: str = Field(description="The signed access key (EdDSA JWS); verify it offline with the public key.")


class AssetRead(BaseModel):
    asset_id: str
    owner: str
    created_at: datetime
    updated_at: datetime
    active_keys: list[AccessKeyRead] = Field(default_factory=list)


class AccessKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    asset_id: AssetId
    holder: Holder
    permissions: Permissions
    ttl_s: int = Field(30 * 86400, ge=60, description="Lifetime, seconds (at most pv_key_max_ttl_s).")


class VerifyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_key: str = Field(min_length=1, max_length=offline.MAX_LENGTH)
    asset_id: AssetId | None = Field(None, description="Also require the key to be for this asset.")
    permission: Permission | None = Field(None, description="Also require the key to grant this permission.")


class VerifyRead(BaseModel):
    valid: bool
    reason: str | None = Field(
        None, description="Why not: algorithm, unknown_key, signature, audience, issuer, not_yet_valid, expired, "
        "asset, permission, revoked."
    )
    claims: dict[str, Any] | None = None


class RevokeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("revoked", min_length=1, max_length=200)


class TransferCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_holder: Holder = Field(description="The current owner.")
    to_holder: Holder = Field(description="The new owner.")
    permissions: Permissions | None = Field(None, description="Of the new owner's key; default: owner.")
    ttl_s: int = Field(30 * 86400, ge=60, description="Lifetime of the new owner's key, seconds.")


class TransferRead(BaseModel):
    idempotency_key: str
    asset_id: str
    from_holder: str
    to_holder: str
    revoked_key_ids: list[str] = Field(description="The old holder's keys revoked by the transfer.")
    created_at: datetime
    replayed: bool = Field(description="True when this repeats an earlier transfer with the same key.")
    access_key: AccessKeyIssued = Field(description="The new owner's key.")


class Revocation(BaseModel):
    key_id: str
    asset_id: str
    revoked_at: datetime


class RevocationList(BaseModel):
    items: list[Revocation]
    next: dict[str, Any] | None = Field(
        description="The query (since, after) that continues after the last item: the next page, or later "
        "revocations. Null when there were no items: ask again with the same query."
    )
    more: bool = Field(description="True when the page was full: more may follow at once.")
