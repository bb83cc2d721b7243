"""The guard of WebSocket routes: the same credentials, scopes and rate limits as HTTP routes.

Every WebSocket route declares exactly one of (:func:`~nexus_ray.edge.security.check_route_security`
refuses an app with a WebSocket route that declares neither, or that declares an HTTP guard)::

    @router.websocket("/things/live")
    async def live(websocket: WebSocket, principal: Principal = ws_authorize("ns:svc:read")):
        ...                                  # the connection is already accepted: send and receive

    @router.websocket("/echo", dependencies=[ws_public()])

The guard accepts the connection itself (the endpoint must not call ``accept``), because
a close code only reaches a browser on an accepted connection: refused before the
handshake, the client sees a bare HTTP 403 and close code 1006, with no reason.

**Credentials**, either of:

* the subprotocol header: the client offers ``nexus.bearer`` followed by the access token
  (``new WebSocket(url, ["nexus.bearer", token])``), or ``nexus.api-key`` followed by an
  API key. The server selects only the marker (``nexus.bearer``); the credential is never
  echoed. Browsers cannot set an ``Authorization`` header on a WebSocket, hence this; like
  that header, it must not be logged by a proxy (the platform's HAProxy logs no headers).
* the first message: a client that offers no marker is accepted and must send, within
  ``ws_auth_timeout_s``, the text message ``{"type": "auth", "token": "..."}`` (or
  ``"api_key"``) before anything else.

**Close codes** of a refused or ended connection -- ``4000 + the HTTP status`` of the same
refusal on an HTTP route, so a client handles both alike; the reason is the problem's
``detail`` (at most 123 bytes, never the credential):

====== ==========================================================================
4401   no credential, an invalid, expired or revoked one
4403   the credential lacks a required scope
4408   no auth message within ``ws_auth_timeout_s``
4429   too many connection attempts (per address, per principal) or too many
       messages on this connection (``ws_messages_per_minute``, the edge middleware)
4xxx   any other platform error the endpoint raises (4404, 4409, 4422...)
1008   policy violation: the first message is not an auth message
1011   an unexpected error in the endpoint (logged with the connection's request id)
1013   a platform dependency is unavailable (503): try again later
====== ==========================================================================

**While open**, the credential is checked again every ``ws_recheck_s`` as on a new
connection; a refusal (expired, revoked, scope taken away) ends the connection with its
close code.

**Rate limits**: every connection attempt counts against the client address's per-minute
limit (the same budget as its HTTP requests) before anything else, so failed
authentications count too; an authenticated one also counts against the principal's,
in the Redis call that checks the token's revocation list.

A server-to-client stream (notices, positions, prices) is one line:
``await send_until_closed(websocket, updates)`` with ``updates`` an async iterator.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, WebSocket
from fastapi.security import HTTPAuthorizationCredentials
from starlette.exceptions import WebSocketException
from starlette.websockets import WebSocketDisconnect, WebSocketState

from nexus_ray.config import get_settings
from nexus_ray.edge import ratelimit
from nexus_ray.edge.middleware import EDGE_CLOSE
from nexus_ray.edge.security import Principal, authenticate, client_address
from nexus_ray.exceptions import Forbidden, NexusError, Unauthorized

log = logging.getLogger(__name__)

#: Subprotocol markers: the value offered right after one of them is the credential.
BEARER_PROTOCOL = "nexus.bearer"
API_KEY_PROTOCOL = "nexus.api-key"

CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_AUTH_TIMEOUT = 4408
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code
_MAX_CREDENTIAL_CHARS = 8192


def close_code(err: NexusError) -> int:
    """The close code of a platform error: 4000 + its HTTP status; 1013 for 503, 1011 for other 5xx."""
    if 400 <= err.status < 500:
        return 4000 + err.status
    return CLOSE_TRY_AGAIN if err.status == 503 else CLOSE_INTERNAL


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry, on a character boundary."""
    raw = text.encode()
    if len(raw) <= _MAX_REASON_BYTES:
        return text
    return raw[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def _refusal(err: NexusError) -> WebSocketException:
    return WebSocketException(close_code(err), close_reason(err.detail or err.title))


def _offered_credential(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(marker, credential) from the offered subprotocols; (None, None) when no marker was offered."""
    offered = list(websocket.scope.get("subprotocols") or [])
    for marker in (BEARER_PROTOCOL, API_KEY_PROTOCOL):
        if marker in offered:
            i = offered.index(marker)
            return marker, offered[i + 1] if i + 1 < len(offered) else None
    return None, None


def _auth_message(text: str | None) -> tuple[str, str]:
    """(marker, credential) of a first message ``{"type": "auth", "token"|"api_key": ...}``; ValueError if not one."""
    try:
        body = json.loads(text) if text is not None else None
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("type") != "auth":
        raise ValueError('the first message must be {"type": "auth", "token": "..."}')
    for field, marker in (("token", BEARER_PROTOCOL), ("api_key", API_KEY_PROTOCOL)):
        value = body.get(field)
        if value is not None:
            if not isinstance(value, str) or not value or len(value) > _MAX_CREDENTIAL_CHARS:
                raise ValueError(f"auth message: {field} must be a non-empty string")
            return marker, value
    raise ValueError("auth message: token or api_key is required")


async def _principal_of(marker: str, credential: str | None) -> Principal:
    if not credential:
        raise Unauthorized(f"{marker} was offered without a credential after it")
    if marker == BEARER_PROTOCOL:
        return await authenticate(HTTPAuthorizationCredentials(scheme="Bearer", credentials=credential), None)
    return await authenticate(None, credential)


async def _read_auth_message(websocket: WebSocket) -> tuple[str, str]:
    timeout = get_settings().ws_auth_timeout_s
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout)
    except TimeoutError:
        raise WebSocketException(CLOSE_AUTH_TIMEOUT, f"no auth message within {timeout:g} s") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1005), message.get("reason"))
    try:
        return _auth_message(message.get("text"))
    except ValueError as exc:
        raise WebSocketException(CLOSE_POLICY, close_reason(str(exc))) from None


async def _count_attempt(websocket: WebSocket, marker: str | None) -> None:
    try:
        await ratelimit.hit([("address", client_address(websocket), get_settings().rate_limit_per_address)])
    except NexusError as err:
        await websocket.accept(subprotocol=marker)
        raise _refusal(err) from None


async def _check(marker: str, credential: str | None, scopes: tuple[str, ...], *, count: bool) -> Principal:
    """The principal of a credential holding every scope; the NexusError of its refusal otherwise.

    ``count``: also count it against the principal's rate limit (a new connection, not a re-check).
    """
    principal = await _principal_of(marker, credential)
    limits = [("principal", principal.subject, get_settings().rate_limit_per_principal)] if count else []
    if limits or principal.revocation_keys:
        await ratelimit.admit(limits, revocation_keys=list(principal.revocation_keys), issued_at=principal.issued_at)
    missing = [s for s in scopes if not principal.can(s)]
    if missing:
        raise Forbidden(f"missing scope: {' '.join(missing)}")
    return principal


async def _admit(websocket: WebSocket, scopes: tuple[str, ...]) -> tuple[Principal, str, str]:
    """(principal, marker, credential) of an accepted connection; WebSocketException on refusal."""
    marker, credential = _offered_credential(websocket)
    await _count_attempt(websocket, marker)
    # Accepted before authentication when the credential comes in the first message (it
    # cannot be read otherwise); after it when it came in the handshake, so a refused
    # subprotocol client still gets its close code (4401) instead of a bare 403.
    if marker is None:
        await websocket.accept()
        marker, credential = await _read_auth_message(websocket)
    address = client_address(websocket)
    try:
        ratelimit.refuse_failing(address)
        try:
            principal = await _check(marker, credential, scopes, count=True)
        except Unauthorized:
            # As on HTTP: refused credentials spend the address's failed-authentication budget.
            await ratelimit.failed(address, get_settings().rate_limit_auth_failures_per_address)
            raise
    except NexusError as err:
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept(subprotocol=marker)
        raise _refusal(err) from None
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept(subprotocol=marker)
    websocket.state.principal = principal
    return principal, marker, credential or ""  # a marker without a credential was refused above


async def _end(websocket: WebSocket, code: int, reason: str) -> None:
    """Close the connection from outside its endpoint: through the edge middleware when it is there.

    The middleware then refuses the endpoint's further sends as a server does once the
    peer is gone (WebSocketDisconnect in the endpoint), and its receive sees the end.
    """
    edge_close = websocket.scope.get(EDGE_CLOSE)
    if edge_close is not None:
        await edge_close(code, reason)
    else:
        await websocket.close(code, reason)


async def _recheck(websocket: WebSocket, marker: str, credential: str, scopes: tuple[str, ...]) -> None:
    """Check an open connection's credential again every ``ws_recheck_s``, as a new one; a refusal ends it.

    So a connection ends within that time of its token expiring or being revoked, its API
    key revoked, its account disabled, or its scopes taken away.
    """
    while True:
        await asyncio.sleep(get_settings().ws_recheck_s)
        try:
            await _check(marker, credential, scopes, count=False)
        except NexusError as err:
            await _end(websocket, close_code(err), close_reason(err.detail or err.title))
            return
        except Exception as exc:  # the stores cannot answer: refused, as a new request would be
            log.warning("WebSocket credential re-check failed: %s", type(exc).__name__)
            await _end(websocket, CLOSE_TRY_AGAIN, "credential check unavailable; reconnect")
            return


def ws_authorize(*scopes: str) -> Any:
    """Dependency of a WebSocket route: the authenticated principal holding every scope; the connection accepted.

    Use it as a parameter (``principal: Principal = ws_authorize("ns:svc:read")``) or in
    ``dependencies=[...]``. See the module documentation for credentials and close codes.
    """

    async def ws_guard(websocket: WebSocket) -> AsyncIterator[Principal]:
        principal, marker, credential = await _admit(websocket, scopes)
        watchdog = asyncio.create_task(_recheck(websocket, marker, credential, scopes), name="ws-recheck")
        # A platform error raised by the endpoint ends the connection with its close code (an
        # HTTP route would answer it as problem+json); anything else is the middleware's 1011.
        try:
            yield principal
        except NexusError as err:
            raise _refusal(err) from err
        finally:
            watchdog.cancel()

    ws_guard.nexus_scopes = scopes  # type: ignore[attr-defined]
    ws_guard.nexus_websocket = True  # type: ignore[attr-defined]
    return Depends(ws_guard)


def ws_public(*, rate_limited: bool = True) -> Any:
    """Dependency marking a WebSocket route open to anyone; accepts the connection, rate-limited per address."""

    async def ws_open(websocket: WebSocket) -> AsyncIterator[None]:
        if rate_limited:
            await _count_attempt(websocket, None)
        await websocket.accept()
        try:
            yield
        except NexusError as err:  # as in ws_authorize
            raise _refusal(err) from err

    ws_open.nexus_public = True  # type: ignore[attr-defined]
    ws_open.nexus_websocket = True  # type: ignore[attr-defined]
    return Depends(ws_open)


async def send_until_closed(websocket: WebSocket, updates: AsyncIterator[Any]) -> None:
    """Send each item of ``updates`` as JSON until they end or the client leaves; for server-to-client streams.

    The client's messages are read (so a departure is noticed at once, not at the next
    update) and dropped; they still count against the per-connection message limit.
    When ``updates`` ends, the connection is closed normally (1000).
    """

    async def drain() -> None:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass

    async def forward() -> None:
        async for item in updates:
            await websocket.send_json(item)

    reader = asyncio.create_task(drain(), name="ws-drain")
    writer = asyncio.create_task(forward(), name="ws-forward")
    try:
        await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, writer):
            task.cancel()
        results = await asyncio.gather(reader, writer, return_exceptions=True)
        # Ended now, not whenever the collector finds it: it may hold a subscription.
        aclose = getattr(updates, "aclose", None)
        if aclose is not None:
            await aclose()
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, (WebSocketDisconnect, asyncio.CancelledError)):
            raise result
    if writer.done() and not writer.cancelled() and websocket.application_state == WebSocketState.CONNECTED:
        await websocket.close(1000)
