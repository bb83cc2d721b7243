"""session-mgr: a user's sessions (device, address, user agent, last use) held by that user's SessionActor.

Routes under ``/platform/v1/sessions/users/{user_id}/sessions`` admit the user itself
(``principal.subject == user_id``) or a holder of ``platform:sessions:admin``. Each call
goes to ``get_or_create(SessionActor, user_id)`` (see :mod:`nexus_ray.actors.session`
for the timeouts and why a killed actor loses nothing). When user-auth erases an account
(event ``auth.user.erased``), the background consumer here ends its sessions and deletes
their records.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Annotated, Any

import ray
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError

from nexus_ray.actors import NAMESPACE, actor_name, get_or_create
from nexus_ray.actors.session import SessionActor
from nexus_ray.config import get_settings
from nexus_ray.edge.security import Principal, authorize, client_address, ensure_self_or
from nexus_ray.exceptions import NotFound, ServiceUnavailable, ValidationFailed
from nexus_ray.stores.events import Event, EventConsumer

log = logging.getLogger(__name__)

READ = "platform:sessions:read"
WRITE = "platform:sessions:write"
ADMIN = "platform:sessions:admin"
ERASED_TOPIC = "auth.user.erased"  # emitted by user-auth (nexus_ray.deployments.auth.users.service)

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SESSION_ID_PATTERN = r"^[0-9a-f]{32}$"


# -- schemas ---------------------------------------------------------------------------------


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    device: str = Field(min_length=1, max_length=128, description="The client's name for the device.")
    ip: IPvAnyAddress | None = Field(None, description="The user's address; default: the caller's.")
    user_agent: str | None = Field(None, max_length=512, description="Default: the request's User-Agent.")
    idle_timeout_s: int | None = Field(None, ge=1, description="Default and maximum: session_idle_timeout_s.")
    absolute_timeout_s: int | None = Field(None, ge=1, description="Default and maximum: session_absolute_timeout_s.")


class SessionRead(BaseModel):
    session_id: str
    user_id: str
    device: str
    ip: str
    user_agent: str
    created_at: datetime
    last_used_at: datetime
    idle_timeout_s: int
    absolute_timeout_s: int
    idle_expires_at: datetime = Field(description="When the session ends unless used before.")
    expires_at: datetime = Field(description="When the session ends however it is used.")


class SessionList(BaseModel):
    user_id: str
    sessions: list[SessionRead]


class Revoked(BaseModel):
    revoked: int


# -- calls to the user's actor -----------------------------------------------------------------

_HANDLES_MAX = 4096
_handles: OrderedDict[str, ActorHandle] = OrderedDict()


def _handle(user_id: str) -> ActorHandle:
    handle = _handles.get(user_id)
    if handle is None:
        if not ray.is_initialized():  # never let a call start a private Ray cluster in this process
            raise ServiceUnavailable("session-mgr needs a Ray cluster and this process is not connected to one")
        handle = get_or_create(SessionActor, user_id)
        _handles[user_id] = handle
        if len(_handles) > _HANDLES_MAX:
            _handles.popitem(last=False)
    else:
        _handles.move_to_end(user_id)
    return handle


async def _call(user_id: str, method: str, *args: Any) -> Any:
    """``SessionActor(user_id).method(*args)``; a permanently dead actor is replaced once (state from Redis)."""
    timeout = get_settings().actor_call_timeout_s
    for attempt in (1, 2):
        handle = _handle(user_id)
        try:
            return await asyncio.wait_for(getattr(handle, method).remote(*args), timeout)
        except ActorDiedError:
            _handles.pop(user_id, None)
            if attempt == 2:
                raise ServiceUnavailable("the session store of this user is unavailable; retry") from None
        except (TimeoutError, GetTimeoutError, ActorUnavailableError):
            raise ServiceUnavailable("the session store of this user did not answer in time; retry") from None
    raise AssertionError("unreachable")


def _read(session: dict[str, Any]) -> dict[str, Any]:
    out = dict(session)
    for field in ("created_at", "last_used_at", "idle_expires_at", "expires_at"):
        out[field] = datetime.fromtimestamp(session[field], UTC)
    return out


_REASONS = {"idle_timeout": "expired (idle timeout)", "absolute_timeout": "expired (absolute timeout)",
            "unknown": "unknown or revoked"}


def _invalid(result: dict[str, Any]) -> NotFound:
    reason = result["reason"]
    return NotFound(f"session {_REASONS.get(reason, reason)}", extra={"valid": False, "reason": reason})


async def create_session(
    *, user_id: str, device: str, ip: str, user_agent: str, idle_timeout_s: int | None,
    absolute_timeout_s: int | None,
) -> dict[str, Any]:
    """Open a session for ``user_id``; timeouts default to (and may not exceed) the settings."""
    s = get_settings()
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
    return _read(await _call(user_id, "create", session, s.session_max_per_user))


async def check_session(*, user_id: str, session_id: str, touch: bool) -> dict[str, Any]:
    """The valid session (marked used now when ``touch``); NotFound with the reason otherwise."""
    result = await _call(user_id, "check", session_id, touch)
    if not result["valid"]:
        raise _invalid(result)
    return _read(result["session"])


async def list_sessions(*, user_id: str) -> list[dict[str, Any]]:
    """The user's valid sessions, most recently used first."""
    return [_read(s) for s in await _call(user_id, "list_sessions")]


async def revoke_session(*, user_id: str, session_id: str) -> bool:
    return await _call(user_id, "revoke", session_id)


async def revoke_all_sessions(*, user_id: str, keep: str | None = None) -> int:
    return await _call(user_id, "revoke_all", keep)


async def forget_user(*, user_id: str) -> int:
    """End every session of ``user_id`` and delete their records; stops the user's actor if it runs."""
    try:
        handle = ray.get_actor(actor_name(SessionActor, user_id), namespace=NAMESPACE)
    except ValueError:
        handle = None
    if handle is None:
        await SessionActor(user_id).erase()  # no actor running: its persisted state may still exist
        return 0
    count = await asyncio.wait_for(handle.forget.remote(), get_settings().actor_call_timeout_s)
    _handles.pop(user_id, None)
    ray.kill(handle, no_restart=True)
    return count


# -- reacting to erasure -------------------------------------------------------------------------


async def _on_erased(_conn, event: Event) -> None:
    user_id = str(event.data["user_id"])
    forgotten = await forget_user(user_id=user_id)
    log.info("sessions of an erased account forgotten", extra={"sessions": forgotten})


async def forget_erased_users() -> None:
    """Background: consume ``auth.user.erased`` and forget those users' sessions (at least once, idempotent)."""
    if not ray.is_initialized():
        # The in-process app of integration tests: no actors to reach, so nothing to consume for.
        log.info("not connected to Ray: erased accounts' sessions are not forgotten by this process")
        return
    while True:
        consumer = EventConsumer("session-mgr", [ERASED_TOPIC], _on_erased, session_timeout_ms=6000)
        try:
            await consumer.run()
            return
        except asyncio.CancelledError:
            consumer.stop()
            raise
        except Exception as exc:  # broker away or an actor call failed: the event comes again
            log.warning("erasure consumer interrupted: %s", type(exc).__name__)
            await asyncio.sleep(2)


background = [forget_erased_users]


# -- routes -----------------------------------------------------------------------------------------

router = APIRouter()
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN, description="The user (token subject) whose sessions these are.")]
SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN)]


@router.post("/users/{user_id}/sessions", status_code=201, response_model=SessionRead, summary="Open a session")
async def create(
    body: SessionCreate, request: Request, user_id: UserId, principal: Principal = authorize(WRITE)
) -> dict:
    ensure_self_or(principal, user_id, ADMIN)
    return await create_session(
        user_id=user_id,
        device=body.device,
        ip=str(body.ip) if body.ip is not None else client_address(request),
        user_agent=body.user_agent if body.user_agent is not None else request.headers.get("user-agent", "")[:512],
        idle_timeout_s=body.idle_timeout_s,
        absolute_timeout_s=body.absolute_timeout_s,
    )


@router.get("/users/{user_id}/sessions", response_model=SessionList, summary="A user's valid sessions")
async def list_(user_id: UserId, principal: Principal = authorize(READ)) -> dict:
    ensure_self_or(principal, user_id, ADMIN)
    return {"user_id": user_id, "sessions": await list_sessions(user_id=user_id)}


@router.get("/users/{user_id}/sessions/{session_id}", response_model=SessionRead,
            summary="A session, if still valid (404 with the reason otherwise)")
async def get(user_id: UserId, session_id: SessionId,
              principal: Principal = authorize(READ)) -> dict:
    ensure_self_or(principal, user_id, ADMIN)
    return await check_session(user_id=user_id, session_id=session_id, touch=False)


@router.post("/users/{user_id}/sessions/{session_id}/touch", response_model=SessionRead,
             summary="Mark a session used now (404 with the reason if it is no longer valid)")
async def touch(user_id: UserId, session_id: SessionId,
                principal: Principal = authorize(WRITE)) -> dict:
    ensure_self_or(principal, user_id, ADMIN)
    return await check_session(user_id=user_id, session_id=session_id, touch=True)


@router.delete("/users/{user_id}/sessions/{session_id}", status_code=204, summary="End a session (idempotent)")
async def revoke(user_id: UserId, session_id: SessionId,
                 principal: Principal = authorize(WRITE)) -> Response:
    ensure_self_or(principal, user_id, ADMIN)
    await revoke_session(user_id=user_id, session_id=session_id)
    return Response(status_code=204)


@router.delete("/users/{user_id}/sessions", response_model=Revoked, summary="End all of a user's sessions")
async def revoke_all(
    user_id: UserId,
    keep: str | None = Query(None, pattern=SESSION_ID_PATTERN, description="A session to keep (the current one)."),
    principal: Principal = authorize(WRITE),
) -> dict:
    ensure_self_or(principal, user_id, ADMIN)
    return {"revoked": await revoke_all_sessions(user_id=user_id, keep=keep)}
