"""A chat room's writer under concurrent posts, on the real stores: posts that arrive together are written
together (group commit) and still get one sequence number each, in arrival order, never twice; a resent
client id, in the same batch or later, answers the stored message instead of a second one."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from nexus_ray.actors.chat_room import ChatRoom, channel, messages
from nexus_ray.deployments.platform.chat.service import ensure_indexes
from nexus_ray.stores.cache import redis_client

pytestmark = pytest.mark.integration


async def test_concurrent_posts_are_numbered_once_each_in_arrival_order(migrated):
    await ensure_indexes()
    room = await ChatRoom.open(f"writes-{uuid.uuid4().hex[:10]}")
    senders = [f"u{i}" for i in range(5)]
    assert "error" not in await room.create("u0", "Busy", {"blocked_words": [], "block_links": False})
    for user in senders[1:]:
        assert "error" not in await room.set_member("u0", user, "member")
    pubsub = redis_client().pubsub()
    await pubsub.subscribe(channel(room.key))
    await pubsub.get_message(timeout=1)  # the subscription's confirmation

    # 100 posts at once, 20 per sender, plus a resend of each sender's first post in the same burst.
    posts = [(sender, f"{sender}-{k}", f"{sender} says {k}") for k in range(20) for sender in senders]
    resends = [(sender, f"{sender}-0", f"{sender} says 0") for sender in senders]
    answers = await asyncio.gather(*(room.post(s, c, t, 1_700_000_000.0) for s, c, t in posts + resends))

    fresh = [a["message"] for a in answers[:len(posts)]]
    assert all(a["duplicate"] is False for a in answers[:len(posts)])
    assert sorted(m["seq"] for m in fresh) == list(range(1, len(posts) + 1))  # once each, no gap, no twice
    assert [m["seq"] for m in fresh] == sorted(m["seq"] for m in fresh)  # in the order they arrived
    for (sender, client_id, _), resent in zip(resends, answers[len(posts):], strict=True):
        first = next(m for m in fresh if m["client_id"] == client_id and m["sender"] == sender)
        assert resent["duplicate"] is True and resent["message"]["seq"] == first["seq"]
    assert room.state["seq"] == len(posts)
    # Written together: the 100 numbers took far fewer journal entries than one each (posts that arrive
    # while the writer is busy, or before it starts, go in its next batch).
    entries = await redis_client().xrange(room.journal_key)
    numbered = [e for _, e in entries if e[b"op"] == b"seq"]
    assert 1 <= len(numbered) < len(posts) // 4

    stored = await messages().find({"room_id": room.key}).sort("seq", 1).to_list()
    assert [(d["sender"], d["client_id"], d["text"]) for d in stored] == posts

    published = []
    while len(published) < len(posts):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, f"only {len(published)} of {len(posts)} messages were published"
        published.append(orjson.loads(msg["data"])["message"]["seq"])
    assert published == list(range(1, len(posts) + 1))  # published in sequence order
    await pubsub.unsubscribe()
    await pubsub.aclose()

    # Later, a resend answers from the store; a new post goes on from the last number.
    again = await room.post("u3", "u3-7", "u3 says 7", 1_700_000_100.0)
    assert again["duplicate"] is True and again["message"]["text"] == "u3 says 7"
    later = await room.post("u1", "u1-late", "late", 1_700_000_100.0)
    assert later["duplicate"] is False and later["message"]["seq"] == len(posts) + 1
