"""Who is calling and what they may do: bearer JWTs, scoped API keys, scopes, rate limits.

Every route declares exactly one of:

* ``dependencies=[authorize("ns:resource:action", ...)]`` or a parameter
  ``principal: Principal = authorize(...)`` -- a valid token or API key holding every
  listed scope (``ns:*`` grants every scope of ``ns``; ``*`` grants all);
* ``dependencies=[public()]`` -- explicitly open to anyone.

:func:`check_route_security` refuses to build an app with a route that declares
neither, so a forgotten guard is a start-up error, not an open endpoint. WebSocket
routes declare ``ws_authorize(...)`` or ``ws_public()`` instead (:mod:`nexus_ray.edge.websocket`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import WebSocketRoute

from nexus_ray.config import get_settings
from nexus_ray.edge import apikeys, ratelimit, revocations, tokens
from nexus_ray.exceptions import Forbidden, NotFound, Unauthorized


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    subject: str
    scopes: frozenset[str]
    kind: str  # user | service | api_key
    credential_id: str | None = None
    #: For access tokens: the revocation-list keys that would refuse this token, and its iat.
    revocation_keys: tuple[str, ...] = ()
    issued_at: int | None = None

    def can(self, scope: str) -> bool:
        return has_scope(self.scopes, scope)


def has_scope(granted: frozenset[str] | set[str], required: str) -> bool:
    """True when ``granted`` includes ``required`` exactly or through a ``prefix:*`` / ``*`` grant."""
    if required in granted or "*" in granted:
        return True
    parts = required.split(":")
    return any(":".join(parts[:i]) + ":*" in granted for i in range(1, len(parts)))


_bearer = HTTPBearer(auto_error=False, description="Access token (JWT) issued by the platform")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="Scoped API key (nxk_...)")


def client_address(request: Request) -> str:
    """The caller's address: the peer, or the last hop a local proxy (HAProxy) appended."""
    peer = request.client.host if request.client else "unknown"
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        try:
            if ipaddress.ip_address(peer).is_loopback:
                return forwarded.rsplit(",", 1)[-1].strip()
        except ValueError:
            pass
    return peer


async def authenticate(
    bearer: HTTPAuthorizationCredentials | None, api_key: str | None
) -> Principal:
    """The principal behind the presented credential; Unauthorized when there is none or it is invalid."""
    if bearer is not None:
        if bearer.credentials.count(".") != 2:
            # Not a JWT: a legacy session token, which auth-service resolves (imported here, on use,
            # so the edge does not load a service at import time).
            from nexus_ray.deployments.auth.auth.service import session_principal

            principal = await session_principal(bearer.credentials)
            if principal is None:
                raise Unauthorized("invalid or expired session token")
            return principal
        claims = await tokens.verify(bearer.credentials)
        subject = str(claims["sub"])
        keys = [revocations.subject_key(subject)]
        if claims.get("jti"):
            keys.append(revocations.token_key(str(claims["jti"])))
        if claims.get("gid"):
            keys.append(revocations.grant_key(str(claims["gid"])))
        return Principal(
            subject=subject,
            scopes=frozenset(str(claims.get("scope", "")).split()),
            kind=str(claims.get("kind", "user")),
            credential_id=claims.get("jti"),
            revocation_keys=tuple(keys),
            issued_at=int(claims["iat"]),
        )
    if api_key:
        record = await apikeys.verify(api_key)
        return Principal(record.principal, record.scopes, "api_key", record.key_id)
    raise Unauthorized("a bearer token or an API key is required")


def ensure_self_or(principal: Principal, subject: str, admin_scope: str, *, not_found: str | None = None) -> None:
    """Refuse unless ``principal`` is ``subject`` itself or holds ``admin_scope``: self-service routes.

    403 for a subject named in the path. For an object found by its id and owned by ``subject``, pass
    ``not_found`` (the route's detail for an unknown id): the refusal is that same 404, so another's
    ids cannot be told from made-up ones.
    """
    if principal.subject != str(subject) and not principal.can(admin_scope):
        if not_found is not None:
            raise NotFound(not_found)
        raise Forbidden(
            f"only the account itself or a holder of {admin_scope} may do this",
            extra={"required_scopes": [admin_scope]},
        )


def authorize(*scopes: str):
    """Dependency: an authenticated principal holding every scope in ``scopes``; rate-limited."""

    async def guard(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        api_key: str | None = Depends(_api_key),
    ) -> Principal:
        principal = await authenticate(bearer, api_key)
        settings = get_settings()
        # One Redis call: refuses a revoked token and counts the request (refused-for-scope ones too).
        await ratelimit.admit(
            [
                ("principal", principal.subject, settings.rate_limit_per_principal),
                ("address", client_address(request), settings.rate_limit_per_address),
            ],
            revocation_keys=list(principal.revocation_keys),
            issued_at=principal.issued_at,
        )
        missing = [s for s in scopes if not principal.can(s)]
        if missing:
            raise Forbidden(f"missing scope: {' '.join(missing)}", extra={"required_scopes": list(scopes)})
        request.state.principal = principal
        return principal

    guard.nexus_scopes = scopes  # type: ignore[attr-defined]
    return Depends(guard)


def public(*, rate_limited: bool = True):
    """Dependency marking a route open to anyone; still rate-limited per address unless told not to."""

    async def open_route(request: Request) -> None:
        if rate_limited:
            await ratelimit.hit([("address", client_address(request), get_settings().rate_limit_per_address)])

    open_route.nexus_public = True  # type: ignore[attr-defined]
    return Depends(open_route)


def api_routes(routes) -> list:
    """Every API route of an app with its effective path, methods and dependant (included routers flattened)."""
    return [rc for rc in iter_route_contexts(routes) if isinstance(rc.original_route, APIRoute)]


def route_guard(route) -> tuple[str, tuple[str, ...]] | None:
    """("public", ()) or ("scopes", scopes) for a route, from its dependencies; None if unguarded.

    A WebSocket route counts only the WebSocket guards (``ws_authorize``/``ws_public``) and an
    HTTP route only the HTTP ones: a guard of the other kind cannot work there.
    """
    websocket = isinstance(getattr(route, "original_route", route), WebSocketRoute)
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        call = dep.call
        stack.extend(dep.dependencies)
        if getattr(call, "nexus_websocket", False) != websocket:
            continue
        if getattr(call, "nexus_public", False):
            return ("public", ())
        if hasattr(call, "nexus_scopes"):
            return ("scopes", tuple(call.nexus_scopes))
    return None


def check_route_security(routes) -> None:
    """Raise if a route has no guard of its kind: ``authorize()``/``public()``, ``ws_authorize()``/``ws_public()``."""
    unguarded = [f"{','.join(sorted(r.methods))} {r.path}" for r in api_routes(routes) if route_guard(r) is None]
    unguarded += [
        f"WEBSOCKET {rc.path}"
        for rc in iter_route_contexts(routes)
        if isinstance(rc.original_route, WebSocketRoute)
        # A plain Starlette WebSocket route has no dependencies, so it can have no guard.
        and (not isinstance(rc.original_route, APIWebSocketRoute) or route_guard(rc) is None)
    ]
    if unguarded:
        raise RuntimeError(
            f"routes without authorize() or public() (WebSocket: ws_authorize() or ws_public()): {unguarded}"
        )
