"""key-service routes, under /specialized/v1/keys: thin translations to :mod:`.service`."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize, public

from . import service
from .models import (
    KID_PATTERN,
    AuditAction,
    AuditPage,
    DecryptCreate,
    DecryptRead,
    EncryptCreate,
    Envelope,
    Jwks,
    PurposeName,
    ResealRead,
    RewrapCreate,
    RotationCreate,
    RotationRead,
    SigningKeyList,
    SigningKeyRead,
)

SCOPES = scopes_of("key-service")
router = APIRouter()


@router.get("/jwks", response_model=Jwks, dependencies=[public()], summary="The platform's JWKS")
async def get_jwks(response: Response) -> dict:
    """Public keys that verify platform tokens: the current keys and rotated ones still in their overlap."""
    response.headers["Cache-Control"] = f"public, max-age={int(get_settings().jwks_cache_s)}"
    return await service.jwks("platform")


@router.get("/signing-keys", response_model=SigningKeyList, summary="Signing keys and their status")
async def list_signing_keys(
    purpose: PurposeName | None = Query(None, description="Only keys of this purpose."),
    _principal: Principal = authorize(SCOPES.admin),
) -> dict:
    return {"items": await service.list_keys(purpose=purpose)}


@router.post("/signing-keys/rotate", response_model=RotationRead, status_code=201, summary="Rotate a signing key")
async def rotate(body: RotationCreate, principal: Principal = authorize(SCOPES.admin)) -> dict:
    """A new key becomes current; the previous one keeps verifying until its ``retires_at``."""
    return await service.rotate(body.alg, purpose=body.purpose, actor=principal.subject)


@router.post("/signing-keys/{kid}/revoke", response_model=SigningKeyRead, summary="Revoke a signing key now")
async def revoke(
    kid: str = Path(pattern=KID_PATTERN, description="Key id."),
    principal: Principal = authorize(SCOPES.admin),
) -> dict:
    """For a compromised key: it stops verifying at once (within jwks_cache_s in every replica)."""
    return await service.revoke_key(kid, actor=principal.subject)


@router.post(
    "/master-key/reseal", response_model=ResealRead, summary="Re-seal the signing keys under the current master key"
)
async def reseal(principal: Principal = authorize(SCOPES.admin)) -> dict:
    """After a master-key rotation (NEXUS_MASTER_KEY new, the old one in NEXUS_PREVIOUS_MASTER_KEYS) and once
    every replica runs with the new key: signing keys sealed under a previous master key are re-sealed under
    the current one, in one audited transaction. Repeating it changes nothing."""
    return await service.reseal(actor=principal.subject)


@router.post("/encrypt", response_model=Envelope, summary="Envelope-encrypt data under a context")
async def encrypt(body: EncryptCreate, principal: Principal = authorize(SCOPES.action("encrypt"))) -> dict:
    return await service.encrypt(body.data(), context=body.context, actor=principal.subject)


@router.post("/decrypt", response_model=DecryptRead, summary="Open an envelope under its context")
async def decrypt(body: DecryptCreate, principal: Principal = authorize(SCOPES.action("decrypt"))) -> dict:
    """422 ``envelope-tampered`` when the envelope was altered or the context differs."""
    plaintext = await service.decrypt(body.envelope.model_dump(), context=body.context, actor=principal.subject)
    return {"plaintext": base64.b64encode(plaintext).decode()}


@router.post("/rewrap", response_model=Envelope, summary="Re-wrap an envelope under the current master key")
async def rewrap(
    body: RewrapCreate,
    principal: Principal = authorize(SCOPES.action("encrypt"), SCOPES.action("decrypt")),
) -> dict:
    """For a master-key rotation: the same data in an envelope of the current master key, without the
    plaintext leaving key-service. An envelope of the current key comes back as it was."""
    return await service.rewrap(body.envelope.model_dump(), context=body.context, actor=principal.subject)


@router.get("/audit", response_model=AuditPage, summary="The audit of key use, newest first")
async def audit(
    kid: str | None = Query(None, pattern=KID_PATTERN, description="Only uses of this key."),
    action: AuditAction | None = Query(None),
    before: int | None = Query(None, ge=1, le=2**62, description="Only rows older than this id (paging)."),
    limit: int = Query(100, ge=1, le=1000),
    _principal: Principal = authorize(SCOPES.action("audit")),
) -> dict:
    items = await service.audit_log(kid=kid, action=action, before=before, limit=limit)
    return {"items": items, "next_before": items[-1]["id"] if len(items) == limit else None}
