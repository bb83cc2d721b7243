"""backend-api: the platform notice as a live stream, and the one writer of the notice that feeds it.

``GET /notice`` answers once; ``/notice/live`` (WebSocket, ``platform:gateway:read``) sends
the current notice on connect, then the notice after every change::

    {"type": "notice", "notice": {"message": ..., "severity": ..., "until": ..., "set_by": ..., "set_at": ...}}
    {"type": "notice", "notice": null}            # cleared, or its ``until`` passed

Every change goes through :func:`publish_notice`, which stores the notice and publishes it
on a Redis channel in one transaction, so a stream never misses a change that was stored.
Each replica holds one subscription to that channel, shared by all of its open streams:
Redis connections follow the number of replicas, not of clients (a subscription holds
a connection of the process's bounded pool for as long as it lasts).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from fastapi import APIRouter, WebSocket

from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge.security import Principal
from nexus_ray.edge.websocket import send_until_closed, ws_authorize
from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.stores.cache import redis_client
from nexus_ray.stores.fanout import LOST, Fanout

log = logging.getLogger(__name__)
router = APIRouter()
SCOPES = scopes_of("backend-api")

NOTICE_KEY = "nexus:platform:notice"
CHANNEL = "nexus:platform:notice:changes"


async def publish_notice(notice_json: str | None, *, ttl_s: int | None = None) -> None:
    """Store the notice (a NoticeRead as JSON; None clears it) and tell every live stream, in one transaction."""
    async with redis_client().pipeline(transaction=True) as pipe:
        if notice_json is None:
            pipe.delete(NOTICE_KEY)
        else:
            pipe.set(NOTICE_KEY, notice_json, ex=ttl_s)
        pipe.publish(CHANNEL, notice_json or "")
        await pipe.execute()


async def current_notice() -> dict | None:
    """The stored notice, or None."""
    raw = await redis_client().get(NOTICE_KEY)
    return json.loads(raw) if raw else None


# Each stream keeps only the newest notice: a message carries the whole notice, so a slow
# client skips intermediate ones instead of buffering them.
_changes = Fanout(CHANNEL, name="notice", latest_only=True)


def _expires_in(notice: dict | None) -> float | None:
    """Seconds until the notice's ``until`` passes (0 if it has), None if it has none."""
    if not notice or not notice.get("until"):
        return None
    until = datetime.fromisoformat(notice["until"])
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    return max(0.0, (until - datetime.now(UTC)).total_seconds())


def _unexpired(notice: dict | None) -> dict | None:
    # Redis expires the key at ``until`` (rounded down) without a message: a stream keeps time itself.
    return None if _expires_in(notice) == 0 else notice


async def _notices() -> AsyncIterator[dict]:
    async with _changes.listen() as changes:
        notice = _unexpired(await current_notice())
        while True:
            yield {"type": "notice", "notice": notice}
            try:
                raw = await asyncio.wait_for(changes.get(), _expires_in(notice))
            except TimeoutError:
                notice = _unexpired(await current_notice())  # re-read: it may have been replaced meanwhile
                continue
            if raw is LOST:
                raise ServiceUnavailable("the notice feed was interrupted; reconnect")
            notice = _unexpired(json.loads(raw) if isinstance(raw, (bytes, str)) and raw else None)


@router.websocket("/notice/live", name="notice_live")
async def notice_live(websocket: WebSocket, principal: Principal = ws_authorize(SCOPES.read)) -> None:
    """The current platform notice, then the notice after each change (WebSocket)."""
    await send_until_closed(websocket, _notices())
