"""auth-service-v2's routes, under ``/auth/v2/oauth`` (the provider's issuer URL, ``jwt_issuer``).

Protocol endpoints, public to the edge because the credential they check is in the request::

    GET       /.well-known/openid-configuration   discovery (OpenID Connect Discovery, RFC 8414)
    GET       /jwks                               key-service's platform JWKS
    GET|POST  /authorize                          the user: legacy session (cookie or bearer) or sign-in form
    POST      /token                              authorization_code (PKCE S256), refresh_token, client_credentials
    POST      /revoke                             RFC 7009
    POST      /introspect                         RFC 7662, confidential clients

``/userinfo`` (GET|POST) needs an access token with ``openid``; ``/clients...`` (registration and
administration) needs ``auth:oauth:admin``.

/authorize, /token, /revoke and /introspect speak OAuth's formats, not problem+json: errors are RFC 6749
JSON (or redirects to the client), always ``application/json``, 4xx for anything the request got wrong
(503 ``temporarily_unavailable`` only when a store is down). They are left out of the OpenAPI document:
the discovery document is their description, and the platform's schema checks expect problem+json.
"""

from __future__ import annotations

import hmac
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Annotated

from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oidc.core.errors import LoginRequiredError
from fastapi import APIRouter, Path, Query, Request, Response

from nexus_ray.config import get_settings
from nexus_ray.deployments.auth.auth import service as legacy
from nexus_ray.deployments.auth.auth.lockout import AccountLocked
from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.deployments.auth.oauth.settings import settings as oauth_settings
from nexus_ray.deployments.kit.scopes import scopes_of
from nexus_ray.edge import ratelimit
from nexus_ray.edge.security import Principal, authorize, client_address, public
from nexus_ray.exceptions import Forbidden, NexusError, NotFound, RateLimited, Unauthorized

from . import protocol, service
from .models import (
    CLIENT_ID_PATTERN,
    ClientCreate,
    ClientCreated,
    ClientPage,
    ClientRead,
    ClientSecret,
    ClientUpdate,
    Jwks,
    ProviderMetadata,
    UserInfo,
)

log = logging.getLogger(__name__)

ADMIN = scopes_of("auth-service-v2").admin

router = APIRouter()
ClientId = Annotated[str, Path(pattern=CLIENT_ID_PATTERN, description="The client's id (nxc_...).")]


# -- protocol endpoints ---------------------------------------------------------------------------


async def _protocol(request: Request, handle: Callable[[], Awaitable[Response]]) -> Response:
    """Run a protocol endpoint: rate-limited per address; every failure in OAuth's JSON error format."""
    try:
        await ratelimit.hit([("address", client_address(request), get_settings().rate_limit_per_address)])
        return await handle()
    except OAuth2Error as err:
        return protocol.error_response(err)
    except RateLimited as err:
        return protocol.json_response(
            {"error": "temporarily_unavailable", "error_description": err.detail}, 429, err.headers
        )
    except NexusError as err:
        if err.status < 500:
            return protocol.json_response({"error": "invalid_request", "error_description": err.detail}, 400)
        log.error("OAuth endpoint unavailable: %s", type(err).__name__)
    except Exception as exc:
        # Where it failed, not the exception's message: messages can quote the parameters (secrets).
        log.error("OAuth endpoint failed: %s", type(exc).__name__,
                  extra={"trace": "".join(traceback.format_tb(exc.__traceback__, limit=-4))})
    return protocol.json_response(
        {"error": "temporarily_unavailable", "error_description": "try again shortly"}, 503, {"Retry-After": "1"}
    )


async def _client(request: Request, params: dict[str, str], *, allow_public: bool) -> service.Client:
    client_id, secret, method = protocol.client_credentials(request, params, allow_public=allow_public)
    return await service.authenticate_client(client_id=client_id, secret=secret, method=method)


@router.post("/token", dependencies=[public(rate_limited=False)], include_in_schema=False)
async def token(request: Request) -> Response:
    async def handle() -> Response:
        params = await protocol.form_params(request)
        client = await _client(request, params, allow_public=True)
        return protocol.json_response(await service.token(client=client, params=params))

    return await _protocol(request, handle)


@router.post("/revoke", dependencies=[public(rate_limited=False)], include_in_schema=False)
async def revoke(request: Request) -> Response:
    async def handle() -> Response:
        params = await protocol.form_params(request)
        client = await _client(request, params, allow_public=True)
        await service.revoke(client=client, params=params)
        return protocol.json_response({})

    return await _protocol(request, handle)


@router.post("/introspect", dependencies=[public(rate_limited=False)], include_in_schema=False)
async def introspect(request: Request) -> Response:
    async def handle() -> Response:
        params = await protocol.form_params(request)
        client = await _client(request, params, allow_public=False)
        return protocol.json_response(await service.introspect(client=client, params=params))

    return await _protocol(request, handle)


@router.api_route("/authorize", methods=["GET", "POST"], dependencies=[public(rate_limited=False)],
                  include_in_schema=False)
async def authorize_endpoint(request: Request) -> Response:
    return await _protocol(request, lambda: _authorize(request))


def _csrf_cookie() -> str:
    return oauth_settings().oauth_session_cookie + "_csrf"


def _sign_in_form(
    authz: service.AuthorizationRequest,
    params: dict[str, str],
    *,
    message: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """The sign-in page, with a fresh anti-CSRF token (cookie and form field must match on the post)."""
    issuer = get_settings().jwt_issuer
    csrf = protocol.new_csrf()
    response = protocol.login_page(issuer=issuer, client_name=authz.client.name, params=params, csrf=csrf,
                                   message=message, status_code=status_code, headers=headers)
    response.set_cookie(_csrf_cookie(), csrf, max_age=1800, path=protocol.cookie_path(issuer),
                        secure=issuer.startswith("https:"), httponly=True, samesite="strict")
    return response


def _session_token(request: Request) -> str | None:
    """The legacy session token the user agent presents: the provider's cookie, or a bearer session token."""
    cookie = request.cookies.get(oauth_settings().oauth_session_cookie)
    if cookie:
        return cookie
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value and value.count(".") == 0:
        return value.strip()
    return None


async def _authorize(request: Request) -> Response:
    """The authorization endpoint (RFC 6749 section 4.1.1, OIDC Core 3.1.2): authenticate the user, then send
    a code to the client's redirect URI."""
    s = get_settings()
    issuer = s.jwt_issuer
    params = protocol.query_params(request) if request.method == "GET" else await protocol.form_params(request)
    username, password, csrf = (params.pop(k, None) for k in ("username", "password", protocol.CSRF_FIELD))
    if request.method == "GET" and (username is not None or password is not None):
        raise InvalidRequestError("password: credentials go in the body of a POST, never in a URL")
    try:
        authz = await service.validate_authorization_request(params)
    except OAuth2Error as err:
        if err.redirect_uri:
            return protocol.error_redirect(err, issuer=issuer)
        raise

    new_session: str | None = None
    if username is not None or password is not None:
        expected = request.cookies.get(_csrf_cookie())
        if not (csrf and expected and hmac.compare_digest(csrf.encode(), expected.encode())):
            return _sign_in_form(authz, params, message="The sign-in form expired. Please sign in again.",
                                 status_code=400)
        try:
            result = await legacy.login(
                username=(username or "")[:64], password=password or "", address=client_address(request),
                user_agent=request.headers.get("user-agent", ""), device=f"OAuth: {authz.client.name}"[:128],
            )
        except (Unauthorized, Forbidden, AccountLocked, RateLimited) as exc:
            return _sign_in_form(authz, params, message=exc.detail, status_code=exc.status, headers=exc.headers)
        signed_in: tuple[str, float] | None = (str(result["user_id"]), time.time())
        new_session = result["session_token"]
    else:
        session_token = _session_token(request)
        signed_in = await service.signed_in_user(session_token) if session_token else None
        if signed_in is not None and (
            "login" in authz.prompt or (authz.max_age is not None and time.time() - signed_in[1] > authz.max_age)
        ):
            signed_in = None  # the client asks for a fresh sign-in

    if signed_in is None:
        if "none" in authz.prompt:
            required = LoginRequiredError("prompt: none, and the user is not signed in", state=authz.state,
                                          redirect_uri=authz.redirect_uri)
            return protocol.error_redirect(required, issuer=issuer)
        return _sign_in_form(authz, params)
    try:
        code = await service.issue_code(request=authz, user_id=signed_in[0], auth_time=signed_in[1])
    except OAuth2Error as err:
        if err.redirect_uri:
            return protocol.error_redirect(err, issuer=issuer)
        raise
    response = protocol.redirect(authz.redirect_uri, [("code", code), ("state", authz.state), ("iss", issuer)])
    if new_session is not None:
        response.set_cookie(oauth_settings().oauth_session_cookie, new_session,
                            max_age=auth_settings().auth_session_absolute_s,
                            path=protocol.cookie_path(issuer), secure=issuer.startswith("https:"), httponly=True,
                            samesite="lax")
        response.delete_cookie(_csrf_cookie(), path=protocol.cookie_path(issuer))
    return response


# -- discovery, keys, userinfo --------------------------------------------------------------------


@router.get("/.well-known/openid-configuration", response_model=ProviderMetadata, dependencies=[public()],
            summary="OpenID Provider Metadata (discovery)")
async def openid_configuration(response: Response) -> dict:
    """Where the endpoints are and what they support. ``issuer`` is the URL this document is served under."""
    response.headers["Cache-Control"] = "public, max-age=300"
    return service.discovery(issuer=get_settings().jwt_issuer)


@router.get("/jwks", response_model=Jwks, dependencies=[public()], summary="Keys that verify this provider's tokens")
async def jwks(response: Response) -> dict:
    response.headers["Cache-Control"] = f"public, max-age={int(get_settings().jwks_cache_s)}"
    return await service.jwks()


@router.get("/userinfo", response_model=UserInfo, response_model_exclude_none=True, summary="OpenID Connect UserInfo")
@router.post("/userinfo", response_model=UserInfo, response_model_exclude_none=True,
             summary="OpenID Connect UserInfo (POST)")
async def userinfo(principal: Principal = authorize("openid")) -> dict:
    """Claims about the user of the access token: ``sub``; with ``profile`` and ``email`` scopes, those claims."""
    return await service.userinfo(principal=principal)


# -- client administration ------------------------------------------------------------------------


@router.post("/clients", status_code=201, response_model=ClientCreated, summary="Register a client")
async def register_client(body: ClientCreate, principal: Principal = authorize(ADMIN)) -> dict:
    """The secret of a confidential client is in this response only."""
    return await service.register_client(
        name=body.name, client_type=body.client_type, redirect_uris=body.redirect_uris,
        allowed_scopes=body.allowed_scopes, grant_types=[str(g) for g in body.grant_types],
        id_token_alg=body.id_token_signed_response_alg, introspect_any=body.introspect_any, grantor=principal,
    )


@router.get("/clients", response_model=ClientPage, dependencies=[authorize(ADMIN)], summary="List clients")
async def list_clients(
    limit: int = Query(50, ge=1, le=500),
    after: str | None = Query(None, pattern=CLIENT_ID_PATTERN, description="`next_after` of the previous page."),
) -> dict:
    items, next_after = await service.list_clients(limit=limit, after=after)
    return {"items": items, "next_after": next_after}


@router.get("/clients/{client_id}", response_model=ClientRead, dependencies=[authorize(ADMIN)], summary="A client")
async def get_client(client_id: ClientId) -> dict:
    return await service.get_client(client_id=client_id)


@router.patch("/clients/{client_id}", response_model=ClientRead, summary="Change a client")
async def update_client(client_id: ClientId, body: ClientUpdate, principal: Principal = authorize(ADMIN)) -> dict:
    return await service.update_client(client_id=client_id, changes=body.model_dump(exclude_unset=True),
                                       grantor=principal)


@router.post("/clients/{client_id}/secret", response_model=ClientSecret, dependencies=[authorize(ADMIN)],
             summary="Give a confidential client a new secret")
async def rotate_secret(client_id: ClientId) -> dict:
    """The previous secret stops working at once; the new one is in this response only."""
    return await service.rotate_secret(client_id=client_id)


@router.delete("/clients/{client_id}", status_code=204, dependencies=[authorize(ADMIN)], summary="Delete a client")
async def delete_client(client_id: ClientId) -> Response:
    """Its refresh tokens stop working at once, and its access tokens (its users' and its own) at the edge."""
    if not await service.delete_client(client_id=client_id):
        raise NotFound("no such client")
    return Response(status_code=204)
