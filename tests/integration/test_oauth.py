"""auth-service-v2 (OAuth 2.0 / OpenID Connect provider) on the real stores, through the in-process platform.

The client application is Authlib's ``AsyncOAuth2Client``, used as an application would use it: the
discovery document fetched from the provider, authorization code with PKCE (S256), the user's browser
following /authorize with a legacy session, the token exchange, refresh and client credentials, and
the ID token verified with joserfc against the JWKS from ``jwks_uri``. All of it over HTTP (the
``client`` fixture's ASGI transport). Secrets these tests handle never reach a log.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oidc.core.util import create_half_hash
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.jwk import KeySet

from nexus_ray.catalog import NAMESPACES
from nexus_ray.config import get_settings
from nexus_ray.deployments.auth.auth.settings import settings as auth_settings
from nexus_ray.edge import digests
from nexus_ray.edge.security import api_routes, route_guard
from nexus_ray.stores import postgres

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("captured_logs")]

BASE = "http://nexus.test"
OAUTH = "/auth/v2/oauth"
ISSUER = BASE + OAUTH
CALLBACK = "https://app.example/callback"
USERS = "/auth/v1/users"
SECRETS: list[str] = []
"""Every password, session token, client secret, code and token these tests handle."""


@pytest.fixture(scope="module")
async def meta(client) -> dict:
    """The provider's discovery document, fetched as a client application fetches it."""
    r = await client.get(f"{OAUTH}/.well-known/openid-configuration")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def browser(client):
    """A user agent of its own (its own cookies) on the in-process platform, seen from its own address."""
    opened: list[httpx.AsyncClient] = []

    def make(address: str | None = None) -> httpx.AsyncClient:
        n = uuid.uuid4().int
        address = address or f"198.18.{n % 200 + 1}.{(n >> 8) % 250 + 1}"
        transport = httpx.ASGITransport(app=client._transport.app, client=(address, 51000))
        c = httpx.AsyncClient(transport=transport, base_url=BASE)
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.aclose()


def app_client(client, registered: dict, **kwargs) -> AsyncOAuth2Client:
    """Authlib's OAuth client for a registered client, on the platform's transport."""
    return AsyncOAuth2Client(
        client_id=registered["client_id"],
        client_secret=registered.get("client_secret"),
        token_endpoint_auth_method=kwargs.pop("auth_method", None) or (
            "client_secret_basic" if registered.get("client_secret") else "none"),
        code_challenge_method="S256",
        transport=client._transport,
        base_url=BASE,
        **kwargs,
    )


async def register(client, bearer, **overrides) -> dict:
    body = {
        "name": "Test app",
        "client_type": "confidential",
        "redirect_uris": [CALLBACK],
        "allowed_scopes": ["auth:users:read", "platform:sessions:read", "commerce:orders:read"],
        "grant_types": ["authorization_code", "refresh_token"],
        **overrides,
    }
    r = await client.post(f"{OAUTH}/clients", json=body, headers=bearer("*", subject="oauth-admin"))
    assert r.status_code == 201, r.text
    if r.json()["client_secret"]:
        SECRETS.append(r.json()["client_secret"])
    return r.json()


async def new_user(client) -> tuple[dict, str]:
    username = f"o{uuid.uuid4().hex[:10]}"
    password = f"open sesame {uuid.uuid4().hex[:8]}"
    r = await client.post(USERS, json={"username": username, "email": f"{username}@example.org", "password": password})
    assert r.status_code == 201, r.text
    SECRETS.append(password)
    return r.json(), password


async def session_of(client, username: str, password: str) -> str:
    r = await client.post("/auth/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    SECRETS.append(r.json()["session_token"])
    return r.json()["session_token"]


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def keep(token: dict) -> dict:
    SECRETS.extend(v for k, v in token.items() if k in ("access_token", "refresh_token", "id_token"))
    return token


async def sign_in(client, browser, meta, registered, *, scope: str, session: str, nonce: str | None = None):
    """The authorization code flow as an application runs it: returns (Authlib client, token, location)."""
    oauth = app_client(client, registered, scope=scope, redirect_uri=CALLBACK)
    verifier = generate_token(48)
    url, state = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                                nonce=nonce or generate_token(16))
    r = await browser().get(url, headers={"Cookie": f"nexus_session={session}"})
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location.startswith(CALLBACK + "?")
    params = query(location)
    assert params["state"] == state and params["iss"] == meta["issuer"]
    SECRETS.append(params["code"])
    token = keep(await oauth.fetch_token(meta["token_endpoint"], authorization_response=location,
                                         code_verifier=verifier))
    return oauth, token, location, verifier


async def token_request(client, data: dict, *, auth: tuple[str, str] | None = None, **kwargs) -> httpx.Response:
    r = await client.post(f"{OAUTH}/token", data=data, auth=auth, **kwargs)
    assert r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/json", r.headers["content-type"]
    assert r.headers["cache-control"] == "no-store"
    if r.status_code == 200:
        keep(r.json())
    return r


def bearer_of(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


# -- discovery ------------------------------------------------------------------------------------


async def test_discovery_document_names_its_own_url_as_issuer(client, meta, monkeypatch):
    assert meta["issuer"] == ISSUER == get_settings().jwt_issuer
    assert meta["token_endpoint"] == f"{ISSUER}/token" and meta["jwks_uri"] == f"{ISSUER}/jwks"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["response_types_supported"] == ["code"]
    assert "RS256" in meta["id_token_signing_alg_values_supported"]
    assert set(meta["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # the in-process platform is plain http
    OpenIDProviderMetadata(meta).validate()

    jwks = await client.get(meta["jwks_uri"])
    assert jwks.status_code == 200 and jwks.headers["cache-control"].startswith("public")
    algs = {k["alg"] for k in jwks.json()["keys"]}
    assert {"RS256", "ES256", "EdDSA"} <= algs
    assert all("d" not in k and "p" not in k for k in jwks.json()["keys"])  # public halves only


# -- authorization code with PKCE, ID token, refresh ----------------------------------------------


async def test_authorization_code_flow_with_an_oidc_client_library(client, browser, meta, bearer):
    registered = await register(client, bearer)
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    nonce = generate_token(20)
    scope = "openid profile email auth:users:read platform:sessions:read"
    oauth, token, _location, _ = await sign_in(client, browser, meta, registered, scope=scope, session=session,
                                               nonce=nonce)

    assert token["token_type"] == "Bearer" and token["expires_in"] > 0
    assert token["scope"] == scope  # every requested scope was grantable
    assert token["refresh_token"].startswith("nxr_")

    # The ID token, verified as a relying party does: signature against the JWKS of jwks_uri.
    keys = KeySet.import_key_set((await client.get(meta["jwks_uri"])).json())
    id_token = jwt.decode(token["id_token"], keys, algorithms=["RS256"])
    assert id_token.header["alg"] == "RS256" and id_token.header["kid"]
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": meta["issuer"]},
        aud={"essential": True, "value": registered["client_id"]},
        nonce={"essential": True, "value": nonce},
        sub={"essential": True, "value": user["user_id"]},
        exp={"essential": True},
        iat={"essential": True},
        auth_time={"essential": True},
    ).validate(id_token.claims)
    assert id_token.claims["at_hash"] == create_half_hash(token["access_token"], "RS256").decode()

    # The access token is a platform token: the edge takes it for its scopes, and only those.
    me = await client.get(f"{USERS}/me", headers=bearer_of(token["access_token"]))
    assert me.status_code == 200 and me.json()["user_id"] == user["user_id"]
    other = await client.get("/auth/v1/auth/sessions", headers=bearer_of(token["access_token"]))
    assert other.status_code == 403  # the user holds auth:auth:read, but it was not requested
    header = jwt.decode(token["access_token"], keys, algorithms=["ES256"]).header
    assert header["typ"] == "at+jwt"

    info = await oauth.get(meta["userinfo_endpoint"])
    assert info.status_code == 200, info.text
    assert info.json() == {"sub": user["user_id"], "name": user["display_name"],
                           "preferred_username": user["username"], "email": user["email"],
                           "email_verified": False}

    refreshed = keep(await oauth.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"]))
    assert refreshed["access_token"] != token["access_token"]
    assert refreshed["refresh_token"] != token["refresh_token"]
    again = jwt.decode(refreshed["id_token"], keys, algorithms=["RS256"]).claims
    assert "nonce" not in again and again["auth_time"] == id_token.claims["auth_time"]
    assert again["sub"] == user["user_id"] and again["aud"] == registered["client_id"]
    me = await client.get(f"{USERS}/me", headers=bearer_of(refreshed["access_token"]))
    assert me.status_code == 200


async def test_public_client_and_scopes_beyond_the_user_or_the_client(client, browser, meta, bearer):
    """A public client authenticates with its id alone; the user's token never exceeds the user's RBAC scopes
    nor the client's allowance."""
    registered = await register(client, bearer, client_type="public",
                                allowed_scopes=["auth:users:read", "auth:users:admin", "commerce:*"])
    assert registered["client_secret"] is None and registered["token_endpoint_auth_methods"] == ["none"]
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    _, token, _, _ = await sign_in(client, browser, meta, registered, session=session,
                                   scope="openid auth:users:read auth:users:admin auth:users:write")
    # auth:users:admin: allowed to the client, not held by the user; auth:users:write: the reverse.
    assert token["scope"] == "openid auth:users:read"
    r = await client.get(USERS, headers=bearer_of(token["access_token"]))
    assert r.status_code == 403

    # The legacy session may also come as a bearer token (a non-browser user agent).
    oauth = app_client(client, registered, scope="openid", redirect_uri=CALLBACK)
    url, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=generate_token(48))
    r = await browser().get(url, headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 302 and "code" in query(r.headers["location"])
    SECRETS.append(query(r.headers["location"])["code"])


async def test_sign_in_form_with_lockout_and_csrf(client, browser, meta, bearer):
    registered = await register(client, bearer)
    user, password = await new_user(client)
    agent = browser()
    verifier = generate_token(48)
    oauth = app_client(client, registered, scope="openid auth:users:read", redirect_uri=CALLBACK)
    url, state = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)

    page = await agent.get(url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY" and "Test app" in page.text
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = {**query(url), "csrf_token": csrf}

    forged = await agent.post(meta["authorization_endpoint"], data={**form, "csrf_token": "x" * 32,
                                                                    "username": user["username"],
                                                                    "password": password})
    assert forged.status_code == 400 and "expired" in forged.text
    csrf = forged.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form["csrf_token"] = csrf

    wrong = await agent.post(meta["authorization_endpoint"],
                             data={**form, "username": user["username"], "password": "not the password 1"})
    assert wrong.status_code == 401 and "invalid username or password" in wrong.text
    form["csrf_token"] = wrong.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]

    ok = await agent.post(meta["authorization_endpoint"],
                          data={**form, "username": user["username"], "password": password})
    assert ok.status_code == 302, ok.text
    assert query(ok.headers["location"])["state"] == state
    SECRETS.append(query(ok.headers["location"])["code"])
    cookie = ok.cookies.get("nexus_session")
    assert cookie and cookie.startswith("nxs_")
    SECRETS.append(cookie)
    assert "httponly" in ok.headers["set-cookie"].lower() and f"path={OAUTH}" in ok.headers["set-cookie"].lower()
    token = keep(await oauth.fetch_token(meta["token_endpoint"], authorization_response=ok.headers["location"],
                                         code_verifier=verifier))
    assert token["scope"] == "openid auth:users:read"

    # Signed in now: the next authorization needs no password; prompt=login asks again; prompt=none without
    # a session is login_required.
    url2, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=generate_token(48))
    assert (await agent.get(url2)).status_code == 302
    assert (await agent.get(url2 + "&prompt=login")).status_code == 200
    stranger = await browser().get(url2 + "&prompt=none")
    assert stranger.status_code == 302 and query(stranger.headers["location"])["error"] == "login_required"

    # The same lockout as the legacy login: repeated failures lock the account (423), right password or not.
    locker = browser()
    page = await locker.get(url)
    statuses = []
    for _ in range(auth_settings().auth_lockout_threshold + 1):
        csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        page = await locker.post(meta["authorization_endpoint"],
                                 data={**query(url), "csrf_token": csrf, "username": user["username"],
                                       "password": "a wrong guess 123"})
        statuses.append(page.status_code)
    assert statuses[-1] == 423 and "retry-after" in page.headers
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    locked = await locker.post(meta["authorization_endpoint"],
                               data={**query(url), "csrf_token": csrf, "username": user["username"],
                                     "password": password})
    assert locked.status_code == 423
    from nexus_ray.deployments.auth.auth import lockout

    await lockout.release(username=user["username"])


# -- what the provider refuses --------------------------------------------------------------------


async def test_refresh_token_reuse_revokes_the_family(client, browser, meta, bearer):
    registered = await register(client, bearer)
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    oauth, first, _, _ = await sign_in(client, browser, meta, registered, scope="openid auth:users:read",
                                       session=session)
    second = keep(await oauth.refresh_token(meta["token_endpoint"], refresh_token=first["refresh_token"]))
    third = keep(await oauth.refresh_token(meta["token_endpoint"], refresh_token=second["refresh_token"]))

    # The first refresh token was rotated away: presenting it again means it was copied.
    with pytest.raises(OAuthError) as reuse:
        await oauth.refresh_token(meta["token_endpoint"], refresh_token=first["refresh_token"])
    assert reuse.value.error == "invalid_grant"
    # The whole family is revoked: the newest refresh token too, and the access tokens introspect inactive.
    with pytest.raises(OAuthError) as revoked:
        await oauth.refresh_token(meta["token_endpoint"], refresh_token=third["refresh_token"])
    assert revoked.value.error == "invalid_grant"
    for t in (third["access_token"], third["refresh_token"], first["access_token"]):
        r = await oauth.introspect_token(meta["introspection_endpoint"], token=t)
        assert r.status_code == 200 and r.json() == {"active": False}
    pg = await postgres.pool()
    reason = await pg.fetchval("SELECT revoked_reason FROM oauth_grants WHERE client_id = $1",
                               registered["client_id"])
    assert reason == "refresh-token-reused"


async def test_concurrent_uses_of_one_code_or_refresh_token_succeed_once(client, browser, meta, bearer):
    """Single use holds under concurrency: of two simultaneous exchanges exactly one gets tokens; the other
    is a replay (code) or a reuse (refresh token), and the grant is revoked."""
    registered = await register(client, bearer)
    auth = (registered["client_id"], registered["client_secret"])
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    oauth = app_client(client, registered, scope="openid auth:users:read", redirect_uri=CALLBACK)
    verifier = generate_token(48)
    url, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    r = await browser().get(url, headers={"Cookie": f"nexus_session={session}"})
    code = query(r.headers["location"])["code"]
    SECRETS.append(code)
    exchange = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "code_verifier": verifier}
    results = await asyncio.gather(*(token_request(client, exchange, auth=auth) for _ in range(2)))
    assert sorted(r.status_code for r in results) == [200, 400]
    (won,) = [r.json() for r in results if r.status_code == 200]
    late = await token_request(client, {"grant_type": "refresh_token", "refresh_token": won["refresh_token"]},
                               auth=auth)
    assert late.json()["error"] == "invalid_grant"  # the replay revoked what the first exchange opened

    _, token, _, _ = await sign_in(client, browser, meta, registered, scope="openid auth:users:read",
                                   session=session)
    again = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    results = await asyncio.gather(*(token_request(client, again, auth=auth) for _ in range(2)))
    assert sorted(r.status_code for r in results) == [200, 400]
    (won,) = [r.json() for r in results if r.status_code == 200]
    late = await token_request(client, {"grant_type": "refresh_token", "refresh_token": won["refresh_token"]},
                               auth=auth)
    assert late.json()["error"] == "invalid_grant"


async def test_code_is_single_use_and_a_replay_revokes_its_tokens(client, browser, meta, bearer):
    registered = await register(client, bearer)
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    oauth, token, location, verifier = await sign_in(client, browser, meta, registered,
                                                     scope="openid auth:users:read", session=session)
    active = await oauth.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
    assert active.json()["active"] is True

    replay = await token_request(client, {"grant_type": "authorization_code", "code": query(location)["code"],
                                          "redirect_uri": CALLBACK, "code_verifier": verifier},
                                 auth=(registered["client_id"], registered["client_secret"]))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    with pytest.raises(OAuthError) as refused:
        await oauth.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert refused.value.error == "invalid_grant"
    inactive = await oauth.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
    assert inactive.json() == {"active": False}


async def test_redirect_uri_must_match_exactly(client, browser, meta, bearer):
    registered = await register(client, bearer, redirect_uris=[CALLBACK, CALLBACK + "2"])
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    agent = browser()
    oauth = app_client(client, registered, scope="openid")
    for wrong in (CALLBACK + "/", CALLBACK.upper(), CALLBACK + "?x=1", "https://evil.example/callback"):
        url, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=generate_token(48),
                                                redirect_uri=wrong)
        r = await agent.get(url, headers={"Cookie": f"nexus_session={session}"})
        # Never redirected to an unregistered URI: the error is for the user, in OAuth's JSON.
        assert r.status_code == 400 and "location" not in r.headers
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "invalid_request" and r.json()["error_description"].startswith("redirect_uri")

    # At the token endpoint, the redirect URI must be the authorization request's, even if registered too.
    verifier = generate_token(48)
    url, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier,
                                            redirect_uri=CALLBACK)
    r = await agent.get(url, headers={"Cookie": f"nexus_session={session}"})
    code = query(r.headers["location"])["code"]
    SECRETS.append(code)
    r = await token_request(client, {"grant_type": "authorization_code", "code": code,
                                     "redirect_uri": CALLBACK + "2", "code_verifier": verifier},
                            auth=(registered["client_id"], registered["client_secret"]))
    assert r.status_code == 400 and r.json() == {
        "error": "invalid_grant", "error_description": "redirect_uri: does not match the authorization request"}


async def test_pkce_is_required_and_plain_refused(client, browser, meta, bearer):
    registered = await register(client, bearer)
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    agent = browser()
    cookie = {"Cookie": f"nexus_session={session}"}
    verifier = generate_token(48)
    base = {"response_type": "code", "client_id": registered["client_id"], "redirect_uri": CALLBACK,
            "scope": "openid", "state": "s-123"}

    r = await agent.get(meta["authorization_endpoint"], headers=cookie,
                        params={**base, "code_challenge": verifier, "code_challenge_method": "plain"})
    assert r.status_code == 302
    error = query(r.headers["location"])
    assert error["error"] == "invalid_request" and error["error_description"].startswith("code_challenge_method")
    assert error["state"] == "s-123" and error["iss"] == meta["issuer"]
    r = await agent.get(meta["authorization_endpoint"], headers=cookie, params=base)  # no PKCE at all
    assert query(r.headers["location"])["error"] == "invalid_request"
    r = await agent.get(meta["authorization_endpoint"], headers=cookie,  # method defaults to plain
                        params={**base, "code_challenge": "a" * 43})
    assert query(r.headers["location"])["error_description"].startswith("code_challenge_method")

    # A code bound to a challenge is worth nothing without its verifier.
    oauth = app_client(client, registered, scope="openid", redirect_uri=CALLBACK)
    url, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    code = query((await agent.get(url, headers=cookie)).headers["location"])["code"]
    SECRETS.append(code)
    r = await token_request(client, {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                                     "code_verifier": generate_token(48)},
                            auth=(registered["client_id"], registered["client_secret"]))
    assert r.json() == {"error": "invalid_grant",
                        "error_description": "code_verifier: does not match the code_challenge"}
    # ...and it was used up by the attempt.
    r = await token_request(client, {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                                     "code_verifier": verifier},
                            auth=(registered["client_id"], registered["client_secret"]))
    assert r.json()["error"] == "invalid_grant"


async def test_expired_code_and_unknown_client(client, browser, meta, bearer, monkeypatch):
    registered = await register(client, bearer)
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    oauth = app_client(client, registered, scope="openid", redirect_uri=CALLBACK)
    verifier = generate_token(48)
    url, _ = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
    code = query((await browser().get(url, headers={"Cookie": f"nexus_session={session}"})).headers["location"])[
        "code"]
    SECRETS.append(code)
    pg = await postgres.pool()
    await pg.execute("UPDATE oauth_codes SET expires_at = now() - interval '1 second' WHERE client_id = $1",
                     registered["client_id"])
    r = await token_request(client, {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
                                     "code_verifier": verifier},
                            auth=(registered["client_id"], registered["client_secret"]))
    assert r.json() == {"error": "invalid_grant", "error_description": "code: expired"}

    r = await browser().get(meta["authorization_endpoint"], params={
        "response_type": "code", "client_id": "nxc_" + "0" * 24, "redirect_uri": CALLBACK})
    assert r.status_code == 400 and r.json()["error_description"].startswith("client_id")


async def test_token_endpoint_errors_speak_rfc_6749(client, bearer):
    registered = await register(client, bearer, grant_types=["client_credentials"], redirect_uris=[])
    cid, secret = registered["client_id"], registered["client_secret"]
    cases = [
        # (data, auth, extra kwargs, status, error, field named in the description)
        ({"grant_type": "client_credentials"}, None, {}, 401, "invalid_client", None),
        ({"grant_type": "client_credentials"}, (cid, "wrong-secret"), {}, 401, "invalid_client", "client_secret"),
        ({"grant_type": "client_credentials", "client_id": cid, "client_secret": "nope"}, None, {}, 401,
         "invalid_client", "client_secret"),
        ({"grant_type": "client_credentials", "client_secret": secret}, (cid, secret), {}, 400, "invalid_request",
         "client_secret"),
        ({}, (cid, secret), {}, 400, "invalid_request", "grant_type"),
        ({"grant_type": "password"}, (cid, secret), {}, 400, "unsupported_grant_type", "grant_type"),
        ({"grant_type": "authorization_code"}, (cid, secret), {}, 400, "unauthorized_client", "grant_type"),
        ({"grant_type": "client_credentials", "scope": "nothing:granted:here"}, (cid, secret), {}, 400,
         "invalid_scope", "scope"),
        ({"grant_type": "client_credentials", "scope": 'bad"quote'}, (cid, secret), {}, 400, "invalid_scope",
         "scope"),
    ]
    for data, auth, kwargs, status, error, field in cases:
        r = await token_request(client, data, auth=auth, **kwargs)
        assert (r.status_code, r.json()["error"]) == (status, error), (data, r.text)
        if field:
            assert r.json()["error_description"].startswith(field), r.json()
        if status == 401 and auth is not None:
            assert r.headers["www-authenticate"].startswith("Basic")

    basic = {"Authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()}
    for content, headers, field in [
        (b"grant_type=client_credentials&grant_type=client_credentials", {}, "grant_type"),
        (b'{"grant_type": "client_credentials"}', {"Content-Type": "application/json"}, "content-type"),
        (b"grant_type=%ff%fe", {}, "body"),
        (b"grant_type=client_credentials", {"Authorization": "Basic !!!"}, "authorization"),
    ]:
        h = {"Content-Type": "application/x-www-form-urlencoded", **basic, **headers}
        r = await client.post(f"{OAUTH}/token", content=content, headers=h)
        assert 400 <= r.status_code < 500 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error_description"].startswith(field), r.json()


# -- client credentials, the edge, revocation, introspection ----------------------------------------


async def test_client_credentials_token_works_at_the_edge_for_its_scopes_only(client, meta, bearer):
    registered = await register(client, bearer, grant_types=["client_credentials"], redirect_uris=[],
                                allowed_scopes=["platform:gateway:read", "commerce:orders:read"])
    oauth = app_client(client, registered, scope="platform:gateway:read auth:users:admin")
    token = keep(await oauth.fetch_token(meta["token_endpoint"], grant_type="client_credentials"))
    assert token["scope"] == "platform:gateway:read"  # allowance intersect request
    assert "refresh_token" not in token and "id_token" not in token

    ok = await client.get("/platform/v1/gateway/services", headers=bearer_of(token["access_token"]))
    assert ok.status_code == 200, ok.text
    refused = await client.get(USERS, headers=bearer_of(token["access_token"]))
    assert refused.status_code == 403 and refused.json()["required_scopes"] == ["auth:users:admin"]

    everything = keep(await app_client(client, registered).fetch_token(meta["token_endpoint"],
                                                                       grant_type="client_credentials"))
    assert everything["scope"] == "commerce:orders:read platform:gateway:read"
    # client_secret_post works too
    posted = keep(await app_client(client, registered, auth_method="client_secret_post").fetch_token(
        meta["token_endpoint"], grant_type="client_credentials"))
    assert posted["access_token"]


async def test_tokens_of_this_provider_verify_at_the_edge_of_every_namespace(client, apps, meta, bearer):
    registered = await register(client, bearer, grant_types=["client_credentials"], redirect_uris=[],
                                allowed_scopes=["*"])
    token = keep(await app_client(client, registered).fetch_token(meta["token_endpoint"],
                                                                  grant_type="client_credentials"))
    narrow = keep(await app_client(client, registered, scope="nothing:at:all").fetch_token(
        meta["token_endpoint"], grant_type="client_credentials"))
    def candidates(ns: str) -> list[str]:
        """GET routes of ``ns`` that need a scope and no path parameter."""
        return [r.path for r in api_routes(apps[ns].routes)
                if "GET" in r.methods and route_guard(r)[0] == "scopes" and route_guard(r)[1]
                and not r.dependant.path_params]

    checked = set()
    for ns in NAMESPACES:
        for route in candidates(ns)[:1]:
            path = f"/{ns}{route}"
            ok = await client.get(path, headers=bearer_of(token["access_token"]))
            assert ok.status_code not in (401, 403), (path, ok.status_code, ok.text)
            denied = await client.get(path, headers=bearer_of(narrow["access_token"]))
            assert denied.status_code == 403, (path, denied.status_code)
            checked.add(ns)
    assert checked == {ns for ns in NAMESPACES if candidates(ns)}
    assert {"auth", "platform", "specialized"} <= checked


async def test_revocation_and_introspection(client, meta, bearer):
    mine = await register(client, bearer, grant_types=["client_credentials"], redirect_uris=[],
                          allowed_scopes=["platform:gateway:read"])
    other = await register(client, bearer, grant_types=["client_credentials"], redirect_uris=[],
                           allowed_scopes=["platform:gateway:read"])
    resource_server = await register(client, bearer, grant_types=["client_credentials"], redirect_uris=[],
                                     allowed_scopes=[], introspect_any=True)
    oauth = app_client(client, mine)
    token = keep(await oauth.fetch_token(meta["token_endpoint"], grant_type="client_credentials"))
    access = token["access_token"]

    own = await oauth.introspect_token(meta["introspection_endpoint"], token=access)
    assert own.status_code == 200 and own.headers["content-type"] == "application/json"
    body = own.json()
    assert body["active"] is True and body["client_id"] == mine["client_id"] and body["sub"] == mine["client_id"]
    assert body["scope"] == "platform:gateway:read" and body["token_type"] == "Bearer" and body["iss"] == ISSUER
    foreign = await app_client(client, other).introspect_token(meta["introspection_endpoint"], token=access)
    assert foreign.json() == {"active": False}  # not its token
    rs = await app_client(client, resource_server).introspect_token(meta["introspection_endpoint"], token=access)
    assert rs.json()["active"] is True
    garbage = await oauth.introspect_token(meta["introspection_endpoint"], token="not-a-token")
    assert garbage.json() == {"active": False}

    edge = {"Authorization": f"Bearer {access}"}
    assert (await client.get("/platform/v1/gateway/notice", headers=edge)).status_code == 200

    anonymous = await client.post(meta["introspection_endpoint"].removeprefix(BASE), data={"token": access})
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "invalid_client"

    # Revocation (RFC 7009): only by the client it was issued to; unknown tokens are no error.
    r = await app_client(client, other).revoke_token(meta["revocation_endpoint"], token=access)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = await oauth.revoke_token(meta["revocation_endpoint"], token="nxr_unknown-token-value-123456")
    assert r.status_code == 200
    r = await oauth.revoke_token(meta["revocation_endpoint"], token=access, token_type_hint="bogus")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_token_type"
    r = await oauth.revoke_token(meta["revocation_endpoint"], token=access, token_type_hint="access_token")
    assert r.status_code == 200
    gone = await oauth.introspect_token(meta["introspection_endpoint"], token=access)
    assert gone.json() == {"active": False}
    refused = await client.get("/platform/v1/gateway/notice", headers=edge)  # the edge refuses it at once
    assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"


async def test_revoking_a_refresh_token_ends_the_sign_in(client, browser, meta, bearer):
    registered = await register(client, bearer, client_type="public")
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    oauth, token, _, _ = await sign_in(client, browser, meta, registered, scope="openid auth:users:read",
                                       session=session)
    edge = {"Authorization": f"Bearer {token['access_token']}"}
    assert (await client.get("/auth/v1/users/me", headers=edge)).status_code == 200
    r = await oauth.revoke_token(meta["revocation_endpoint"], token=token["refresh_token"],
                                 token_type_hint="refresh_token")
    assert r.status_code == 200
    with pytest.raises(OAuthError) as refused:
        await oauth.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert refused.value.error == "invalid_grant"
    # The sign-in's access token ends with it at the edge (by its grant id).
    assert (await client.get("/auth/v1/users/me", headers=edge)).status_code == 401


# -- administration -------------------------------------------------------------------------------


async def test_client_administration(client, meta, bearer):
    admin = bearer("auth:oauth:admin", "platform:gateway:read", subject="limited-admin")
    bad = [
        ({"redirect_uris": ["http://app.example/cb"]}, "redirect_uris[0]"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "redirect_uris[0]"),
        ({"redirect_uris": ["https://*.example/cb"]}, "redirect_uris[0]"),
        ({"redirect_uris": ["/relative"]}, "redirect_uris[0]"),
        ({"grant_types": ["implicit"]}, "grant_types[0]"),
        ({"allowed_scopes": ["Not A Scope"]}, "allowed_scopes[0]"),
        ({"client_type": "public", "grant_types": ["client_credentials"]}, "grant_types"),
        ({"grant_types": ["refresh_token"]}, "grant_types"),
        ({"redirect_uris": []}, "redirect_uris"),
        ({"client_type": "public", "grant_types": ["authorization_code"], "introspect_any": True}, "introspect_any"),
        ({"secret": "mine"}, "secret"),
    ]
    base = {"name": "Admin test", "client_type": "confidential", "redirect_uris": [CALLBACK],
            "allowed_scopes": ["platform:gateway:read"], "grant_types": ["authorization_code", "client_credentials"]}
    for change, field in bad:
        r = await client.post(f"{OAUTH}/clients", json={**base, **change}, headers=admin)
        assert r.status_code == 422, (change, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in r.json()["errors"]] == [field], (change, r.json())
    # Only scopes the administrator holds may be allowed to a client.
    r = await client.post(f"{OAUTH}/clients", json={**base, "allowed_scopes": ["commerce:orders:write"]},
                          headers=admin)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "allowed_scopes"

    r = await client.post(f"{OAUTH}/clients", json={**base, "redirect_uris": [CALLBACK, "http://127.0.0.1:8765/cb",
                                                                               "com.example.app:/oauth"]},
                          headers=admin)
    assert r.status_code == 201, r.text
    created = r.json()
    secret = created["client_secret"]
    SECRETS.append(secret)
    cid = created["client_id"]
    pg = await postgres.pool()
    stored = await pg.fetchval("SELECT secret_hash FROM oauth_clients WHERE client_id = $1", cid)
    assert len(stored) == digests.DIGEST_BYTES and secret.encode() not in stored

    r = await client.get(f"{OAUTH}/clients/{cid}", headers=admin)
    assert r.status_code == 200 and "client_secret" not in r.json()
    r = await client.get(f"{OAUTH}/clients", headers=admin, params={"limit": 500})
    assert cid in [c["client_id"] for c in r.json()["items"]]
    r = await client.patch(f"{OAUTH}/clients/{cid}", json={"name": "Renamed", "grant_types": ["client_credentials"]},
                           headers=admin)
    assert r.status_code == 200 and r.json()["name"] == "Renamed"
    r = await client.patch(f"{OAUTH}/clients/{cid}", json={"allowed_scopes": ["auth:users:admin"]}, headers=admin)
    assert r.status_code == 403
    r = await client.patch(f"{OAUTH}/clients/{cid}", json={"name": None}, headers=admin)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name"

    oauth = app_client(client, created)
    keep(await oauth.fetch_token(meta["token_endpoint"], grant_type="client_credentials"))
    r = await client.post(f"{OAUTH}/clients/{cid}/secret", headers=admin)
    assert r.status_code == 200
    new_secret = r.json()["client_secret"]
    SECRETS.append(new_secret)
    with pytest.raises(OAuthError) as old:
        await oauth.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    assert old.value.error == "invalid_client"
    keep(await app_client(client, {**created, "client_secret": new_secret}).fetch_token(
        meta["token_endpoint"], grant_type="client_credentials"))

    assert (await client.delete(f"{OAUTH}/clients/{cid}", headers=admin)).status_code == 204
    assert (await client.delete(f"{OAUTH}/clients/{cid}", headers=admin)).status_code == 404
    assert (await client.get(f"{OAUTH}/clients/{cid}", headers=admin)).status_code == 404
    with pytest.raises(OAuthError):
        await app_client(client, {**created, "client_secret": new_secret}).fetch_token(
            meta["token_endpoint"], grant_type="client_credentials")


async def test_a_password_change_ends_the_sign_ins_at_clients(client, browser, meta, bearer):
    """A changed password used to leave every OAuth sign-in working: its refresh token kept giving new tokens."""
    registered = await register(client, bearer)
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    oauth, token, _, _ = await sign_in(client, browser, meta, registered, scope="openid auth:users:read",
                                       session=session)
    assert (await client.get(f"{USERS}/me", headers=bearer_of(token["access_token"]))).status_code == 200
    new_password = f"changed at once {uuid.uuid4().hex[:6]}"
    SECRETS.append(new_password)
    r = await client.post("/auth/v1/auth/password", json={"current_password": password, "new_password": new_password},
                          headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 200 and r.json()["grants_revoked"] == 1, r.text
    SECRETS.append(r.json()["session"]["session_token"])
    assert (await client.get(f"{USERS}/me", headers=bearer_of(token["access_token"]))).status_code == 401
    with pytest.raises(OAuthError) as refused:
        await oauth.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    assert refused.value.error == "invalid_grant"

    # Signing in again (the new session the change returned) works at once.
    _, again, _, _ = await sign_in(client, browser, meta, registered, scope="openid auth:users:read",
                                   session=r.json()["session"]["session_token"])
    assert (await client.get(f"{USERS}/me", headers=bearer_of(again["access_token"]))).status_code == 200


async def test_deleting_a_client_ends_its_access_tokens(client, browser, meta, bearer):
    """Its access tokens, its users' and its own, used to pass the edge until they expired."""
    registered = await register(client, bearer, grant_types=["authorization_code", "refresh_token",
                                                              "client_credentials"],
                                allowed_scopes=["auth:users:read", "platform:gateway:read"])
    user, password = await new_user(client)
    session = await session_of(client, user["username"], password)
    _, users_token, _, _ = await sign_in(client, browser, meta, registered, scope="auth:users:read", session=session)
    own = keep(await app_client(client, registered).fetch_token(meta["token_endpoint"],
                                                               grant_type="client_credentials"))
    notice = "/platform/v1/gateway/notice"
    assert (await client.get(f"{USERS}/me", headers=bearer_of(users_token["access_token"]))).status_code == 200
    assert (await client.get(notice, headers=bearer_of(own["access_token"]))).status_code == 200
    r = await client.delete(f"{OAUTH}/clients/{registered['client_id']}", headers=bearer("*", subject="oauth-admin"))
    assert r.status_code == 204
    assert (await client.get(f"{USERS}/me", headers=bearer_of(users_token["access_token"]))).status_code == 401
    assert (await client.get(notice, headers=bearer_of(own["access_token"]))).status_code == 401
    # The user's own credentials are not the client's: they keep working.
    assert (await client.get(f"{USERS}/me", headers={"Authorization": f"Bearer {session}"})).status_code == 200


async def test_logs_hold_no_secrets(captured_logs):
    """Runs last in the module: nothing logged while the tests above ran holds any secret they handled."""
    assert SECRETS
    text = "\n".join(
        f"{r.getMessage()} {r.args!r} {getattr(r, '__dict__', {})!r}" for r in captured_logs
    )
    leaked = [s for s in SECRETS if s and s in text]
    assert leaked == []
