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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute, WebSocketRoute

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


def client_address(request: HTTPConnection) -> str:
    """The caller's address: the TCP peer, or what the trusted proxies in front of it say the client was."""
    peer = request.client.host if request.client else "unknown"
    return _forwarded_client(peer, tuple(request.headers.getlist("x-forwarded-for")),
                             tuple(get_settings().trusted_proxies))


@lru_cache(maxsize=4096)
def _forwarded_client(peer: str, forwarded: tuple[str, ...], trusted_proxies: tuple[str, ...]) -> str:
    """:func:`forwarded_client` remembered: every request asks, and the same few peers and headers recur.

    The answer depends on nothing but the arguments; headers a client invents only push older
    entries out of a bounded cache.
    """
    return forwarded_client(peer, forwarded, trusted_proxies)


def forwarded_client(peer: str, forwarded: Sequence[str], trusted_proxies: Sequence[str]) -> str:
    """The client behind ``peer``, from its X-Forwarded-For header lines, believing only ``trusted_proxies``.

    Each proxy appends the address it received the request from, so the header is read from the
    right: an entry counts only if the hop that wrote it -- the peer first, then each entry taken --
    is a trusted proxy. The first hop that is not a proxy is the client; an entry that is not an
    address stops the walk (the hop before it is the last one vouched for). Everything left of the
    client is whatever the client chose to send and is never looked at.
    """
    networks = _networks(tuple(trusted_proxies))
    ip = _ip(peer)
    if ip is None or not _trusted(ip, networks):
        return peer
    hops = [hop for line in forwarded for hop in line.split(",")]
    address = peer
    for hop in reversed(hops):
        ip = _ip(hop.strip())
        if ip is None:
            break
        address = str(ip)
        if not _trusted(ip, networks):
            break
    return address


@lru_cache(maxsize=16)
def _networks(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _trusted(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is the IPv4 loopback seen through a dual-stack socket
    return any(ip in net for net in networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of an X-Forwarded-For entry or a peer: ``a.b.c.d``, ``::1``, ``[::1]``, with or without a port."""
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # IPv4 with a port
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


#: Resolves an opaque bearer token (a legacy session) to its principal, or None when it is not valid.
SessionResolver = Callable[[str], Awaitable["Principal | None"]]
_session_resolver: SessionResolver | None = None


def use_session_resolver(resolver: SessionResolver) -> None:
    """Register who resolves opaque session tokens (auth-service, at start-up): the edge imports no service."""
    global _session_resolver
    _session_resolver = resolver


async def authenticate(
    bearer: HTTPAuthorizationCredentials | None, api_key: str | None
) -> Principal:
    """The principal behind the presented credential; Unauthorized when there is none or it is invalid."""
    if bearer is not None:
        if bearer.credentials.count(".") != 2:
            # Not a JWT: an opaque session token, resolved by whoever start-up registered (auth-service).
            if _session_resolver is None:
                raise Unauthorized("session tokens are not accepted here")
            principal = await _session_resolver(bearer.credentials)
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


def authorize(*scopes: str) -> Any:
    """Dependency: an authenticated principal holding every scope in ``scopes``; rate-limited."""

    async def guard(
        request: Request,
        bearer: HTTPAuthorizationCredentials | None = Depends(_bearer),
        api_key: str | None = Depends(_api_key),
    ) -> Principal:
        settings = get_settings()
        address = client_address(request)
        presented = bearer is not None or bool(api_key)
        if presented:
            ratelimit.refuse_failing(address)
        try:
            principal = await authenticate(bearer, api_key)
            # One Redis call: refuses a revoked token and counts the request (refused-for-scope ones too).
            await ratelimit.admit(
                [
                    ("principal", principal.subject, settings.rate_limit_per_principal),
                    ("address", address, settings.rate_limit_per_address),
                ],
                revocation_keys=list(principal.revocation_keys),
                issued_at=principal.issued_at,
            )
        except Unauthorized:
            # Refused credentials count against the address (429 past its budget), so that forged
            # tokens or guessed API keys are throttled like failed logins. A request without any
            # credential costs nothing to refuse and is not counted.
            if presented:
                await ratelimit.failed(address, settings.rate_limit_auth_failures_per_address)
            raise
        missing = [s for s in scopes if not principal.can(s)]
        if missing:
            raise Forbidden(f"missing scope: {' '.join(missing)}", extra={"required_scopes": list(scopes)})
        request.state.principal = principal
        return principal

    guard.nexus_scopes = scopes  # type: ignore[attr-defined]
    return Depends(guard)


def public(*, rate_limited: bool = True) -> Any:
    """Dependency marking a route open to anyone; still rate-limited per address unless told not to."""

    async def open_route(request: Request) -> None:
        if rate_limited:
            await ratelimit.hit([("address", client_address(request), get_settings().rate_limit_per_address)])

    open_route.nexus_public = True  # type: ignore[attr-defined]
    return Depends(open_route)


def api_routes(routes: Sequence[BaseRoute]) -> list[Any]:
    """Every API route of an app with its effective path, methods and dependant (included routers flattened)."""
    return [rc for rc in iter_route_contexts(routes) if isinstance(rc.original_route, APIRoute)]


def route_guard(route: Any) -> tuple[str, tuple[str, ...]] | None:
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


def check_route_security(routes: Sequence[BaseRoute]) -> None:
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
