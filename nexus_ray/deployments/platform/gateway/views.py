"""backend-api's routes under ``/platform/v1/gateway``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize, public

from . import home, live, service
from .models import CurrentNotice, DeadLetterRead, Directory, HomeView, NoticeIn, NoticeRead, OpenApiIndex

SCOPES = scopes_of("backend-api")
router = APIRouter()
router.include_router(live.router)


@router.get("/services", response_model=Directory, dependencies=[authorize(SCOPES.read)],
            summary="Every service with live health")
async def directory() -> Directory:
    return await service.directory()


@router.get("/home", response_model=HomeView, summary="Your home: what each service knows of you, in one call")
async def get_home(principal: Principal = authorize(SCOPES.read)) -> HomeView:
    return await home.home(user_id=principal.subject)


@router.get("/notice", response_model=CurrentNotice, dependencies=[authorize(SCOPES.read)],
            summary="The current platform notice")
async def get_notice() -> CurrentNotice:
    return await service.current_notice()


@router.put("/notice", response_model=NoticeRead, summary="Set the platform notice")
async def set_notice(body: NoticeIn, principal: Principal = authorize(SCOPES.admin)) -> NoticeRead:
    return await service.set_notice(notice=body, set_by=principal.subject)


@router.delete("/notice", status_code=204, dependencies=[authorize(SCOPES.admin)], summary="Clear the platform notice")
async def clear_notice() -> Response:
    await service.clear_notice()
    return Response(status_code=204)


@router.get("/openapi", response_model=OpenApiIndex, dependencies=[public()],
            summary="Where each namespace's OpenAPI document is")
async def openapi_index() -> OpenApiIndex:
    return service.openapi_index()


DeadLetterId = Annotated[int, Path(ge=1, description="The dead letter's id.")]


@router.get("/dead-letters", response_model=Page[DeadLetterRead], dependencies=[authorize(SCOPES.admin)],
            summary="Events the platform's consumers gave up on")
async def dead_letters(
    consumer: str | None = Query(None, max_length=200, description="Only this consumer group's."),
    page: PageRequest = page_params(default=50, maximum=500),
) -> Page[DeadLetterRead]:
    return await service.dead_letters(consumer=consumer, page=page)


@router.get("/dead-letters/{dead_letter_id}", response_model=DeadLetterRead, dependencies=[authorize(SCOPES.admin)],
            summary="One dead letter")
async def dead_letter(dead_letter_id: DeadLetterId) -> DeadLetterRead:
    return await service.dead_letter(dead_letter_id=dead_letter_id)


@router.post("/dead-letters/{dead_letter_id}/replay", response_model=DeadLetterRead,
             dependencies=[authorize(SCOPES.admin)],
             summary="Deliver a dead letter to its consumer once more (idempotent)")
async def replay(dead_letter_id: DeadLetterId) -> DeadLetterRead:
    return await service.replay_dead_letter(dead_letter_id=dead_letter_id)
