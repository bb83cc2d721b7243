"""notification-service's routes under ``/platform/v1/notifications``.

Direct sends need the write scope (to a user id); sending to a raw address (``to``) needs admin. A
message is visible to its sender, to the user it is for, and to administrators (404 to anyone else).
A user reads and sets their own preferences (admin: anyone's). Templates and dead letters are the
administrator's. A send with a ``client_message_id`` already used by the caller returns the first
message (200, header ``Idempotent-Replayed: true``) instead of sending another.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.access import self_or_admin
from nexus_ray.deployments.kit.idempotency import mark_replayed
from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize
from nexus_ray.exceptions import Forbidden

from . import service
from .models import LOCALE_PATTERN, Channel, MessageCreate, MessageRead, Preferences, Status, TemplateBody, TemplateRead

SCOPES = scopes_of("notification-service")
router = APIRouter()

MessageId = Annotated[UUID, Path(description="The message's id.")]
UserId = Annotated[str, Path(max_length=200, description="The user's id.")]


@router.post("/messages", status_code=201, response_model=MessageRead, summary="Send a message now (queued)")
async def send(body: MessageCreate, response: Response, principal: Principal = authorize(SCOPES.write)
               ) -> MessageRead:
    if body.to is not None and not principal.can(SCOPES.admin):
        raise Forbidden(f"sending to an address needs {SCOPES.admin}", extra={"required_scopes": [SCOPES.admin]})
    message, created = await service.send_direct(caller=principal.subject, body=body)
    mark_replayed(response, not created, status=200)
    return message


@router.get("/messages/{message_id}", response_model=MessageRead, summary="A message and its delivery status")
async def get_message(message_id: MessageId, principal: Principal = authorize(SCOPES.read)) -> MessageRead:
    return await service.get_message(message_id=message_id, caller=principal.subject,
                                     privileged=principal.can(SCOPES.admin))


@router.get("/users/{user_id}/messages", response_model=Page[MessageRead], summary="A user's messages, latest first")
async def user_messages(user_id: UserId, page: PageRequest = page_params(),
                        principal: Principal = self_or_admin(SCOPES.read, SCOPES.admin)) -> Page[MessageRead]:
    return await service.list_messages(user_id=user_id, status=None, page=page)


@router.get("/messages", response_model=Page[MessageRead], dependencies=[authorize(SCOPES.admin)],
            summary="All messages, latest first, optionally in one status")
async def messages(status: Status | None = Query(None, description="Only messages in this status."),
                   page: PageRequest = page_params()) -> Page[MessageRead]:
    return await service.list_messages(user_id=None, status=status, page=page)


@router.get("/dead-letters", response_model=Page[MessageRead], dependencies=[authorize(SCOPES.admin)],
            summary="Messages that will not be sent again unless asked (dead)")
async def dead_letters(page: PageRequest = page_params()) -> Page[MessageRead]:
    return await service.list_messages(user_id=None, status="dead", page=page)


@router.post("/messages/{message_id}/retry", response_model=MessageRead, dependencies=[authorize(SCOPES.admin)],
             summary="Send a dead message again")
async def retry(message_id: MessageId) -> MessageRead:
    return await service.retry_dead(message_id=message_id)


@router.get("/users/{user_id}/preferences", response_model=Preferences, summary="Contact details and channels")
async def get_preferences(user_id: UserId, principal: Principal = self_or_admin(SCOPES.read, SCOPES.admin)
                          ) -> Preferences:
    return await service.get_preferences(user_id=user_id)


@router.put("/users/{user_id}/preferences", response_model=Preferences, summary="Replace them")
async def put_preferences(user_id: UserId, body: Preferences,
                          principal: Principal = self_or_admin(SCOPES.write, SCOPES.admin)) -> Preferences:
    return await service.set_preferences(user_id=user_id, body=body)


@router.get("/templates", response_model=Page[TemplateRead], dependencies=[authorize(SCOPES.read)],
            summary="Templates, by key, channel and locale")
async def templates(key: str | None = Query(None, max_length=100), page: PageRequest = page_params()
                    ) -> Page[TemplateRead]:
    return await service.list_templates(key=key, page=page)


@router.put("/templates/{key}/{channel}/{locale}", response_model=TemplateRead,
            dependencies=[authorize(SCOPES.admin)], summary="Create or replace a template")
async def put_template(
    body: TemplateBody,
    key: Annotated[str, Path(max_length=100, pattern=r"^[a-z][a-z0-9_.-]*$")],
    channel: Annotated[Channel, Path()],
    locale: Annotated[str, Path(pattern=LOCALE_PATTERN)],
) -> TemplateRead:
    return await service.put_template(key=key, channel=channel, locale=locale, body=body)
