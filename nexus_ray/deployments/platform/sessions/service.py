"""session-mgr's logic: a user's sessions, held by the user's :class:`~nexus_ray.actors.session.UserSessions` entity.

Entities live in a bounded set of shard actors (``session_shards``), never one process
per user; see :mod:`nexus_ray.actors.shards` for why and :mod:`nexus_ray.actors.session`
for the timeouts and why a killed shard loses nothing. When user-auth erases an account
(event ``auth.user.erased``), :func:`forget_erased_users` ends its sessions and deletes
their records.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import ray

from nexus_ray.actors.client import EntityClient
from nexus_ray.actors.session import UserSessions
from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import NotFound, ValidationFailed
from nexus_ray.stores.events import RELAXED_FETCH_WAIT_MS, Event, EventConsumer

from .models import SessionRead
from .settings import SessionSettings

log = logging.getLogger(__name__)

ERASED_TOPIC = "auth.user.erased"  # emitted by user-auth (nexus_ray.deployments.auth.users.service)

_client: EntityClient | None = None


def sessions_client() -> EntityClient:
    """The client of the users' session entities (shard count and timeout from the settings)."""
    global _client
    s = settings_of(SessionSettings)
    if _client is None or _client.shards != s.session_shards:
        _client = EntityClient(
            UserSessions,
            shards=s.session_shards,
            timeout_s=get_settings().actor_call_timeout_s,
            max_resident=s.session_shard_max_resident,
        )
    return _client


def _read(session: dict[str, Any]) -> SessionRead:
    out = dict(session)
    for field in ("created_at", "last_used_at", "idle_expires_at", "expires_at"):
        out[field] = datetime.fromtimestamp(session[field], UTC)
    return SessionRead.model_validate(out)


_REASONS = {"idle_timeout": "expired (idle timeout)", "absolute_timeout": "expired (absolute timeout)",
            "unknown": "unknown or revoked"}


def _invalid(result: dict[str, Any]) -> NotFound:
    reason = result["reason"]
    return NotFound(f"session {_REASONS.get(reason, reason)}", extra={"valid": False, "reason": reason})


async def create_session(
    *, user_id: str, device: str, ip: str, user_agent: str, idle_timeout_s: int | None,
    absolute_timeout_s: int | None,
) -> SessionRead:
    """Open a session for ``user_id``; timeouts default to (and may not exceed) the settings."""
    s = settings_of(SessionSettings)
    for field, value, cap in (("idle_timeout_s", idle_timeout_s, s.session_idle_timeout_s),
                              ("absolute_timeout_s", absolute_timeout_s, s.session_absolute_timeout_s)):
        if value is not None and value > cap:
            raise ValidationFailed.for_field(field, f"must be at most {cap}", "less_than_equal")
    now = datetime.now(UTC).timestamp()
    session = {
        "session_id": uuid.uuid4().hex,
        "user_id": user_id,
        "device": device,
        "ip": ip,
        "user_agent": user_agent,
        "created_at": now,
        "last_used_at": now,
        "idle_timeout_s": idle_timeout_s or s.session_idle_timeout_s,
        "absolute_timeout_s": absolute_timeout_s or s.session_absolute_timeout_s,
    }
    return _read(await sessions_client().call(user_id, "create", session, s.session_max_per_user))


async def check_session(*, user_id: str, session_id: str, touch: bool) -> SessionRead:
    """The valid session (marked used now when ``touch``); NotFound with the reason otherwise."""
    result = await sessions_client().call(user_id, "check", session_id, touch)
    if not result["valid"]:
        raise _invalid(result)
    return _read(result["session"])


async def list_sessions(*, user_id: str, page: PageRequest) -> Page[SessionRead]:
    """The user's valid sessions, most recently used first, one page of them."""
    sessions = await sessions_client().call(user_id, "list_sessions")
    if page.after is not None:
        last_used, session_id = page.after_value(0), page.after_value(1)
        if not isinstance(last_used, int | float) or not isinstance(session_id, str):
            raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
        after = (-float(last_used), session_id)
        sessions = [s for s in sessions if (-s["last_used_at"], s["session_id"]) > after]
    return page.of(sessions[: page.fetch_limit], key=lambda s: (s["last_used_at"], s["session_id"]), item=_read)


async def revoke_session(*, user_id: str, session_id: str) -> bool:
    """End one session of ``user_id``; False if it did not exist (revoking twice is fine)."""
    return await sessions_client().call(user_id, "revoke", session_id)


async def revoke_all_sessions(*, user_id: str, keep: str | None = None) -> int:
    """End every session of ``user_id`` but ``keep``; returns how many ended."""
    return await sessions_client().call(user_id, "revoke_all", keep)


async def forget_user(*, user_id: str) -> None:
    """End every session of ``user_id`` and delete their records (the account was erased)."""
    await sessions_client().forget(user_id)


# -- reacting to erasure -------------------------------------------------------------------------


async def _on_erased(_conn: asyncpg.Connection, event: Event) -> None:
    await forget_user(user_id=str(event.data["user_id"]))
    log.info("sessions of an erased account forgotten")


async def forget_erased_users() -> None:
    """Background: consume ``auth.user.erased`` and forget those users' sessions (at least once, idempotent)."""
    if not ray.is_initialized():
        log.info("not connected to Ray: erased accounts' sessions are forgotten once this process connects")
    while True:
        # A process not (yet) connected to Ray (the tests' in-process apps, started before or without a cluster)
        # has no actors to reach. It waits to connect. Consuming now would commit past events it cannot act on;
        # giving up for good left a process that connected later forgetting no one.
        if ray.is_initialized():
            break
        await asyncio.sleep(1)
    await EventConsumer("session-mgr", [ERASED_TOPIC], _on_erased, session_timeout_ms=6000,
                        fetch_max_wait_ms=RELAXED_FETCH_WAIT_MS).run_until_stopped()
