"""user-auth's routes (``/auth/v1/users``): thin translations of HTTP to :mod:`.service` calls.

Self-service routes (``/{user_id}/...``) admit the account itself or a holder of
``auth:users:admin``; managing roles and listing accounts needs ``auth:users:admin``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.auth.users import service
from nexus_ray.deployments.auth.users.models import (
    ROLE_PATTERN,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    EmailVerified,
    EmailVerify,
    ErasureReceipt,
    PersonalData,
    RoleRead,
    RoleWrite,
    ServiceAccountCreate,
    UserCreate,
    UserPage,
    UserRead,
    UserRoles,
    UserStatus,
    UserUpdate,
    VerificationSent,
)
from nexus_ray.deployments.kit.access import self_or_admin, uuid_id
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize, public
from nexus_ray.exceptions import NotFound

SCOPES = scopes_of("user-auth")
READ, WRITE, ADMIN = SCOPES.read, SCOPES.write, SCOPES.admin
SELF_READ = self_or_admin(READ, ADMIN, canonical=uuid_id)
SELF_WRITE = self_or_admin(WRITE, ADMIN, canonical=uuid_id)

router = APIRouter()

RoleName = Annotated[str, Path(pattern=ROLE_PATTERN, description="Role name.")]


# -- static paths first: they would otherwise match /{user_id} --------------------------------------


@router.post("", status_code=201, response_model=UserRead, dependencies=[public()], summary="Register")
async def register(body: UserCreate) -> dict:
    return await service.register(
        username=body.username, email=body.email, password=body.password.get_secret_value(),
        display_name=body.display_name, locale=body.locale, bio=body.bio,
    )


@router.get("", response_model=UserPage, dependencies=[authorize(ADMIN)], summary="List accounts")
async def list_users(
    limit: int = Query(50, ge=1, le=500),
    after: str | None = Query(None, max_length=64, description="`next_after` of the previous page."),
) -> dict:
    users, next_after = await service.list_users(limit=limit, after=after)
    return {"users": users, "next_after": next_after}


@router.get("/me", response_model=UserRead, summary="The caller's account",
            responses={404: {"description": "The caller is not a user account (a service or an API key)."}})
async def me(principal: Principal = authorize(READ)) -> dict:
    user_id = service.as_user_id(principal.subject)
    if user_id is None:
        raise NotFound("the caller is not a user account")
    return await service.get_user(user_id=user_id)


@router.post("/verify-email", response_model=EmailVerified, dependencies=[public()], summary="Use a verification code")
async def verify_email(body: EmailVerify) -> dict:
    return await service.verify_email(token=body.token)


@router.post("/service-accounts", status_code=201, response_model=UserRead, summary="Create a service account")
async def create_service_account(body: ServiceAccountCreate, principal: Principal = authorize(ADMIN)) -> dict:
    return await service.create_service_account(
        username=body.username, display_name=body.display_name, roles=body.roles, grantor=principal
    )


@router.get("/roles", response_model=list[RoleRead], dependencies=[authorize(ADMIN)], summary="Roles and scopes")
async def list_roles() -> list[dict]:
    return await service.list_roles()


@router.put("/roles/{name}", response_model=RoleRead, summary="Create or replace a role",
            responses={201: {"model": RoleRead, "description": "The role did not exist: created."}})
async def put_role(
    body: RoleWrite, response: Response, name: RoleName, principal: Principal = authorize(ADMIN)
) -> dict:
    role, created = await service.put_role(
        name=name, description=body.description, scopes=body.scopes, grantor=principal
    )
    response.status_code = 201 if created else 200
    return role


@router.delete("/roles/{name}", status_code=204, summary="Delete a role")
async def delete_role(name: RoleName, principal: Principal = authorize(ADMIN)) -> Response:
    await service.delete_role(name=name, grantor=principal)
    return Response(status_code=204)


# -- one account -------------------------------------------------------------------------------------


@router.get("/{user_id}", response_model=UserRead, summary="An account")
async def get_user(user_id: uuid.UUID, principal: Principal = SELF_READ) -> dict:
    return await service.get_user(user_id=user_id)


@router.patch("/{user_id}", response_model=UserRead, summary="Change the profile")
async def update_user(user_id: uuid.UUID, body: UserUpdate, principal: Principal = SELF_WRITE) -> dict:
    return await service.update_user(user_id=user_id, changes=body.model_dump(exclude_unset=True))


@router.delete("/{user_id}", response_model=ErasureReceipt, summary="Erase the account and its personal data")
async def erase_user(user_id: uuid.UUID, principal: Principal = SELF_WRITE) -> dict:
    return await service.erase_user(user_id=user_id, grantor=principal)


@router.get("/{user_id}/export", response_model=PersonalData, summary="Export all personal data")
async def export_user(user_id: uuid.UUID, response: Response, principal: Principal = SELF_READ) -> dict:
    response.headers["Content-Disposition"] = f'attachment; filename="nexus-personal-data-{user_id}.json"'
    return await service.export_user(user_id=user_id)


@router.post(
    "/{user_id}/email-verification", status_code=202, response_model=VerificationSent,
    summary="Send a new verification mail",
)
async def send_verification(user_id: uuid.UUID, principal: Principal = SELF_WRITE) -> dict:
    return await service.send_verification(user_id=user_id)


@router.get("/{user_id}/roles", response_model=UserRoles, summary="Roles and effective scopes")
async def user_roles(user_id: uuid.UUID, principal: Principal = SELF_READ) -> dict:
    return await service.roles_of(user_id=user_id)


@router.put("/{user_id}/roles/{role}", response_model=UserRoles, summary="Grant a role")
async def grant_role(user_id: uuid.UUID, role: RoleName, principal: Principal = authorize(ADMIN)) -> dict:
    return await service.grant_role(user_id=user_id, role=role, grantor=principal)


@router.delete("/{user_id}/roles/{role}", status_code=204, summary="Revoke a role")
async def revoke_role(user_id: uuid.UUID, role: RoleName, principal: Principal = authorize(ADMIN)) -> Response:
    await service.revoke_role(user_id=user_id, role=role, grantor=principal)
    return Response(status_code=204)


@router.put("/{user_id}/status", response_model=UserRead, summary="Disable or enable an account")
async def set_status(user_id: uuid.UUID, body: UserStatus, principal: Principal = authorize(ADMIN)) -> dict:
    """Disabling ends the account's sessions, access tokens and OAuth sign-ins; its API keys are refused until it
    is enabled again."""
    return await service.set_status(user_id=user_id, status=body.status, grantor=principal)


@router.post("/{user_id}/api-keys", status_code=201, response_model=ApiKeyCreated, summary="Create an API key")
async def create_api_key(user_id: uuid.UUID, body: ApiKeyCreate, principal: Principal = SELF_WRITE) -> dict:
    return await service.create_api_key(
        user_id=user_id, name=body.name, scopes=body.scopes, expires_in_s=body.expires_in_s, grantor=principal
    )


@router.get("/{user_id}/api-keys", response_model=list[ApiKeyRead], summary="API keys, without secrets")
async def list_api_keys(user_id: uuid.UUID, principal: Principal = SELF_READ) -> list[dict]:
    return await service.list_api_keys(user_id=user_id)


@router.delete("/{user_id}/api-keys/{key_id}", status_code=204, summary="Revoke an API key")
async def revoke_api_key(
    user_id: uuid.UUID,
    key_id: str = Path(pattern=r"^[0-9a-f]{16}$"),
    principal: Principal = SELF_WRITE,
) -> Response:
    await service.revoke_api_key(user_id=user_id, key_id=key_id, grantor=principal)
    return Response(status_code=204)
