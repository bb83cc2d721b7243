"""The driver app's socket: offers pushed to it, locations and answers sent over it.

``/drivers/me/live`` (WebSocket, the service's write scope, the caller must be a registered
driver). Server to client::

    {"type": "offer", "offer": {...OfferRead}}            # on connect: every pending offer; then each new one
    {"type": "offer.withdrawn", "offer_id": "..."}
    {"type": "offer.answered", "offer": {...}}            # the reply to accept / reject
    {"type": "location.ack", "applied": 1}
    {"type": "pong"}
    {"type": "error", "status": 409, "detail": "...", "ref": "<offer id or message type>"}

Client to server::

    {"type": "location", "lat": 52.5, "lon": 13.4, "ts": "2026-11-30T15:00:00Z"}   # ts optional
    {"type": "accept", "offer_id": "..."}
    {"type": "reject", "offer_id": "...", "reason": "too far"}
    {"type": "ping"}

A refused message (bad shape, an offer already answered) is answered with an ``error``
message and the socket stays open; the edge's guard still closes it for credentials
(4401/4403) and its per-connection message limit (4429).

Fan-out: each replica holds ONE pattern subscription to ``nexus:drivers:push:*`` (a Redis
connection per replica, not per socket, as the platform notice stream does) and hands each
message to the local sockets of the driver it names; a driver connected to another replica
gets it there. Offers are few (one per dispatch decision), so every replica reading every
push costs little; the pending offers sent on connect cover any push a socket missed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from uuid import UUID

import orjson
from fastapi import WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import NexusError, ServiceUnavailable
from nexus_ray.stores.fanout import LOST, Fanout

from . import service
from .models import AnswerMessage, ClientMessage, DriverRead, Location, LocationMessage
from .settings import DriverSettings

log = logging.getLogger(__name__)

_messages: TypeAdapter[Any] = TypeAdapter(ClientMessage)
_pushes = Fanout(f"{service.PUSH_PREFIX}*", name="driver push")


def _error(err: NexusError, ref: str | None) -> dict[str, Any]:
    return {"type": "error", "status": err.status, "title": err.title, "detail": err.detail, "ref": ref,
            **({"extra": err.extra} if err.extra else {})}


async def _handle(driver: DriverRead, text: str) -> dict[str, Any]:
    """The reply to one client message."""
    try:
        message = _messages.validate_json(text)
    except ValidationError as exc:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False, include_input=False)]
        return {"type": "error", "status": 422, "title": "Validation failed", "detail": "not a message of this socket",
                "ref": None, "errors": errors}
    try:
        if isinstance(message, LocationMessage):
            applied = await service.report_locations(
                driver=driver, points=[Location(lat=message.lat, lon=message.lon, ts=message.ts)])
            return {"type": "location.ack", "applied": applied}
        if isinstance(message, AnswerMessage):
            offer = await service.answer_offer(
                driver_id=driver.id, offer_id=message.offer_id, accepted=message.type == "accept",
                reason=message.reason, caller=driver.user_id, privileged=False)
            return {"type": "offer.answered", "offer": offer.model_dump(mode="json")}
        return {"type": "pong"}
    except NexusError as err:
        return _error(err, getattr(message, "offer_id", None) or message.type)


async def serve_driver(websocket: WebSocket, user_id: str) -> None:
    """Run one driver's socket until either side ends it."""
    driver = await service.driver_of_user(user_id=user_id)
    connection = uuid.uuid4().hex
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    ttl = settings_of(DriverSettings).drivers_presence_ttl_s

    async def read() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None and message.get("bytes") is not None:
                text = message["bytes"].decode(errors="replace")
            outbox.put_nowait(await _handle(driver, text or ""))

    async def write(pushes: asyncio.Queue[Any], sent: set[str]) -> None:
        async def forward_pushes() -> None:
            while True:
                push = await pushes.get()
                outbox.put_nowait(push if push is LOST else orjson.loads(push))

        forwarder = asyncio.create_task(forward_pushes(), name="driver-push-forward")
        try:
            while True:
                item = await outbox.get()
                if item is LOST:
                    raise ServiceUnavailable("the driver push feed was interrupted; reconnect")
                if item.get("type") == "offer":
                    if item["offer"]["id"] in sent:
                        continue  # pushed and also read as pending at connect
                    sent.add(item["offer"]["id"])
                await websocket.send_json(item)
        finally:
            forwarder.cancel()

    async def keep_present() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            await service.mark_present(driver.id, connection)

    async with _pushes.listen(str(driver.id)) as pushes:
        for offer in reversed(await service.pending_offers(UUID(str(driver.id)))):
            outbox.put_nowait({"type": "offer", "offer": offer.model_dump(mode="json")})
        await service.mark_present(driver.id, connection)
        tasks = [asyncio.create_task(read(), name="driver-read"),
                 asyncio.create_task(write(pushes, set()), name="driver-write"),
                 asyncio.create_task(keep_present(), name="driver-presence")]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await service.mark_absent(driver.id, connection)
            except Exception as exc:  # it expires with its TTL anyway
                log.warning("driver presence not cleared: %s", type(exc).__name__)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, (WebSocketDisconnect, asyncio.CancelledError)):
            raise result
