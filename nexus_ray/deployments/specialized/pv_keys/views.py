"""pv-keys routes, under /specialized/v1/pv-keys: thin translations to :mod:`.service`.

Objects belong to someone: a route that names an asset or an access key acts for the caller
(the asset's owner, or a key's holder for that key), and another principal's object is a 404
as if it did not exist. Holders of ``specialized:pv-keys:admin`` (e.g. the game services that
manage assets for their players) act on every asset.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Header, Path, Query, Response

from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize, ensure_self_or, public
from nexus_ray.exceptions import ValidationFailed

from . import offline, service
from .models import (
    ID_PATTERN,
    KEY_ID_PATTERN,
    AccessKeyCreate,
    AccessKeyIssued,
    AccessKeyRead,
    AssetCreate,
    AssetRead,
    RevocationList,
    RevokeCreate,
    TransferCreate,
    TransferRead,
    VerifyCreate,
    VerifyRead,
)

router = APIRouter()

SCOPES = scopes_of("pv-keys")
ADMIN = SCOPES.admin


def _caller(principal: Principal) -> str | None:
    """Whose objects ``principal`` may act on: its own, or (None) everyone's for an administrator."""
    return None if principal.can(ADMIN) else principal.subject


_KEY_ID = Path(pattern=KEY_ID_PATTERN, description="Access key id (pvk_...).")
_ASSET_ID = Path(pattern=ID_PATTERN, description="Asset id.")


@router.get("/public-key", dependencies=[public()], summary="Public keys that verify access keys offline (JWKS)")
async def public_key(response: Response) -> dict:
    response.headers["Cache-Control"] = "public, max-age=300"
    return await service.public_keys()


@router.post("/assets", response_model=AssetRead, status_code=201, summary="Register an asset and its owner",
             responses={200: {"model": AssetRead, "description": "Already registered to this owner: nothing changed."}})
async def register_asset(
    body: AssetCreate, response: Response, principal: Principal = authorize(SCOPES.action("issue"))
) -> dict:
    """201 when new; 200 when it is already registered to the same owner; 409 for another owner.

    A principal registers assets it owns itself; only an administrator names another owner (403)."""
    ensure_self_or(principal, body.owner, ADMIN)
    asset, created = await service.register_asset(asset_id=body.asset_id, owner=body.owner, actor=principal.subject)
    response.status_code = 201 if created else 200
    return asset


@router.get("/assets/{asset_id}", response_model=AssetRead, summary="An asset, its owner and active keys")
async def get_asset(
    asset_id: str = _ASSET_ID, principal: Principal = authorize(SCOPES.action("verify"))
) -> dict:
    """For the asset's owner (or an administrator); 404 for anyone else."""
    return await service.get_asset(asset_id, caller=_caller(principal))


@router.post(
    "/assets/{asset_id}/transfer", response_model=TransferRead, summary="Transfer an asset's ownership (idempotent)"
)
async def transfer(
    body: TransferCreate,
    asset_id: str = _ASSET_ID,
    idempotency_key: str = Header(
        alias="Idempotency-Key", min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$",
        description="Chosen by the client; repeating it with the same request replays the first result.",
    ),
    principal: Principal = authorize(SCOPES.action("transfer")),
) -> dict:
    """Revokes the old holder's keys to the asset and issues the new holder a key, in one transaction.

    By the asset's owner (or an administrator); 404 for anyone else. The Idempotency-Key is the
    caller's own: another principal sending the same one makes a transfer of its own."""
    return await service.transfer(
        asset_id=asset_id, from_holder=body.from_holder, to_holder=body.to_holder, idempotency_key=idempotency_key,
        permissions=body.permissions, ttl_s=body.ttl_s, actor=principal.subject, caller=_caller(principal),
    )


@router.post("/access-keys", response_model=AccessKeyIssued, status_code=201, summary="Issue an access key")
async def issue(body: AccessKeyCreate, principal: Principal = authorize(SCOPES.action("issue"))) -> dict:
    """By the asset's owner (or an administrator), to any holder; 404 naming asset_id for anyone else."""
    return await service.issue(
        asset_id=body.asset_id, holder=body.holder, permissions=body.permissions, ttl_s=body.ttl_s,
        actor=principal.subject, caller=_caller(principal),
    )


@router.post("/access-keys/verify", response_model=VerifyRead, summary="Verify an access key online")
async def verify(body: VerifyCreate, _principal: Principal = authorize(SCOPES.action("verify"))) -> dict:
    """Signature, validity period, asset, permission and revocation. ``valid: false`` says why not;
    text that is not an access key at all is a 422 naming ``access_key``."""
    try:
        claims = await service.verify(body.access_key, asset_id=body.asset_id, permission=body.permission)
    except offline.MalformedAccessKey as exc:
        raise ValidationFailed.for_field("access_key", exc.detail) from None
    except offline.InvalidAccessKey as exc:
        return {"valid": False, "reason": exc.reason}
    return {"valid": True, "claims": claims}


@router.get("/access-keys/{key_id}/status", response_model=AccessKeyRead, summary="Revocation check of a key")
async def status(key_id: str = _KEY_ID, principal: Principal = authorize(SCOPES.action("verify"))) -> dict:
    """For the key's holder and its asset's owner (or an administrator); 404 for anyone else."""
    return await service.status(key_id, caller=_caller(principal))


@router.post("/access-keys/{key_id}/revoke", response_model=AccessKeyRead, summary="Revoke an access key")
async def revoke(
    body: RevokeCreate | None = None,
    key_id: str = _KEY_ID,
    principal: Principal = authorize(SCOPES.action("revoke")),
) -> dict:
    """By the asset's owner or the key's own holder (or an administrator); 404 for anyone else."""
    reason = body.reason if body is not None else "revoked"
    return await service.revoke(key_id=key_id, reason=reason, actor=principal.subject, caller=_caller(principal))


@router.get("/revocations", response_model=RevocationList, summary="Revoked keys, for offline verifiers")
async def revocations(
    since: datetime | None = Query(None, description="Only revocations after this time (with `after`)."),
    after: str = Query("", max_length=40, description="Key id of the last item seen at `since`."),
    limit: int = Query(500, ge=1, le=5000),
    _principal: Principal = authorize(SCOPES.action("verify")),
) -> dict:
    items = await service.revocations(since=since, after=after, limit=limit)
    last = items[-1] if items else None
    return {
        "items": items,
        "next": {"since": last["revoked_at"], "after": last["key_id"]} if last else None,
        "more": len(items) == limit,
    }
