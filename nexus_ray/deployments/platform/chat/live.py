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
hands every event to the connections it holds for that room: Redis connections follow
the number of replicas, not of clients or rooms. The price: each replica receives every
room's events, including those of rooms it holds no connection for; per-room
subscriptions are the next step when rooms x replicas makes that matter.

A connection that falls more than ``chat_client_backlog`` events behind is closed with
1013 (try again) rather than buffered without bound; it resumes from its last sequence number.

**Batches** (``?batch=true``, for clients that can read them). Each live event is a frame of
its own while the connection keeps up. When events have queued for it (the room is busier
than the connection's share of the replica can send one frame at a time), everything queued,
up to :data:`BATCH_MOST` events, goes out as one ``batch`` frame, in order: the frames per
second then fall as the load rises, instead of the backlog growing. And a frame follows the
one before it by at least ``chat_batch_linger_ms`` (100 ms unless configured): in a busy room
an event waits up to that long for the ones behind it, so a connection gets at most 10 frames
a second however fast the room talks, while an event after a quiet spell goes out at once.
(Every frame costs a system call in the replica, a pass through the proxy and a read in the
client, whatever it holds.) A client without ``batch`` gets one frame per event, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
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
from nexus_ray.stores.fanout import LOST, OVERFLOW, Fanout

from . import service
from .models import ROOM_ID_PATTERN
from .settings import ChatSettings

log = logging.getLogger(__name__)
router = APIRouter()
SCOPES = scopes_of("chat-service")

BATCH_MOST = 256
"""The most events in one ``batch`` frame."""

_MESSAGE = b'{"type":"message"'

_rooms = Fanout(CHANNEL_PATTERN, name="chat", backlog=lambda: settings_of(ChatSettings).chat_client_backlog)


class _Connection:
    """One member's live connection to one room."""

    def __init__(self, websocket: WebSocket, room_id: str, user_id: str) -> None:
        self.ws, self.room_id, self.user_id = websocket, room_id, user_id
        self._send_lock = asyncio.Lock()

    async def send(self, event: dict[str, Any] | bytes) -> None:
        async with self._send_lock:
            if isinstance(event, bytes):
                await self.ws.send_text(event.decode())
            else:
                await self.ws.send_text(orjson.dumps(event).decode())

    async def forward(self, queue: asyncio.Queue, after: int | None, *, batch: bool = False) -> None:
        """Replay what was missed after ``after``, then the live events, each message once and in seq order."""
        if after is None:
            delivered = (await service.room_state(room_id=self.room_id, user_id=self.user_id))["seq"]
        else:
            delivered = after
            async for message in service.missed(room_id=self.room_id, after=after):
                await self.send({"type": "message", "message": message})
                delivered = message["seq"]
        await self.send({"type": "ready", "seq": delivered})
        await self.live(queue, delivered, batch=batch)

    async def live(self, queue: asyncio.Queue, delivered: int, *, batch: bool) -> None:
        """Forward the queue's events, skipping messages up to ``delivered``.

        With ``batch``, whatever has queued (up to :data:`BATCH_MOST` events) goes out as one frame, and a
        frame follows the one before it by at least the linger (``chat_batch_linger_ms``): an event that
        comes sooner waits for the ones behind it, up to that long.
        """
        linger = settings_of(ChatSettings).chat_batch_linger_ms / 1000 if batch else 0.0
        clock = asyncio.get_running_loop().time
        next_frame = 0.0
        while True:
            items = [await queue.get()]
            if linger and (hold := next_frame - clock()) > 0:
                await asyncio.sleep(hold)  # pacing, not polling: the events behind this one join its frame
            while batch and len(items) < BATCH_MOST and not queue.empty():
                items.append(queue.get_nowait())
            frames: list[bytes] = []
            ended: str | None = None
            for raw in items:
                if raw is LOST or raw is OVERFLOW:
                    ended = ("the room's feed was interrupted; resume" if raw is LOST
                             else "too far behind; resume from your last sequence number")
                    break
                if raw.startswith(_MESSAGE):
                    seq = _seq_of(raw)
                    if seq <= delivered:
                        continue  # replayed already
                    delivered = seq
                frames.append(raw)
            next_frame = clock() + linger
            if len(frames) == 1:
                await self.send(frames[0])
            elif frames:
                await self.send(b'{"type":"batch","events":[' + b",".join(frames) + b"]}")
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


@functools.lru_cache(maxsize=4096)
def _seq_of(raw: bytes) -> int:
    """A message event's seq, parsed once per process: every connection of the room gets the same bytes."""
    return int(orjson.loads(raw)["message"]["seq"])


@router.websocket("/rooms/{room_id}/live", name="room_live")
async def room_live(
    websocket: WebSocket,
    room_id: str = Path(pattern=ROOM_ID_PATTERN),
    after: int | None = Query(None, ge=0, le=2**62, description="The last sequence number seen: replay from it."),
    batch: bool = Query(False, description="Send the events that queued up while the connection was busy as one "
                                           '`{"type": "batch", "events": [...]}` frame; while the room is busy, '
                                           "frames go out at most once per linger (100 ms unless configured)."),
    principal: Principal = ws_authorize(SCOPES.write),
) -> None:
    """A member's live connection to a room (WebSocket): send, receive in order, resume."""
    await service.room_state(room_id=room_id, user_id=principal.subject)  # 4404 for a non-member
    conn = _Connection(websocket, room_id, principal.subject)
    async with _rooms.listen(room_id) as queue:
        reader = asyncio.create_task(conn.receive(), name="chat-receive")
        writer = asyncio.create_task(conn.forward(queue, after, batch=batch), name="chat-forward")
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
