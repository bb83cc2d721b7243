"""auth-service's routes (``/auth/v1/auth``): legacy login, logout, passwords, exchange, sessions, lockouts.

Login, logout and exchange are public: the credential they check is in the request
(a password, a session token). The others need the caller's token with ``auth:auth:*``
scopes; ``auth:auth:admin`` acts on other accounts.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nexus_ray.deployments.auth.auth import service, sessions
from nexus_ray.deployments.auth.auth.models import (
    ExchangeRequest,
    ExchangeResult,
    LockoutRead,
    LoginRequest,
    LoginResult,
    PasswordChange,
    PasswordChanged,
    PasswordChangedSignedIn,
    PasswordSet,
    SessionRead,
)
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize, client_address, public
from nexus_ray.exceptions import Unauthorized

SCOPES = scopes_of("auth-service")
READ, WRITE, ADMIN = SCOPES.read, SCOPES.write, SCOPES.admin

router = APIRouter()
_session_bearer = HTTPBearer(auto_error=False, description="The legacy session token to end")
Username = Annotated[str, Path(min_length=1, max_length=64)]


@router.post("/login", response_model=LoginResult, dependencies=[public()], summary="Log in with a password",
             responses={401: {"description": "Wrong username or password."},
                        403: {"description": "The account is disabled."},
                        423: {"description": "The account is locked after repeated failures."}})
async def login(body: LoginRequest, request: Request) -> dict:
    return await service.login(
        username=body.username,
        password=body.password.get_secret_value(),
        address=client_address(request),
        user_agent=request.headers.get("user-agent", ""),
        device=body.device,
    )


@router.post("/logout", status_code=204, dependencies=[public()], summary="End the session of the bearer token",
             responses={401: {"description": "No session token was sent."}})
async def logout(credentials: HTTPAuthorizationCredentials | None = Depends(_session_bearer)) -> Response:
    if credentials is None:
        raise Unauthorized("send the session token as Authorization: Bearer <token>")
    await service.logout(token=credentials.credentials)
    return Response(status_code=204)


@router.post("/exchange", response_model=ExchangeResult, dependencies=[public()],
             summary="Exchange a legacy session for a v2 access token",
             responses={401: {"description": "The session token is invalid or expired."},
                        403: {"description": "The session may not have the scope asked for."}})
async def exchange(body: ExchangeRequest) -> dict:
    return await service.exchange(session_token=body.session_token, scope=body.scope)


@router.post("/password", response_model=PasswordChangedSignedIn, summary="Change the caller's password")
async def change_password(body: PasswordChange, request: Request, principal: Principal = authorize(WRITE)) -> dict:
    """Every credential of the account ends, the one sending this too; the response holds a new session."""
    return await service.change_password(
        principal=principal,
        current_password=body.current_password.get_secret_value(),
        new_password=body.new_password.get_secret_value(),
        address=client_address(request),
        user_agent=request.headers.get("user-agent", ""),
    )


@router.get("/sessions", response_model=list[SessionRead], summary="The caller's sessions")
async def list_sessions(principal: Principal = authorize(READ)) -> list[dict]:
    return await service.list_sessions(principal=principal)


@router.delete("/sessions/{session_id}", status_code=204,
               summary="End a session: the caller's own (an administrator: anyone's)")
async def revoke_session(
    session_id: str = Path(pattern=sessions.SESSION_ID_PATTERN), principal: Principal = authorize(WRITE)
) -> Response:
    await service.revoke_session(principal=principal, session_id=session_id)
    return Response(status_code=204)


@router.put("/users/{user_id}/password", response_model=PasswordChanged,
            summary="Set an account's password (ends every credential of the account, lifts its lockout)")
async def set_password(user_id: uuid.UUID, body: PasswordSet, principal: Principal = authorize(ADMIN)) -> dict:
    return await service.set_password(
        user_id=user_id, new_password=body.new_password.get_secret_value(), grantor=principal
    )


@router.get("/lockouts/{username}", response_model=LockoutRead, dependencies=[authorize(ADMIN)],
            summary="Whether an account is locked")
async def lockout_status(username: Username) -> dict:
    return await service.lockout_status(username=username)


@router.delete("/lockouts/{username}", status_code=204, dependencies=[authorize(ADMIN)],
               summary="Lift an account's lockout")
async def release_lockout(username: Username) -> Response:
    await service.lockout.release(username=username)
    return Response(status_code=204)
