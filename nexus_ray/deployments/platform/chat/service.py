"""chat-service's logic: rooms held by :class:`~nexus_ray.actors.chat_room.ChatRoom` entities, history in documents.

Every change to a room (members, policy, mutes, read positions, messages, edits, deletes)
goes through its entity, the room's single writer; reads of history go to the document
store directly (collection ``chat_messages``, ``_id`` = ``<room>:<seq>``, indexed by
``(room_id, seq)`` and unique on ``(room_id, sender, client_id)``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nexus_ray.actors.chat_room import ChatRoom, message_out, messages, rooms
from nexus_ray.actors.client import EntityClient
from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import ValidationFailed, for_status
from nexus_ray.stores.documents import database

from .models import MessageRead, Policy, ReportRead, RoomRead
from .settings import ChatSettings

_client: EntityClient | None = None
_indexed = False


def rooms_client() -> EntityClient:
    """The client of the room entities (shard count and timeout from the settings)."""
    global _client
    s = settings_of(ChatSettings)
    if _client is None or _client.shards != s.chat_shards:
        _client = EntityClient(ChatRoom, shards=s.chat_shards, timeout_s=get_settings().actor_call_timeout_s,
                               max_resident=s.chat_shard_max_resident)
    return _client


async def ensure_indexes() -> None:
    global _indexed
    if _indexed:
        return
    await messages().create_index([("room_id", 1), ("seq", 1)])
    await messages().create_index([("room_id", 1), ("sender", 1), ("client_id", 1)], unique=True)
    await rooms().create_index([("members", 1)])
    await database()["chat_reports"].create_index([("room_id", 1), ("reported_at", 1)])
    _indexed = True


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    """An entity's answer, or the platform error of its refusal."""
    if "error" in result:
        raise for_status(result["error"], result["detail"])
    return result


async def _room_call(room_id: str, method: str, *args: Any) -> dict[str, Any]:
    return _checked(await rooms_client().call(room_id, method, *args))


def _room(info: dict[str, Any]) -> RoomRead:
    return RoomRead.model_validate({
        **info, "muted": {u: datetime.fromtimestamp(t, UTC) for u, t in info["muted"].items()},
    })


async def _visible(*, room_id: str, user_id: str, admin: bool) -> None:
    """404 unless the room exists and ``user_id`` is a member (or ``admin``), from the room's mirrored document.

    Answered from the document store, not the entity: a stranger's request never wakes a room.
    The entity writes the mirror after each membership change; its own checks are the authority.
    """
    await ensure_indexes()
    doc = await rooms().find_one({"_id": room_id}, {"members": 1})
    if doc is None or (user_id not in doc["members"] and not admin):
        raise for_status(404, f"room {room_id} not found")


async def room_state(*, room_id: str, user_id: str, admin: bool = False) -> dict[str, Any]:
    """The room as its entity holds it; 404 unless ``user_id`` is a member (or ``admin``)."""
    await _visible(room_id=room_id, user_id=user_id, admin=admin)
    info: dict[str, Any] = await rooms_client().call(room_id, "info")
    if not info["created"] or (user_id not in info["members"] and not admin):
        raise for_status(404, f"room {room_id} not found")
    return info


async def create_room(*, room_id: str, name: str, policy: Policy, by: str) -> RoomRead:
    """Create the room with ``by`` as its moderator; creating it again (same creator) returns it."""
    await ensure_indexes()
    return _room(await _room_call(room_id, "create", by, name, policy.model_dump()))


async def get_room(*, room_id: str, user_id: str, admin: bool) -> RoomRead:
    return _room(await room_state(room_id=room_id, user_id=user_id, admin=admin))


async def set_member(*, room_id: str, by: str, user_id: str, role: str | None) -> RoomRead:
    await _visible(room_id=room_id, user_id=by, admin=False)
    return _room(await _room_call(room_id, "set_member", by, user_id, role))


async def set_policy(*, room_id: str, by: str, policy: Policy) -> RoomRead:
    await _visible(room_id=room_id, user_id=by, admin=False)
    return _room(await _room_call(room_id, "set_policy", by, policy.model_dump()))


async def mute(*, room_id: str, by: str, user_id: str, minutes: int | None) -> RoomRead:
    await _visible(room_id=room_id, user_id=by, admin=False)
    until = None if minutes is None else time.time() + 60 * minutes
    return _room(await _room_call(room_id, "mute", by, user_id, until))


async def post(*, room_id: str, sender: str, client_id: str, text: str) -> dict[str, Any]:
    """Store and publish a message (once per client id); ``{"message": ..., "duplicate": bool}``."""
    if not text or len(text) > settings_of(ChatSettings).chat_max_text:
        raise ValidationFailed.for_field("text", f"must be 1 to {settings_of(ChatSettings).chat_max_text} characters")
    if not client_id or len(client_id) > 128:
        raise ValidationFailed.for_field("client_id", "must be 1 to 128 characters")
    return await _room_call(room_id, "post", sender, client_id, text, time.time())


async def read_up_to(*, room_id: str, user_id: str, seq: int) -> dict[str, Any]:
    return await _room_call(room_id, "read", user_id, seq)


async def change_message(*, room_id: str, by: str, seq: int, text: str | None) -> MessageRead:
    """Edit (``text``) or soft-delete (None) message ``seq``."""
    await _visible(room_id=room_id, user_id=by, admin=False)
    result = await _room_call(room_id, "change", by, seq, text, time.time())
    return MessageRead.model_validate(result["message"])


async def history(*, room_id: str, user_id: str, admin: bool, page: PageRequest) -> Page[MessageRead]:
    """The room's messages, newest first (keyset on the sequence number)."""
    await _visible(room_id=room_id, user_id=user_id, admin=admin)
    before = page.after_value(0)
    if before is not None and not isinstance(before, int):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    query: dict[str, Any] = {"room_id": room_id}
    if before is not None:
        query["seq"] = {"$lt": before}
    docs = await messages().find(query).sort("seq", -1).limit(page.fetch_limit).to_list()
    return page.of(docs, key=lambda d: (d["seq"],), item=lambda d: MessageRead.model_validate(message_out(d)))


async def missed(*, room_id: str, after: int, batch: int = 500) -> AsyncIterator[dict[str, Any]]:
    """The room's messages after sequence number ``after``, oldest first (the replay of a resume)."""
    while True:
        docs = await messages().find({"room_id": room_id, "seq": {"$gt": after}}).sort("seq", 1).limit(batch).to_list()
        for doc in docs:
            yield message_out(doc)
        if len(docs) < batch:
            return
        after = docs[-1]["seq"]


async def report(*, room_id: str, seq: int, by: str, reason: str) -> ReportRead:
    """A member reports message ``seq`` to the room's moderators."""
    await _visible(room_id=room_id, user_id=by, admin=False)
    if await messages().find_one({"_id": f"{room_id}:{seq}"}, {"_id": 1}) is None:
        raise for_status(404, f"message {seq} not found")
    doc = {"_id": uuid.uuid4().hex, "room_id": room_id, "seq": seq, "reported_by": by, "reason": reason,
           "reported_at": datetime.now(UTC)}
    await database()["chat_reports"].insert_one(doc)
    return _report(doc)


def _report(doc: dict[str, Any]) -> ReportRead:
    return ReportRead.model_validate({**doc, "report_id": doc["_id"]})


async def reports(*, room_id: str, by: str, admin: bool, page: PageRequest) -> Page[ReportRead]:
    """Reports of the room's messages, oldest first: for its moderators."""
    info = await room_state(room_id=room_id, user_id=by, admin=admin)
    if not admin and info["members"].get(by) != "moderator":
        raise for_status(403, "only a moderator of the room may see its reports")
    after = page.after_value(0)
    query: dict[str, Any] = {"room_id": room_id}
    if after is not None:
        if not isinstance(after, str):
            raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
        query["_id"] = {"$gt": after}
    docs = await database()["chat_reports"].find(query).sort("_id", 1).limit(page.fetch_limit).to_list()
    return page.of(docs, key=lambda d: (d["_id"],), item=_report)


async def home_summary(*, user_id: str) -> dict[str, Any]:
    """The home view's chat part: the user's rooms (at most 10, by name) and how many there are."""
    found = await rooms().find({"members": user_id}, {"name": 1}).sort("name", 1).limit(10).to_list()
    total = await rooms().count_documents({"members": user_id})
    return {"rooms": [{"room_id": d["_id"], "name": d["name"]} for d in found], "count": total}
