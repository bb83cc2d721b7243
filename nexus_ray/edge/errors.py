"""Every error leaves the edge as RFC 9457 problem+json; validation errors name the field."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import asyncpg
import pymongo.errors
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.dependencies.utils import get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import RouteContext
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from nexus_ray.catalog import API_VERSIONS
from nexus_ray.edge.security import api_routes, route_guard
from nexus_ray.exceptions import PROBLEM_JSON, NexusError, NotFound, ServiceUnavailable, ValidationFailed, for_status
from nexus_ray.logs import request_id_var

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


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


#: PostgreSQL keeps no NUL character (``\\u0000``) in text or JSON. A request that carries one is refused with a
#: 422 instead of failing as a 500 (its transaction rolled back, nothing written): one handler here rather than
#: a validator on every string field of every service.
UNSTORABLE_TEXT = (asyncpg.exceptions.UntranslatableCharacterError, asyncpg.exceptions.CharacterNotInRepertoireError)

#: A store's connection lost under a request (PostgreSQL terminated the backend or went away, Redis or the
#: document store unreachable): nothing was committed that the request did not finish, so the answer is a 503
#: the client may retry (with the same idempotency key), not a 500 that reads as a defect. Narrow on purpose:
#: a statement timeout or a protocol misuse (``InterfaceError``: two operations at once on one connection) stays
#: a 500. asyncpg's ``InternalClientError`` is in: it means the protocol met a server message it did not expect,
#: which in practice is the server's farewell to a pool connection that was idle, taken by a request in the turn
#: of the loop before asyncpg sees the closed socket (``stores.postgres.transaction`` takes another connection
#: when it happens at ``BEGIN``; a statement outside a transaction gets this 503).
STORE_CONNECTION_LOST: tuple[type[Exception], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError, redis.exceptions.ConnectionError, pymongo.errors.ConnectionFailure,
    ConnectionError,
)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(NexusError)
    async def _nexus(request: Request, exc: NexusError) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(validation_problem(exc), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = _unknown_route(request, exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return problem_response(err, request.url.path)

    async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        refused = ValidationFailed(
            "a text value contains a character that cannot be stored (NUL, \\u0000)",
            extra={"errors": [{"field": "body", "in": "body", "message": "contains a NUL character (\\u0000)",
                               "type": "unstorable_character"}]})
        return problem_response(refused, request.url.path)

    for unstorable in UNSTORABLE_TEXT:
        app.add_exception_handler(unstorable, _unstorable)

    async def _store_lost(request: Request, exc: Exception) -> JSONResponse:
        log.warning("store connection lost on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        lost = ServiceUnavailable("a store's connection was lost while answering; nothing half-done was kept, "
                                  "retry (with the same idempotency key)",
                                  extra={"code": "store_connection_lost"}, headers={"Retry-After": "1"})
        return problem_response(lost, request.url.path)

    for lost in STORE_CONNECTION_LOST:
        app.add_exception_handler(lost, _store_lost)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(NexusError("an unexpected error occurred; it has been logged"), request.url.path)


# -- The errors in the OpenAPI documents ------------------------------------------------------------


class ProblemDetails(BaseModel):
    """An RFC 9457 problem: the body of every error the platform answers with (application/problem+json)."""

    model_config = ConfigDict(extra="allow")  # errors add their own members (required_scopes, max_bytes...)

    type: str = Field(description="URI naming the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code of the response.")
    detail: str | None = Field(None, description="What went wrong with this request.")
    instance: str | None = Field(None, description="The path of the request.")
    request_id: str | None = Field(None, description="The request's id (X-Request-ID), for support.")


class FieldError(BaseModel):
    """One offending field of a request that failed validation."""

    model_config = ConfigDict(extra="allow")

    field: str = Field(description="Dotted path of the field: items[0].qty.")
    message: str = Field(description="Why the value was refused.")
    type: str = Field(description="Machine-readable kind of error.")
    in_: str | None = Field(None, alias="in", description="Where the field is: body, query, path, header.")


class ValidationProblem(ProblemDetails):
    """A request that does not fit the operation's schema: every offending field is named."""

    errors: list[FieldError] = Field(default_factory=list, description="The offending fields.")


_REF = "#/components/schemas/"
_WRITES = {"POST", "PUT", "PATCH", "DELETE"}
_HEADER_SCHEMA = {"schema": {"type": "string"}}


def _problem(description: str, model: type[BaseModel] = ProblemDetails, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF + model.__name__}}},
    }
    if headers:
        response["headers"] = {name: {"description": text, **_HEADER_SCHEMA} for name, text in headers.items()}
    return response


def _rate_limited(guard_call: Callable[..., Any] | None) -> bool:
    # public(rate_limited=False) (health probes) is the one guard that never counts requests.
    if guard_call is None:
        return False
    return inspect.getclosurevars(guard_call).nonlocals.get("rate_limited", True) is not False


def problem_responses(route: RouteContext) -> dict[str, dict[str, Any]]:
    """The problem+json responses an API route can give, derived from its guard, parameters and method.

    Said as "can give", so a little wide: 409 for every write, 404 wherever a path or a body names an object.
    """
    guard = route_guard(route)
    methods = set(route.methods or ())
    dependant = route.dependant
    # Flattened: parameters read by a dependency (page_params' limit and cursor) are validated as well.
    has_params = bool(get_flat_params(dependant))
    # A body the route declares, or one it reads itself (json_body_doc)
    declared_body = route.body_field is not None or "requestBody" in (route.openapi_extra or {})
    has_body = declared_body or bool(methods & {"POST", "PUT", "PATCH"})
    responses: dict[str, dict] = {}
    if guard and guard[0] == "scopes":
        responses["401"] = _problem("No valid credential: missing, malformed, expired or revoked.",
                                    headers={"WWW-Authenticate": "The scheme to authenticate with (Bearer)."})
        responses["403"] = _problem(f"The credential lacks a scope this operation needs: {' '.join(guard[1])}.")
    if dependant.path_params or declared_body:
        # An id in the path, or a body that names objects (an asset, roles...) that may not be there.
        responses["404"] = _problem("No such object (or none the caller may see).")
    if methods & _WRITES:
        responses["409"] = _problem("The change conflicts with the current state of the object.")
    if has_body:
        responses["400"] = _problem("The body could not be read: not UTF-8, or not the declared content type.")
        responses["413"] = _problem("The request body is larger than the platform accepts.")
    if has_params or declared_body:
        responses["422"] = _problem("A field of the request is invalid; each one is named.", ValidationProblem)
    counted = guard is not None and (guard[0] == "scopes" or _rate_limited(_public_call(route)))
    if counted:
        responses["429"] = _problem("Too many requests from this caller or address.",
                                    headers={"Retry-After": "Seconds until the limit resets."})
        # Counting a request needs Redis: when it (or the route's own store) is away, the answer is 503.
        responses["503"] = _problem("A store or service the operation needs is unavailable; retry.")
    return responses


def _public_call(route: RouteContext) -> Callable[..., Any] | None:
    # The public() dependency of a route, to read how it was declared (route_guard says only that it is public).
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if getattr(dep.call, "nexus_public", False):
            return dep.call
        stack.extend(dep.dependencies)
    return None


def document_problems(app: FastAPI) -> None:
    """Declare in ``app``'s OpenAPI document the problem+json responses of every operation, with their schemas.

    What a route declares itself (``responses=``, its success status) is kept; FastAPI's default 422
    (application/json, HTTPValidationError) is replaced by the problem+json one the edge really sends.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        by_operation = {(rc.path_format, m.lower()): rc for rc in api_routes(app.routes) for m in rc.methods or ()}
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                route = by_operation.get((path, method))
                if route is None:
                    continue
                guard = route_guard(route)
                if guard and guard[0] == "scopes":
                    # Said once here for clients and contract checks: security alone cannot tell a guarded
                    # operation from a public one that reads a credential itself (logout).
                    operation["x-required-scopes"] = list(guard[1])
                declared = operation.setdefault("responses", {})
                if "HTTPValidationError" in json.dumps(declared.get("422", {})):
                    del declared["422"]
                for status, response in problem_responses(route).items():
                    declared.setdefault(status, response)
                for status, response in declared.items():
                    # An error a route declares itself (``responses={401: {"description": ...}}``) is a problem too.
                    if status[:1] in "45" and "content" not in response:
                        response.update({**_problem(response.get("description", "")), **response})
                operation["responses"] = dict(sorted(declared.items()))
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        paths = json.dumps(schema.get("paths", {}))
        own = [m for name, m in _OWN_BODIES.items() if f'"{_REF}{name}"' in paths and name not in components]
        documented: list[type[BaseModel]] = [ProblemDetails, ValidationProblem, *own]
        for model in documented:
            model_schema = model.model_json_schema(ref_template=_REF + "{model}", by_alias=True)
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        if "HTTPValidationError" not in json.dumps(schema["paths"]):
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def parse_input(model: type[M], data: dict[str, Any]) -> M:
    """``data`` validated as ``model``, or the 422 a route would answer for the same body (fields named).

    For functions other services call (``exports``): their keyword arguments get the checks and the
    problem that an HTTP body gets.
    """
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise _body_problem(exc) from None


def _body_problem(exc: PydanticValidationError) -> ValidationFailed:
    errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False)]
    return validation_problem(RequestValidationError(errors))


#: Request-body models that routes read themselves (:func:`parse_json_body`), by name: their schemas join the
#: components of every OpenAPI document whose operations refer to them (:func:`json_body_doc`).
_OWN_BODIES: dict[str, type[BaseModel]] = {}


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads a JSON body of ``model`` itself with :func:`parse_json_body`
    instead of declaring it as a parameter: documented as a declared body is, and answered with the same
    problems (400, 413, 422)."""
    _OWN_BODIES[model.__name__] = model
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": {"$ref": _REF + model.__name__}}}}}


async def parse_json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model`` by pydantic's own parser, straight from its bytes, or the 422
    a declared body gets (each field named; a body that is not JSON is named as ``body``).

    For large bodies: FastAPI reads a declared body with ``json.loads`` and then validates the dicts it made,
    which cost a ledger batch of 1,000 transfers about 11 ms against 7 ms this way (bench/RESULTS.md). The
    route's guard also runs before the body is read, so an unauthenticated caller's body is never parsed.
    """
    try:
        return model.model_validate_json(await request.body())
    except PydanticValidationError as exc:
        raise _body_problem(exc) from None
