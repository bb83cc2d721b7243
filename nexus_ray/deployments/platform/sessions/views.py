"""session-mgr's routes under ``/platform/v1/sessions/users/{user_id}/sessions``: the user themself or an admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from nexus_ray.deployments.kit.access import self_or_admin
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import client_address

from . import service
from .models import SESSION_ID_PATTERN, USER_ID_PATTERN, Revoked, SessionCreate, SessionRead

SCOPES = scopes_of("session-mgr")
READER = self_or_admin(SCOPES.read, SCOPES.admin)
WRITER = self_or_admin(SCOPES.write, SCOPES.admin)

router = APIRouter()
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="The user (token subject) whose sessions these are.")]
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


@router.post("/users/{user_id}/sessions", status_code=201, response_model=SessionRead, summary="Open a session",
             dependencies=[WRITER])
async def create(body: SessionCreate, request: Request, user_id: UserId) -> SessionRead:
    return await service.create_session(
        user_id=user_id,
        device=body.device,
        ip=str(body.ip) if body.ip is not None else client_address(request),
        user_agent=body.user_agent if body.user_agent is not None else request.headers.get("user-agent", "")[:512],
        idle_timeout_s=body.idle_timeout_s,
        absolute_timeout_s=body.absolute_timeout_s,
    )


@router.get("/users/{user_id}/sessions", response_model=Page[SessionRead], dependencies=[READER],
            summary="A user's valid sessions, most recently used first")
async def list_(user_id: UserId, page: PageRequest = page_params(default=50, maximum=100)) -> Page[SessionRead]:
    return await service.list_sessions(user_id=user_id, page=page)


@router.get("/users/{user_id}/sessions/{session_id}", response_model=SessionRead, dependencies=[READER],
            summary="A session, if still valid (404 with the reason otherwise)")
async def get(user_id: UserId, session_id: SessionId) -> SessionRead:
    return await service.check_session(user_id=user_id, session_id=session_id, touch=False)


@router.post("/users/{user_id}/sessions/{session_id}/touch", response_model=SessionRead, dependencies=[WRITER],
             summary="Mark a session used now (404 with the reason if it is no longer valid)")
async def touch(user_id: UserId, session_id: SessionId) -> SessionRead:
    return await service.check_session(user_id=user_id, session_id=session_id, touch=True)


@router.delete("/users/{user_id}/sessions/{session_id}", status_code=204, dependencies=[WRITER],
               summary="End a session (idempotent)")
async def revoke(user_id: UserId, session_id: SessionId) -> Response:
    await service.revoke_session(user_id=user_id, session_id=session_id)
    return Response(status_code=204)


@router.delete("/users/{user_id}/sessions", response_model=Revoked, dependencies=[WRITER],
               summary="End all of a user's sessions")
async def revoke_all(
    user_id: UserId,
    keep: str | None = Query(None, pattern=SESSION_ID_PATTERN, description="A session to keep (the current one)."),
) -> Revoked:
    return Revoked(revoked=await service.revoke_all_sessions(user_id=user_id, keep=keep))
