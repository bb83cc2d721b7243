"""chat-service's live room: one WebSocket per member and room, ``/rooms/{room_id}/live?after=N``.

Client to server (JSON text messages)::

    {"type": "send", "client_id": "c-17", "text": "hello"}   # client_id: the sender's own id, for dedup
    {"type": "read", "seq": 42}                             # read receipt: read up to 42
    {"type": "typing"}

Server to client::

    {"type": "message", "message": {...MessageRead}}        # every member, the sender too, in seq order
    {"type": "ack", "client_id": "c-17", "seq": 43, "duplicate": false}   # stored durably before it is sent
    {"type": "rejected", "client_id": "c-17", "status": 422, "detail": "blocked word: spam"}
    {"type": "edited" | "deleted", "message": {...}}
    {"type": "receipt", "user_id": ..., "seq": ...}
    {"type": "typing", "user_id": ...}   {"type": "presence", "user_id": ..., "online": true|false}
    {"type": "ready", "seq": N}                             # replay done: live from here
    {"type": "batch", "events": [{...}, {...}]}            # only with ?batch=true: see below

**Resume.** A client connects with ``after`` = the last sequence number it saw; the server
subscribes first, then replays every stored message after it from history, then forwards
live messages, skipping any it already replayed: nothing is missed or sent twice. Without
``after`` the stream starts live at the room's current sequence number (``ready.seq``).
A message sent again with the same ``client_id`` (the sender did not see the ack before
its connection dropped) is acknowledged with the stored message and not stored twice.

**Fan-out.** Rooms publish their events on a Redis channel each (the room entity publishes
after the write). Each replica holds one pattern subscription to all rooms' channels and
hands every event to the room's *feed* in this replica, which makes each frame once and
hands the same frame to every connection it holds for that room: Redis connections follow
the number of replicas, not of clients or rooms, and a frame's bytes are made once per
replica, not once per member. The price: each replica receives every room's events,
including those of rooms it holds no connection for; per-room subscriptions are the next
step when rooms x replicas makes that matter.

A connection that falls more than ``chat_client_backlog`` events behind is closed with
1013 (try again) rather than buffered without bound; it resumes from its last sequence number.

**Batches** (``?batch=true``, for clients that can read them). In a busy room an event waits for
the ones behind it, at most a *linger* from when it reached the replica, and they go out together as
one ``batch`` frame (at most :data:`BATCH_MOST` events, in order); an event after a quiet spell (no
event for a linger) goes out at once. Every frame costs a system call in the replica, a pass through
the proxy and a read in the client, whatever it holds, so a busy room's members get about one frame
per linger however fast the room talks. The frame is made once per room and replica and the same
text goes to every batch member there, all at the same moment: sent together, a replica's, the
proxy's and the clients' frames share their wake-ups (what bench/RESULTS.md measured to be cheaper
than spreading them over the linger). A connection that is behind (frames queued for it while it
was sending) gets what queued as one batch. A client without ``batch`` gets one frame per event, as
soon as the event comes.

The linger follows what handing out frames costs here: each feed times how long its frames take to
reach nine in ten of its batch members (a moving average; a stuck member does not count) and holds
the linger at ``chat_batch_linger_factor`` times that, between ``chat_batch_linger_min_ms`` and
``chat_batch_linger_ms``. On a machine with CPU to spare frames reach the members quickly and events
wait little; when the replica, the proxy or the clients are short of CPU the same frames take longer,
the linger grows, and the frames per second fall with it (bench/RESULTS.md, chat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Path, Query, WebSocket
from starlette.websockets import WebSocketDisconnect

from nexus_ray.actors.chat_room import CHANNEL_PATTERN, publish
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.edge.security import Principal
from nexus_ray.edge.websocket import ws_authorize
from nexus_ray.exceptions import NexusError, ServiceUnavailable, ValidationFailed
from nexus_ray.stores.fanout import LOST, Fanout

from . import service
from .models import ROOM_ID_PATTERN
from .settings import ChatSettings

log = logging.getLogger(__name__)
router = APIRouter()
SCOPES = scopes_of("chat-service")

BATCH_MOST = 256
"""The most events in one ``batch`` frame."""

_MESSAGE = b'{"type":"message"'

OVERFLOW = object()
"""Queued for a connection instead of the frame that would take it past ``chat_client_backlog`` events."""

_rooms = Fanout(CHANNEL_PATTERN, name="chat")


class _Frame:
    """Events of a room as one WebSocket text frame, made once for every connection of the room here.

    A frame the feed made for its batch members counts their sends (:meth:`sent`): when nine in ten
    of them have sent it, the feed learns how long handing it out took (:meth:`_Feed.took`).
    """

    __slots__ = ("events", "feed", "first", "last", "left", "made", "quota", "seqs", "text")

    def __init__(self, events: list[bytes], seqs: list[int | None]) -> None:
        self.events, self.seqs = events, seqs
        self.text = _text_of(events)
        numbered = [seq for seq in seqs if seq is not None]
        self.first = numbered[0] if numbered else None  # the messages' seqs, in order
        self.last = numbered[-1] if numbered else None
        self.feed: _Feed | None = None
        self.left = self.quota = 0
        self.made = 0.0

    def track(self, feed: _Feed, members: int, now: float) -> None:
        """Count the sends of the ``members`` connections it is handed to, from ``now`` (the loop's clock)."""
        self.feed, self.left, self.quota, self.made = feed, members, members // 10, now

    def sent(self) -> None:
        """One connection has sent it (or what it held, inside a batch of its own)."""
        if self.feed is None:
            return
        self.left -= 1
        if self.left == self.quota:
            self.feed.took(asyncio.get_running_loop().time() - self.made)
            self.feed = None


def _text_of(events: list[bytes]) -> str:
    """One event as itself, several as a ``batch`` frame."""
    if len(events) == 1:
        return events[0].decode()
    return (b'{"type":"batch","events":[' + b",".join(events) + b"]}").decode()


def _seq_of(raw: bytes) -> int | None:
    """A message event's seq (None for the room's other events: presence, typing, receipts, edits)."""
    return int(orjson.loads(raw)["message"]["seq"]) if raw.startswith(_MESSAGE) else None


class _Feed:
    """One room's live events in this replica, made into frames once and handed to its connections here.

    It is the fan-out's sink for the room: called with each event as Redis delivered it, in order.
    A plain member gets each event at once as a frame of its own; members that read batches share
    one frame per linger in a busy room (see the module's docstring).
    """

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.plain: set[_Connection] = set()
        self.batched: set[_Connection] = set()
        self._pending: list[bytes] = []
        self._seqs: list[int | None] = []
        self._due: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # when the last event came (the loop's clock)
        self._handout_s: float | None = None  # moving average of how long a frame took to reach 9 in 10 members

    def linger(self) -> float:
        """How long an event may wait for the ones behind it now, seconds (see ``chat_batch_linger_factor``).

        Until the feed has handed out a frame it is the longest linger; then the factor times the moving
        average of how long its frames took to reach its members, within the settings' bounds.
        """
        settings = settings_of(ChatSettings)
        most = settings.chat_batch_linger_ms / 1000
        if self._handout_s is None:
            return most
        least = min(settings.chat_batch_linger_min_ms / 1000, most)
        return min(most, max(least, settings.chat_batch_linger_factor * self._handout_s))

    def took(self, seconds: float) -> None:
        """A frame of this feed reached nine in ten of its batch members ``seconds`` after it was made."""
        average = self._handout_s
        self._handout_s = seconds if average is None else average + (seconds - average) / 5

    def __call__(self, item: object) -> None:
        if item is LOST:
            self._flush()
            for conn in self.plain | self.batched:
                conn.push(LOST, 0)
            return
        assert isinstance(item, bytes)
        seq = _seq_of(item)
        if self.plain:
            single = _Frame([item], [seq])
            for conn in self.plain:
                conn.push(single, 1)
        if not self.batched:
            return
        linger = self.linger()
        loop = asyncio.get_running_loop()
        now = loop.time()
        quiet = now - self._last >= linger
        self._last = now
        self._pending.append(item)
        self._seqs.append(seq)
        if (self._due is None and (quiet or not linger)) or len(self._pending) >= BATCH_MOST:
            self._flush()
        elif self._due is None:
            self._due = loop.call_later(linger, self._flush)

    def _flush(self) -> None:
        self._stop()
        if not self._pending:
            return
        frame = _Frame(self._pending, self._seqs)
        self._pending, self._seqs = [], []
        frame.track(self, len(self.batched), asyncio.get_running_loop().time())
        for conn in self.batched:
            conn.push(frame, len(frame.events))

    def _stop(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    def join(self, conn: _Connection) -> None:
        (self.batched if conn.batch else self.plain).add(conn)

    def leave(self, conn: _Connection) -> bool:
        """Take ``conn`` off; True when the feed has no connection left (its timer is then stopped)."""
        (self.batched if conn.batch else self.plain).discard(conn)
        if self.plain or self.batched:
            return False
        self._stop()
        return True


_feeds: dict[str, _Feed] = {}


@contextlib.asynccontextmanager
async def _joined(conn: _Connection) -> AsyncIterator[None]:
    """``conn`` receives its room's live events from when this yields (the subscription is confirmed)."""
    feed = _feeds.get(conn.room_id)
    if feed is None:
        feed = _feeds[conn.room_id] = _Feed(conn.room_id)
    feed.join(conn)
    try:
        async with _rooms.attach(conn.room_id, feed):
            yield
    finally:
        if feed.leave(conn) and _feeds.get(conn.room_id) is feed:
            del _feeds[conn.room_id]


class _Connection:
    """One member's live connection to one room."""

    def __init__(self, websocket: WebSocket, room_id: str, user_id: str, *, batch: bool = False) -> None:
        self.ws, self.room_id, self.user_id, self.batch = websocket, room_id, user_id, batch
        self._send_lock = asyncio.Lock()
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self._queued = 0  # events in the inbox
        self._overflowed = False

    def push(self, frame: object, events: int) -> None:
        """Queue a frame of ``events`` events (or LOST) for this connection; past the backlog, OVERFLOW instead."""
        if self._overflowed:
            return
        if self._queued + events > settings_of(ChatSettings).chat_client_backlog:
            self._overflowed = True
            frame = OVERFLOW
        self._queued += events
        self.inbox.put_nowait(frame)

    async def send(self, event: dict[str, Any] | str) -> None:
        async with self._send_lock:
            await self.ws.send_text(event if isinstance(event, str) else orjson.dumps(event).decode())

    async def forward(self, after: int | None) -> None:
        """Replay what was missed after ``after``, then the live events, each message once and in seq order."""
        if after is None:
            delivered = (await service.room_state(room_id=self.room_id, user_id=self.user_id))["seq"]
        else:
            delivered = after
            async for message in service.missed(room_id=self.room_id, after=after):
                await self.send({"type": "message", "message": message})
                delivered = message["seq"]
        await self.send({"type": "ready", "seq": delivered})
        await self.live(delivered)

    async def live(self, delivered: int) -> None:
        """Forward the inbox's frames, skipping messages up to ``delivered`` (replayed already).

        A frame whose messages all come after ``delivered`` goes out as it was made for the room. With
        ``batch``, frames that queued while the connection was sending go out together as one batch
        (at most :data:`BATCH_MOST` events a frame); without it, every event is a frame of its own.
        """
        while True:
            frames = [await self.inbox.get()]
            while self.batch and not self.inbox.empty():
                frames.append(self.inbox.get_nowait())
            ended: str | None = None
            events: list[bytes] = []
            taken: list[_Frame] = []  # frames whose events go out in batches made here
            for frame in frames:
                if not isinstance(frame, _Frame):
                    ended = ("the room's feed was interrupted; resume" if frame is LOST
                             else "too far behind; resume from your last sequence number")
                    break
                self._queued -= len(frame.events)
                if len(frames) == 1 and (frame.first is None or frame.first > delivered):
                    delivered = frame.last if frame.last is not None else delivered
                    await self.send(frame.text)  # the room's frame as it was made: the usual case
                    frame.sent()
                    break
                for raw, seq in zip(frame.events, frame.seqs, strict=True):
                    if seq is not None:
                        if seq <= delivered:
                            continue
                        delivered = seq
                    events.append(raw)
                taken.append(frame)
            step = BATCH_MOST if self.batch else 1
            for at in range(0, len(events), step):
                await self.send(_text_of(events[at:at + step]))
            for frame in taken:
                frame.sent()
            if ended is not None:
                raise ServiceUnavailable(ended)

    async def receive(self) -> None:
        """The member's sends, receipts and typing, one at a time: their order is the order of their seqs."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                body = json.loads(message.get("text") or "")
                kind = body["type"]
            except (ValueError, KeyError, TypeError):
                await self.send({"type": "error", "detail": 'messages are JSON objects with a "type"'})
                continue
            if kind == "send":
                await self._send_message(body)
            elif kind == "read" and isinstance(body.get("seq"), int):
                await service.read_up_to(room_id=self.room_id, user_id=self.user_id, seq=body["seq"])
            elif kind == "typing":
                await publish(self.room_id, {"type": "typing", "user_id": self.user_id})
            else:
                await self.send({"type": "error", "detail": f"unknown message type {kind!r}"})

    async def _send_message(self, body: dict[str, Any]) -> None:
        client_id = body.get("client_id")
        try:
            if not isinstance(client_id, str) or not isinstance(body.get("text"), str):
                raise ValidationFailed.for_field("client_id", "client_id and text must be strings")
            result = await service.post(room_id=self.room_id, sender=self.user_id, client_id=client_id,
                                        text=body["text"])
        except NexusError as err:
            if err.status >= 500 or err.status == 404:
                raise  # the room is gone or unreachable: the connection ends with its close code
            await self.send({"type": "rejected", "client_id": client_id, "status": err.status,
                             "detail": err.detail})
            return
        await self.send({"type": "ack", "client_id": client_id, "seq": result["message"]["seq"],
                         "duplicate": result["duplicate"]})


@router.websocket("/rooms/{room_id}/live", name="room_live")
async def room_live(
    websocket: WebSocket,
    room_id: str = Path(pattern=ROOM_ID_PATTERN),
    after: int | None = Query(None, ge=0, le=2**62, description="The last sequence number seen: replay from it."),
    batch: bool = Query(False, description="Send the events that queued up while the connection was busy as one "
                                           '`{"type": "batch", "events": [...]}` frame; while the room is busy, '
                                           "an event waits at most the linger (20 to 80 ms unless configured) for the "
                                           "ones behind it, which share its frame."),
    principal: Principal = ws_authorize(SCOPES.write),
) -> None:
    """A member's live connection to a room (WebSocket): send, receive in order, resume."""
    await service.room_state(room_id=room_id, user_id=principal.subject)  # 4404 for a non-member
    conn = _Connection(websocket, room_id, principal.subject, batch=batch)
    async with _joined(conn):
        reader = asyncio.create_task(conn.receive(), name="chat-receive")
        writer = asyncio.create_task(conn.forward(after), name="chat-forward")
        await publish(room_id, {"type": "presence", "user_id": principal.subject, "online": True})
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            results = await asyncio.gather(reader, writer, return_exceptions=True)
            with contextlib.suppress(Exception):
                await publish(room_id, {"type": "presence", "user_id": principal.subject, "online": False})
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, (WebSocketDisconnect, asyncio.CancelledError)):
            raise result
