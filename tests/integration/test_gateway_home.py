"""backend-api's home view on the in-process platform: every source asked at once, each one marked.

A source with a ``home_summary`` export answers (chat-service's, from the document store);
a service without one is ``absent``; a source past the deadline is ``timeout``. None of it
is a 5xx, and ``partial`` says whether anything is missing.
"""

from __future__ import annotations

import uuid

import pytest

from nexus_ray.deployments.platform.gateway import home
from nexus_ray.stores.documents import database

pytestmark = pytest.mark.integration

HOME = "/platform/v1/gateway/home"


@pytest.fixture
async def user_with_a_room(migrated):
    """A user who is a member of one chat room (its document, as the room entity mirrors it)."""
    user_id, room_id = f"home-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    rooms = database()["chat_rooms"]
    await rooms.insert_one({"_id": room_id, "name": "Lobby", "created_by": user_id, "members": [user_id]})
    yield user_id, room_id
    await rooms.delete_one({"_id": room_id})


async def test_home_gathers_each_source_and_marks_the_rest(client, bearer, user_with_a_room):
    user_id, room_id = user_with_a_room
    r = await client.get(HOME, headers=bearer("platform:gateway:read", subject=user_id))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user_id and set(body["sources"]) == set(home.SOURCES)
    chat = body["sources"]["chat"]
    assert chat["status"] == "ok" and chat["data"] == {"rooms": [{"room_id": room_id, "name": "Lobby"}], "count": 1}
    statuses = {s["status"] for s in body["sources"].values()}
    assert statuses <= {"ok", "timeout", "unavailable", "absent"}
    assert body["partial"] is (statuses != {"ok"})
    for source in body["sources"].values():
        assert (source["data"] is not None) is (source["status"] == "ok")

    # Someone else's home holds none of this user's rooms; no credential, no home.
    other = (await client.get(HOME, headers=bearer("platform:gateway:read", subject="someone-else"))).json()
    assert other["sources"]["chat"]["data"] == {"rooms": [], "count": 0}
    assert (await client.get(HOME)).status_code == 401


async def test_absent_and_slow_sources_are_marked_not_fatal(migrated, user_with_a_room):
    user_id, _ = user_with_a_room
    # session-mgr exports no home_summary: absent; chat answers.
    view = await home.home(user_id=user_id, sources={"chat": "chat-service", "sessions": "session-mgr"})
    assert (view.sources["chat"].status, view.sources["sessions"].status) == ("ok", "absent")
    assert view.partial is True and view.sources["sessions"].data is None
    only_chat = await home.home(user_id=user_id, sources={"chat": "chat-service"})
    assert only_chat.partial is False

    # A deadline no store round trip can meet: the source is marked timeout, the view still answers.
    late = await home.home(user_id=user_id, sources={"chat": "chat-service"}, deadline_s=1e-6)
    assert late.sources["chat"].status == "timeout" and late.partial is True and late.deadline_ms == 0
