"""The in-process edge: request ids, body limits, metrics and access logs (pure ASGI).

Pure ASGI rather than ``BaseHTTPMiddleware`` because it sits on every request of
every ingress: it adds no task or stream copy per request.

A WebSocket connection gets the same: a request id for its whole life (every log line
of its messages carries it; it is echoed in the handshake response), connection and
message metrics by route template and close code, and the per-connection message
limit. Authentication is the route's guard (:mod:`nexus_ray.edge.websocket`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from nexus_ray.config import get_settings
from nexus_ray.edge import metrics
from nexus_ray.edge.errors import problem_response
from nexus_ray.exceptions import PayloadTooLarge
from nexus_ray.logs import request_id_var

log = logging.getLogger("nexus_ray.access")

#: Scope key of a WebSocket connection's ``async close(code, reason)`` that ends it from outside
#: the endpoint (the message limit, the guard's re-check): the endpoint sees the client leave.
EDGE_CLOSE = "nexus.edge_close"
_VALID_RID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _BodyTooLarge(Exception):
    pass


class EdgeMiddleware:
    """Sets the request id, enforces the body limit, records metrics and the access log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        namespace: str,
        max_body_bytes: int,
        echo_request_id: bool = True,
        templates: dict[tuple[object, str], str] | None = None,
        ws_messages_per_minute: int | None = None,
    ) -> None:
        self.app = app
        # (endpoint, first path segment) -> full route template: metrics are labelled with
        # templates, never raw paths, and an included router's route only knows its own suffix.
        self.templates = templates or {}
        # Inside Serve, Serve's own RequestIdMiddleware sets and echoes x-request-id (honouring the
        # client's); echoing it here too would send the header twice.
        self.echo_request_id = echo_request_id
        self.namespace = namespace
        self.max_body = max_body_bytes
        self.ws_messages_per_minute = ws_messages_per_minute or get_settings().ws_messages_per_minute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = _request_id(headers)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        raw_rid = rid.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.echo_request_id:
                    message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_rid)]
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                raise _BodyTooLarge
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise _BodyTooLarge
                return message

            await self.app(scope, limited_receive, send_wrapper)
        except _BodyTooLarge:
            err = PayloadTooLarge(f"request body exceeds {self.max_body} bytes", extra={"max_bytes": self.max_body})
            await problem_response(err, scope.get("path"))(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            template = self._template(scope)
            metrics.observe(self.namespace, template, scope["method"], status, elapsed)
            if status >= 500 or log.isEnabledFor(logging.DEBUG):
                log.log(
                    logging.ERROR if status >= 500 else logging.DEBUG,
                    "request",
                    extra={"method": scope["method"], "route": template, "status": status,
                           "ms": round(elapsed * 1000, 2)},
                )
            request_id_var.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = _request_id(dict(scope["headers"]))
        token = request_id_var.set(rid)
        limit = self.ws_messages_per_minute
        tags: dict[str, str] | None = None
        accepted_at: float | None = None
        code: int | str = "denied"
        closed = False  # a close went out or the client left: nothing more may be sent
        failed = False  # ended by an error on this side (1011), not by a client that sent 1011
        window, in_window = float("-inf"), 0

        async def edge_close(close_code: int, reason: str) -> None:
            nonlocal closed, code
            if not closed:
                code, closed = close_code, True
                await send({"type": "websocket.close", "code": close_code, "reason": reason})

        scope[EDGE_CLOSE] = edge_close

        def route_tags() -> dict[str, str]:
            nonlocal tags
            if tags is None:  # the route is matched (scope["route"] set) before anything is sent
                tags = metrics.ws_tags(self.namespace, self._template(scope))
            return tags

        async def ws_receive() -> Message:
            nonlocal closed, code, window, in_window
            message = await receive()
            if message["type"] == "websocket.receive":
                metrics.ws_message(route_tags(), "in")
                now = time.monotonic()
                if now - window >= 60:  # a window opens with the first message after the last one ended
                    window, in_window = now, 0
                in_window += 1
                if in_window > limit and not closed:
                    # The edge ends the connection; the endpoint sees the client leave with 4429.
                    reason = f"more than {limit} messages a minute"
                    await edge_close(4429, reason)
                    return {"type": "websocket.disconnect", "code": 4429, "reason": reason}
            elif message["type"] == "websocket.disconnect" and not closed:
                code, closed = message.get("code", 1005), True
            return message

        async def ws_send(message: Message) -> None:
            nonlocal closed, code, accepted_at, failed
            kind = message["type"]
            if closed:
                if kind == "websocket.send":
                    # What a server raises when the peer is gone: Starlette turns it into WebSocketDisconnect.
                    raise OSError("the WebSocket connection is closed")
                if kind == "websocket.close":
                    return
            if kind == "websocket.accept":
                accepted_at = time.perf_counter()
                code = 1006  # until a close says otherwise
                # Serve's RequestIdMiddleware does not echo it on a WebSocket: this is the only echo.
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
                metrics.ws_opened(route_tags())
            elif kind == "websocket.send":
                metrics.ws_message(route_tags(), "out")
            elif kind == "websocket.close":
                closed = True
                if accepted_at is not None:  # closed before acceptance, it stays "denied"
                    code = message.get("code", 1000)
                    failed = code == 1011
            await send(message)

        try:
            await self.app(scope, ws_receive, ws_send)
        except WebSocketDisconnect:
            pass  # the client left while the endpoint was sending: not an error
        except Exception:
            log.exception("unhandled error on WebSocket %s", self._template(scope))
            failed = True
            if not closed:
                code, closed = 1011, True
                await send({"type": "websocket.close", "code": 1011, "reason": "internal error"})
        finally:
            seconds = None if accepted_at is None else time.perf_counter() - accepted_at
            metrics.ws_closed(route_tags(), str(code), seconds)
            if failed or log.isEnabledFor(logging.DEBUG):
                log.log(
                    logging.ERROR if failed else logging.DEBUG,
                    "websocket",
                    extra={"route": route_tags()["route"], "code": code,
                           "ms": None if seconds is None else round(seconds * 1000, 2)},
                )
            request_id_var.reset(token)

    def _template(self, scope: Scope) -> str:
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        path = scope["path"][len(scope.get("root_path", "")):]
        first = path.split("/", 2)[1] if path.count("/") >= 1 else ""
        found = self.templates.get((endpoint, first))
        return found or str(getattr(scope.get("route"), "path", None) or "unmatched")


def _request_id(headers: dict[bytes, bytes]) -> str:
    """The client's (or Serve's) request id when well-formed, else a new one."""
    rid = headers.get(b"x-request-id", b"").decode("latin-1")
    return rid if _VALID_RID.match(rid) else uuid.uuid4().hex
