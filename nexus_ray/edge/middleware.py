"""The in-process edge: request ids, body limits, metrics and access logs (pure ASGI).

Pure ASGI rather than ``BaseHTTPMiddleware`` because it sits on every request of
every ingress: it adds no task or stream copy per request.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus_ray.edge import metrics
from nexus_ray.edge.errors import problem_response
from nexus_ray.exceptions import PayloadTooLarge
from nexus_ray.logs import request_id_var

log = logging.getLogger("nexus_ray.access")
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _VALID_RID.match(rid):
            rid = uuid.uuid4().hex
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

    def _template(self, scope: Scope) -> str:
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        path = scope["path"][len(scope.get("root_path", "")):]
        first = path.split("/", 2)[1] if path.count("/") >= 1 else ""
        found = self.templates.get((endpoint, first))
        return found or getattr(scope.get("route"), "path", "unmatched")
