"""Every error leaves the edge as RFC 9457 problem+json; validation errors name the field."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexus_ray.catalog import API_VERSIONS
from nexus_ray.exceptions import PROBLEM_JSON, NexusError, NotFound, ValidationFailed, for_status
from nexus_ray.logs import request_id_var

log = logging.getLogger(__name__)


def problem_response(err: NexusError, instance: str | None = None) -> JSONResponse:
    """The HTTP response of a platform error."""
    body = err.problem(instance)
    rid = request_id_var.get()
    if rid:
        body.setdefault("request_id", rid)
    return JSONResponse(body, status_code=err.status, media_type=PROBLEM_JSON, headers=err.headers)


def field_name(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    """(where, dotted field path) of a pydantic error location: ("body", "items[0].qty")."""
    where = str(loc[0]) if loc else "body"
    path = ""
    for part in loc[1:]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return where, path or where


def validation_problem(exc: RequestValidationError) -> ValidationFailed:
    """A ValidationFailed listing each offending field, its place and the reason."""
    errors = []
    for e in exc.errors():
        where, field = field_name(tuple(e.get("loc", ())))
        errors.append({"field": field, "in": where, "message": e.get("msg", "invalid"), "type": e.get("type", "")})
    fields = ", ".join(sorted({e["field"] for e in errors}))
    return ValidationFailed(f"invalid fields: {fields}", extra={"errors": errors})


def _unknown_route(request: Request, status: int, detail: str) -> NexusError:
    # /<namespace>/<version>/...: an unknown version gets a precise answer.
    path = request.scope.get("path", "")[len(request.scope.get("root_path", "")):]
    parts = [p for p in path.split("/") if p]
    if status == 404 and parts and parts[0] not in API_VERSIONS and parts[0] not in ("health", "openapi.json", "docs"):
        if parts[0].startswith("v") and parts[0][1:].isdigit():
            return NotFound(
                f"API version {parts[0]} is not supported; supported: {', '.join(API_VERSIONS)}",
                extra={"supported_versions": list(API_VERSIONS)},
            )
    return for_status(status, detail if detail not in ("Not Found", "Method Not Allowed") else "")


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(NexusError)
    async def _nexus(request: Request, exc: NexusError):
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return problem_response(validation_problem(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        err = _unknown_route(request, exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return problem_response(err, request.url.path)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(NexusError("an unexpected error occurred; it has been logged"), request.url.path)
