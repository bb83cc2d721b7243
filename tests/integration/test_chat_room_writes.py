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


async def test_resend_of_a_post_the_room_no_longer_remembers_is_answered_from_the_store(migrated):
    await ensure_indexes()
    key = f"writes-{uuid.uuid4().hex[:10]}"
    room = await ChatRoom.open(key)
    assert "error" not in await room.create("u0", "Old", {"blocked_words": [], "block_links": False})
    assert "error" not in await room.set_member("u0", "u1", "member")
    first = [await room.post("u1", f"u1-{k}", f"said {k}", 1_700_000_000.0) for k in range(3)]
    assert [a["message"]["seq"] for a in first] == [1, 2, 3]

    # The same room restored elsewhere (a restarted shard) remembers no recent posts: the store's unique
    # index refuses the resends, and they are answered with the stored messages, in one batch with new posts.
    again = await ChatRoom.open(key)
    pubsub = redis_client().pubsub()
    await pubsub.subscribe(channel(key))
    await pubsub.get_message(timeout=1)
    answers = await asyncio.gather(
        again.post("u1", "u1-1", "said 1", 1_700_000_100.0),
        again.post("u0", "u0-new", "new", 1_700_000_100.0),
        again.post("u1", "u1-1", "said 1", 1_700_000_100.0),
        again.post("u1", "u1-2", "said 2", 1_700_000_100.0),
    )
    assert [(a["duplicate"], a["message"]["client_id"]) for a in answers] == [
        (True, "u1-1"), (False, "u0-new"), (True, "u1-1"), (True, "u1-2")]
    assert [a["message"]["seq"] for a in answers if a["duplicate"]] == [2, 2, 3]
    assert answers[0]["message"]["sent_at"] == first[1]["message"]["sent_at"]  # the stored one, not a copy
    stored = await messages().find({"room_id": key}).sort("seq", 1).to_list()
    assert [(d["sender"], d["client_id"]) for d in stored] == [
        ("u1", "u1-0"), ("u1", "u1-1"), ("u1", "u1-2"), ("u0", "u0-new")]  # nothing stored twice
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert msg is not None and orjson.loads(msg["data"])["message"]["client_id"] == "u0-new"
    await redis_client().publish(channel(key), b'{"type": "end of test"}')
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    assert msg is not None and orjson.loads(msg["data"]) == {"type": "end of test"}  # the resends: not published
    await pubsub.unsubscribe()
    await pubsub.aclose()

    # Numbers are never handed out twice: the ones given to the refused resends stay gaps.
    later = await again.post("u0", "u0-later", "later", 1_700_000_200.0)
    assert later["message"]["seq"] > answers[1]["message"]["seq"]
    # And now the room remembers: the resend of a post it wrote is answered (by number, from the store).
    resent = await again.post("u0", "u0-later", "later", 1_700_000_300.0)
    assert resent == {"message": later["message"], "duplicate": True}
