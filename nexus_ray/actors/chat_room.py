"""ChatRoom: one chat room's members, moderation policy, mutes, read positions and message sequence.

One entity per room (key: the room id), living in one of chat-service's shard actors
(:mod:`nexus_ray.actors.shards`), reached through an
:class:`~nexus_ray.actors.client.EntityClient`. The room is the single writer of its
messages: :meth:`ChatRoom.post` runs one at a time per room, so

* sequence numbers are per room, increasing, never reused (journaled before the message
  is written; a failed write leaves a gap, never a duplicate);
* posts that arrive while the room is writing wait and are written together, in arrival
  order (group commit: one journal write, one insert, one round trip of publications for
  the lot), so a busy room costs a few round trips per batch instead of three per message;
* a message is in the document store before :meth:`post` returns, so the sender's ack
  means durable; and it is published (Redis pub/sub, one channel per room) after that;
* a client message id seen before returns the stored message instead of a second one
  (the dedup the client relies on when it resends after a dropped connection). A new post
  costs no look-up: it is inserted, and the store's unique (room, sender, client id) index
  refuses a resend, which is then answered with the stored message (the number it was
  handed stays a gap). The room remembers the ids of its last :data:`_RECENT` posts, so the
  usual resend, soon after a dropped connection, is known before it is numbered: no gap.

Ops are idempotent because Ray retries a call whose shard died mid-flight: "member X has
role R", "sequence is N", "X has read up to N (never backwards)", "X is muted until T".
Time is an argument of every op, never read inside :meth:`ChatRoom.apply`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from nexus_ray.actors.base import PersistentActor
from nexus_ray.stores.cache import redis_client
from nexus_ray.stores.documents import database

MODERATOR = "moderator"
MEMBER = "member"

_LINK = re.compile(r"(https?://|www\.)\S+|\b[a-z0-9-]+\.(com|net|org|io|ru|xyz|info|biz)\b", re.IGNORECASE)


def channel(room_id: str) -> str:
    """The Redis pub/sub channel of a room's live events."""
    return f"nexus:chat:room:{room_id}"


CHANNEL_PATTERN = "nexus:chat:room:*"


def messages() -> AsyncCollection:
    return database()["chat_messages"]


def rooms() -> AsyncCollection:
    """One document per room (name, members): what the home view and a user's room list read."""
    return database()["chat_rooms"]


def moderation_refusal(text: str, policy: dict[str, Any]) -> str | None:
    """Why the room's ``policy`` refuses ``text`` (a blocked word, a link), or None."""
    words = set(re.findall(r"\w+", text.lower()))
    blocked = sorted(words & {w.lower() for w in policy.get("blocked_words", [])})
    if blocked:
        return f"blocked word: {blocked[0]}"
    if policy.get("block_links") and _LINK.search(text):
        return "links are not allowed in this room"
    return None


def message_out(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored message as clients see it: a deleted one keeps its place, not its text."""
    def iso(value: Any) -> str | None:
        if value is None:
            return None
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return str(value.isoformat())

    return {
        "room_id": doc["room_id"], "seq": doc["seq"], "sender": doc["sender"], "client_id": doc["client_id"],
        "text": None if doc.get("deleted") else doc["text"], "sent_at": iso(doc["sent_at"]),
        "edited": doc.get("edited_at") is not None, "edited_at": iso(doc.get("edited_at")),
        "deleted": bool(doc.get("deleted")),
    }


async def publish(room_id: str, *events: dict[str, Any]) -> None:
    """Publish ``events`` on the room's channel, in order, in one round trip."""
    async with redis_client().pipeline(transaction=False) as pipe:
        for event in events:
            pipe.publish(channel(room_id), orjson.dumps(event))
        await pipe.execute()


_BATCH = 256
"""Most posts written in one group commit."""

_RECENT = 256
"""Posts per room whose (sender, client id) the room remembers, to know a resend before numbering it."""

_DUPLICATE_KEY = 11000


@dataclass
class _Post:
    sender: str
    client_id: str
    text: str
    now: float
    done: asyncio.Future[dict[str, Any]]


class ChatRoom(PersistentActor):
    """The live state of one chat room."""

    kind = "chatroom"
    snapshot_every = 500

    def __init__(self, key: str) -> None:
        super().__init__(key)
        # Writes of this room one at a time (a batch of posts, an edit, a delete): the order of
        # sequence numbers is the order of the writes and of the publications.
        self._write_lock = asyncio.Lock()
        # Posts waiting for the room's writer, which takes all that wait (up to _BATCH) at once.
        self._posts: list[_Post] = []
        self._writer: asyncio.Future[None] | None = None
        # (sender, client id) of this room's last _RECENT stored posts, oldest first (a dict keeps insertion order).
        self._recent: dict[tuple[str, str], None] = {}

    def initial_state(self) -> dict[str, Any]:
        return {"created": False, "name": "", "created_by": "", "members": {}, "seq": 0, "reads": {},
                "muted": {}, "policy": {"blocked_words": [], "block_links": False}}

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        if op == "create":
            if state["created"]:
                return state
            return {**state, "created": True, "name": data["name"], "created_by": data["by"],
                    "members": {data["by"]: MODERATOR}, "policy": data["policy"]}
        if op == "member":
            members = dict(state["members"])
            if data["role"] is None:
                members.pop(data["user_id"], None)
            else:
                members[data["user_id"]] = data["role"]
            return {**state, "members": members}
        if op == "seq":
            return {**state, "seq": max(state["seq"], data["seq"])}
        if op == "read":
            reads = dict(state["reads"])
            reads[data["user_id"]] = max(reads.get(data["user_id"], 0), data["seq"])
            return {**state, "reads": reads}
        if op == "mute":
            muted = dict(state["muted"])
            if data["until"] is None:
                muted.pop(data["user_id"], None)
            else:
                muted[data["user_id"]] = data["until"]
            return {**state, "muted": muted}
        if op == "policy":
            return {**state, "policy": data["policy"]}
        raise ValueError(f"unknown op {op!r}")

    # -- calls (return dicts; {"error": status, "detail": ...} for a refusal) ---------------

    def _refusal(self, user_id: str, *, moderator: bool = False) -> dict[str, Any] | None:
        role = self.state["members"].get(user_id) if self.state["created"] else None
        if role is None:
            return {"error": 404, "detail": f"room {self.key} not found"}
        if moderator and role != MODERATOR:
            return {"error": 403, "detail": "only a moderator of the room may do this"}
        return None

    def info(self) -> dict[str, Any]:
        """The room's state as held (for views and checks), ``created`` False if it does not exist."""
        return {"room_id": self.key, **self.state}

    async def _mirror(self, user_id: str, member: bool) -> None:
        # One member added or removed per write, never the whole list: concurrent membership changes
        # of a room mirror in any order and still agree with the entity.
        change = {"$addToSet": {"members": user_id}} if member else {"$pull": {"members": user_id}}
        await rooms().update_one(
            {"_id": self.key},
            {**change, "$set": {"name": self.state["name"], "created_by": self.state["created_by"]}},
            upsert=True,
        )

    async def create(self, by: str, name: str, policy: dict[str, Any]) -> dict[str, Any]:
        if self.state["created"] and self.state["created_by"] != by:
            return {"error": 409, "detail": f"room {self.key} already exists"}
        await self.commit("create", by=by, name=name, policy=policy)
        await self._mirror(by, True)
        return self.info()

    async def set_member(self, by: str, user_id: str, role: str | None) -> dict[str, Any]:
        if (refused := self._refusal(by, moderator=True)) is not None:
            return refused
        await self.commit("member", user_id=user_id, role=role)
        await self._mirror(user_id, role is not None)
        return self.info()

    async def set_policy(self, by: str, policy: dict[str, Any]) -> dict[str, Any]:
        if (refused := self._refusal(by, moderator=True)) is not None:
            return refused
        await self.commit("policy", policy=policy)
        return self.info()

    async def mute(self, by: str, user_id: str, until: float | None) -> dict[str, Any]:
        if (refused := self._refusal(by, moderator=True)) is not None:
            return refused
        await self.commit("mute", user_id=user_id, until=until)
        return self.info()

    async def read(self, user_id: str, seq: int) -> dict[str, Any]:
        if (refused := self._refusal(user_id)) is not None:
            return refused
        seq = min(seq, self.state["seq"])
        if seq > self.state["reads"].get(user_id, 0):
            await self.commit("read", user_id=user_id, seq=seq)
            await publish(self.key, {"type": "receipt", "user_id": user_id, "seq": seq})
        return {"user_id": user_id, "seq": self.state["reads"].get(user_id, 0)}

    async def post(self, sender: str, client_id: str, text: str, now: float) -> dict[str, Any]:
        """Store and publish a message; its stored form (also for a client id seen before), or a refusal."""
        if (refused := self._refusal(sender)) is not None:
            return refused
        until = self.state["muted"].get(sender)
        if until is not None and until > now:
            return {"error": 403, "detail": "you are muted in this room"}
        if (reason := moderation_refusal(text, self.state["policy"])) is not None:
            return {"error": 422, "detail": reason}
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._posts.append(_Post(sender, client_id, text, now, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_posts())
        return await asyncio.shield(done)  # a caller that gives up does not cancel the others' batch

    async def _write_posts(self) -> None:
        """Writes the waiting posts in batches, in arrival order, until none wait (one writer per room)."""
        while self._posts:
            async with self._write_lock:
                batch, self._posts = self._posts[:_BATCH], self._posts[_BATCH:]
                try:
                    answers = await self._write_batch(batch)
                except Exception as exc:  # nothing acknowledged: each sender retries with its client id
                    for p in batch:
                        if not p.done.done():
                            p.done.set_exception(exc)
                    continue
            for p, answer in zip(batch, answers, strict=True):
                if not p.done.done():
                    p.done.set_result(answer)

    async def _write_batch(self, batch: list[_Post]) -> list[dict[str, Any]]:
        """One group commit: the batch numbered with one journal write, stored with one insert, then published
        in order with one round trip. A resend (of a post the room remembers, or one the store's unique index
        refuses) is answered with the stored message."""
        seq = self.state["seq"]
        docs: list[dict[str, Any]] = []
        answers: list[dict[str, Any] | None] = []  # None: a resend, answered from the store
        in_batch: dict[tuple[str, str], dict[str, Any]] = {}  # the answers of this batch's new posts
        for p in batch:
            key = (p.sender, p.client_id)
            if (earlier := in_batch.get(key)) is not None:
                answers.append({**earlier, "duplicate": True})
                continue
            if key in self._recent:
                answers.append(None)
                continue
            seq += 1
            doc = {"_id": f"{self.key}:{seq}", "room_id": self.key, "seq": seq, "sender": p.sender,
                   "client_id": p.client_id, "text": p.text, "sent_at": datetime.fromtimestamp(p.now, UTC),
                   "edited_at": None, "deleted": False}
            docs.append(doc)
            in_batch[key] = {"message": message_out(doc), "duplicate": False}
            answers.append(in_batch[key])
        refused: set[tuple[str, str]] = set()
        if docs:
            await self.commit("seq", seq=seq)  # before the write: a seq is never handed out twice
            refused = await self._insert(docs)
            stored = [(d["sender"], d["client_id"]) for d in docs if (d["sender"], d["client_id"]) not in refused]
            await publish(self.key, *({"type": "message", "message": in_batch[key]["message"]} for key in stored))
            for key in stored:
                self._remember(key)
        resent = {(p.sender, p.client_id) for p, a in zip(batch, answers, strict=True) if a is None} | refused
        found = await self._stored(resent)
        return [answer if answer is not None and (p.sender, p.client_id) not in refused
                else {"message": message_out(found[(p.sender, p.client_id)]), "duplicate": True}
                for p, answer in zip(batch, answers, strict=True)]

    async def _insert(self, docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """Insert ``docs``; the (sender, client id) of those the unique index refused as resends of older posts."""
        try:
            await messages().insert_many(docs, ordered=False)
            return set()
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != _DUPLICATE_KEY or "client_id" not in (e.get("keyPattern") or {})
                   for e in errors):
                raise  # not (only) resends: nothing is acknowledged, each sender retries with its client id
            return {(docs[e["index"]]["sender"], docs[e["index"]]["client_id"]) for e in errors}

    async def _stored(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The stored messages of these (sender, client id) pairs, one look-up each (all at once) by the unique
        (room, sender, client id) index."""
        found = await asyncio.gather(*(
            messages().find_one({"room_id": self.key, "sender": sender, "client_id": client_id})
            for sender, client_id in keys))
        if any(f is None for f in found):
            raise RuntimeError("a message answered as a resend is not in the store")
        return {(f["sender"], f["client_id"]): f for f in found if f is not None}

    def _remember(self, key: tuple[str, str]) -> None:
        self._recent[key] = None
        if len(self._recent) > _RECENT:
            del self._recent[next(iter(self._recent))]  # the oldest

    async def change(self, by: str, seq: int, text: str | None, now: float) -> dict[str, Any]:
        """Edit (``text``) or delete (None) message ``seq``: its author, or a moderator for a delete."""
        if (refused := self._refusal(by)) is not None:
            return refused
        async with self._write_lock:
            doc = await messages().find_one({"_id": f"{self.key}:{seq}"})
            if doc is None:
                return {"error": 404, "detail": f"message {seq} not found"}
            moderator = self.state["members"].get(by) == MODERATOR
            if doc["sender"] != by and not (text is None and moderator):
                return {"error": 403, "detail": "only the author may edit a message; the author or a moderator "
                                                "may delete it"}
            if doc.get("deleted"):
                return {"error": 409, "detail": f"message {seq} was deleted"}
            if text is not None:
                if (reason := moderation_refusal(text, self.state["policy"])) is not None:
                    return {"error": 422, "detail": reason}
                update = {"text": text, "edited_at": datetime.fromtimestamp(now, UTC)}
            else:
                update = {"deleted": True, "deleted_by": by}
            doc = {**doc, **update}
            await messages().update_one({"_id": doc["_id"]}, {"$set": update})
            out = message_out(doc)
            await publish(self.key, {"type": "deleted" if text is None else "edited", "message": out})
        return {"message": out}
