"""chat-service's routes under ``/platform/v1/chat``: rooms, members, policy, history, edits, reports, mutes.

A room is seen only by its members (404 for anyone else; an administrator sees every
room); changing members, policy and mutes, and reading reports, is for its moderators.
The live connection is in :mod:`.live`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from nexus_ray.deployments.kit.pages import Page, PageRequest, page_params
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal, authorize

from . import live, service
from .models import (
    ROOM_ID_PATTERN,
    USER_ID_PATTERN,
    MemberIn,
    MessageEdit,
    MessageRead,
    MuteIn,
    Policy,
    ReportIn,
    ReportRead,
    RoomCreate,
    RoomRead,
)

SCOPES = scopes_of("chat-service")
router = APIRouter()
router.include_router(live.router)

RoomId = Annotated[str, Path(pattern=ROOM_ID_PATTERN, description="The room's id, chosen by its creator.")]
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="A member (token subject).")]
Seq = Annotated[int, Path(ge=1, description="The message's sequence number in the room.")]


def _admin(principal: Principal) -> bool:
    return principal.can(SCOPES.admin)


@router.post("/rooms", status_code=201, response_model=RoomRead,
             summary="Create a room (you become its moderator); again with the same room_id returns it")
async def create_room(body: RoomCreate, principal: Principal = authorize(SCOPES.write)) -> RoomRead:
    return await service.create_room(room_id=body.room_id, name=body.name, policy=body.policy, by=principal.subject)


@router.get("/rooms/{room_id}", response_model=RoomRead, summary="A room you are a member of")
async def get_room(room_id: RoomId, principal: Principal = authorize(SCOPES.read)) -> RoomRead:
    return await service.get_room(room_id=room_id, user_id=principal.subject, admin=_admin(principal))


@router.put("/rooms/{room_id}/members/{user_id}", response_model=RoomRead, summary="Add a member or set their role")
async def put_member(room_id: RoomId, user_id: UserId, body: MemberIn,
                     principal: Principal = authorize(SCOPES.write)) -> RoomRead:
    return await service.set_member(room_id=room_id, by=principal.subject, user_id=user_id, role=body.role)


@router.delete("/rooms/{room_id}/members/{user_id}", response_model=RoomRead, summary="Remove a member")
async def delete_member(room_id: RoomId, user_id: UserId, principal: Principal = authorize(SCOPES.write)) -> RoomRead:
    return await service.set_member(room_id=room_id, by=principal.subject, user_id=user_id, role=None)


@router.put("/rooms/{room_id}/policy", response_model=RoomRead, summary="Set the room's moderation filter")
async def put_policy(room_id: RoomId, body: Policy, principal: Principal = authorize(SCOPES.write)) -> RoomRead:
    return await service.set_policy(room_id=room_id, by=principal.subject, policy=body)


@router.put("/rooms/{room_id}/mutes/{user_id}", response_model=RoomRead, summary="Mute a member for a while")
async def put_mute(room_id: RoomId, user_id: UserId, body: MuteIn,
                   principal: Principal = authorize(SCOPES.write)) -> RoomRead:
    return await service.mute(room_id=room_id, by=principal.subject, user_id=user_id, minutes=body.minutes)


@router.delete("/rooms/{room_id}/mutes/{user_id}", response_model=RoomRead, summary="Unmute a member")
async def delete_mute(room_id: RoomId, user_id: UserId, principal: Principal = authorize(SCOPES.write)) -> RoomRead:
    return await service.mute(room_id=room_id, by=principal.subject, user_id=user_id, minutes=None)


@router.get("/rooms/{room_id}/messages", response_model=Page[MessageRead], summary="History, newest first")
async def history(room_id: RoomId, page: PageRequest = page_params(default=50, maximum=200),
                  principal: Principal = authorize(SCOPES.read)) -> Page[MessageRead]:
    return await service.history(room_id=room_id, user_id=principal.subject, admin=_admin(principal), page=page)


@router.patch("/rooms/{room_id}/messages/{seq}", response_model=MessageRead, summary="Edit your message")
async def edit_message(room_id: RoomId, seq: Seq, body: MessageEdit,
                       principal: Principal = authorize(SCOPES.write)) -> MessageRead:
    return await service.change_message(room_id=room_id, by=principal.subject, seq=seq, text=body.text)


@router.delete("/rooms/{room_id}/messages/{seq}", response_model=MessageRead,
               summary="Delete a message (its author or a moderator); it keeps its place, marked deleted")
async def delete_message(room_id: RoomId, seq: Seq, principal: Principal = authorize(SCOPES.write)) -> MessageRead:
    return await service.change_message(room_id=room_id, by=principal.subject, seq=seq, text=None)


@router.post("/rooms/{room_id}/messages/{seq}/reports", status_code=201, response_model=ReportRead,
             summary="Report a message to the room's moderators")
async def report(room_id: RoomId, seq: Seq, body: ReportIn,
                 principal: Principal = authorize(SCOPES.write)) -> ReportRead:
    return await service.report(room_id=room_id, seq=seq, by=principal.subject, reason=body.reason)


@router.get("/rooms/{room_id}/reports", response_model=Page[ReportRead], summary="Reports (moderators)")
async def reports(room_id: RoomId, page: PageRequest = page_params(),
                  principal: Principal = authorize(SCOPES.read)) -> Page[ReportRead]:
    return await service.reports(room_id=room_id, by=principal.subject, admin=_admin(principal), page=page)



