"""auth-service-v2's pure parts: scope narrowing, redirect URI rules, the discovery document, the wire format."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError, InvalidScopeError
from authlib.oidc.discovery import OpenIDProviderMetadata
from pydantic import ValidationError
from starlette.requests import Request

from nexus_ray.deployments.auth.oauth import protocol, service
from nexus_ray.deployments.auth.oauth.models import ClientCreate, check_redirect_uri


@pytest.mark.parametrize(
    ("requested", "allowance", "held", "expected"),
    [
        # client credentials: the allowance within the request; nothing requested = the whole allowance
        (None, ["a:b:read", "c:*"], None, ["a:b:read", "c:*"]),
        (["a:b:read", "x:y:z"], ["a:b:read", "c:*"], None, ["a:b:read"]),
        (["c:d:write"], ["c:*"], None, ["c:d:write"]),
        (["c:*"], ["c:d:write", "c:e:read"], None, ["c:d:write", "c:e:read"]),
        (["*"], ["a:b:read"], None, ["a:b:read"]),
        (["a:b:read", "a:*"], ["*"], None, ["a:*"]),  # redundant scopes collapse
        (["offline_access", "Foo", "a:b:read"], ["*"], None, ["a:b:read"]),  # not platform scopes: never granted
        # a user's token: also within what the user holds
        (["a:b:read", "a:b:write"], ["a:*"], ["a:b:read"], ["a:b:read"]),
        (None, ["*"], ["a:b:read", "c:d:e"], ["a:b:read", "c:d:e"]),
        (["a:b:read"], ["a:b:read"], [], []),
    ],
)
def test_narrow_never_exceeds_the_allowance_or_the_user(requested, allowance, held, expected):
    assert service.narrow(requested, allowance=allowance, held=held) == expected


def test_openid_scopes_pass_only_in_the_code_flow():
    req = ["openid", "email", "a:b:read"]
    assert service.narrow(req, allowance=["a:b:read"], held=["a:*"], oidc=True) == ["openid", "email", "a:b:read"]
    assert service.narrow(req, allowance=["a:b:read"]) == ["a:b:read"]
    assert service.narrow(None, allowance=["a:b:read"], held=["*"], oidc=True) == ["a:b:read"]


def test_parse_scope():
    assert service.parse_scope(None) is None
    assert service.parse_scope("openid a:b:read openid") == ["openid", "a:b:read"]
    for bad in ('a"b', "a\\b", "a  b", " a"):
        with pytest.raises(InvalidScopeError):
            service.parse_scope(bad)


@pytest.mark.parametrize(
    "uri",
    ["https://app.example/cb", "https://app.example/cb?tenant=1", "http://127.0.0.1:8080/cb", "http://localhost/cb",
     "http://[::1]:9000/cb", "com.example.app:/oauth2redirect"],
)
def test_redirect_uris_that_may_be_registered(uri):
    assert check_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    ["http://app.example/cb", "https://app.example/cb#x", "https://app.example/cb#", "https://*.app.example/cb",
     "/cb", "javascript:alert(1)", "https:///cb", "https://app.example/c b", "myapp:/cb", "https://app.example/c\x00"],
)
def test_redirect_uris_that_may_not(uri):
    with pytest.raises(ValueError):
        check_redirect_uri(uri)


def test_client_create_names_the_bad_redirect_uri():
    with pytest.raises(ValidationError) as exc:
        ClientCreate(name="x", client_type="public", grant_types=["authorization_code"],
                     redirect_uris=["https://ok.example/cb", "http://bad.example/cb"])
    assert exc.value.errors()[0]["loc"] == ("redirect_uris", 1)
    with pytest.raises(ValidationError) as exc:
        ClientCreate(name="bad\x00name", client_type="public", grant_types=["authorization_code"],
                     redirect_uris=["https://ok.example/cb"])
    assert exc.value.errors()[0]["loc"] == ("name",)


def test_discovery_document_is_valid_provider_metadata():
    doc = service.discovery(issuer="https://id.example.com/auth/v2/oauth")
    OpenIDProviderMetadata(doc).validate()  # Authlib's checks of OIDC Discovery and RFC 8414
    assert doc["issuer"] == "https://id.example.com/auth/v2/oauth"
    assert doc["token_endpoint"] == "https://id.example.com/auth/v2/oauth/token"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["request_uri_parameter_supported"] is False  # its default is true
    assert "RS256" in doc["id_token_signing_alg_values_supported"]  # required by OIDC Discovery


def test_parameters_are_sent_once():
    assert protocol.unique([("a", "1"), ("b", ""), ("c", "3")]) == {"a": "1", "c": "3"}  # empty = absent
    with pytest.raises(InvalidRequestError, match="code: must not be repeated"):
        protocol.unique([("code", "1"), ("code", "2")])
    with pytest.raises(InvalidRequestError, match="a parameter: must not be repeated"):
        protocol.unique([('x"y', "1"), ('x"y', "2")])  # names outside the error charset are not echoed
    with pytest.raises(InvalidRequestError, match="state: at most"):
        protocol.unique([("state", "x" * (protocol.MAX_VALUE + 1))])
    with pytest.raises(InvalidRequestError, match="nonce: must not contain NUL"):
        protocol.unique([("nonce", "a\x00b")])  # PostgreSQL text cannot hold it: a 4xx, not a store error


def _request(headers: dict[str, str]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/token", "query_string": b"",
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def _basic(text: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}


def test_client_authentication_methods():
    assert protocol.client_credentials(_request(_basic("nxc_1:s%3Acret")), {}, allow_public=False) == (
        "nxc_1", "s:cret", "client_secret_basic")  # form-decoded (RFC 6749 section 2.3.1)
    params = {"client_id": "nxc_1", "client_secret": "s", "grant_type": "x"}
    assert protocol.client_credentials(_request({}), params, allow_public=False) == ("nxc_1", "s", "client_secret_post")
    assert params == {"grant_type": "x"}  # credentials taken out of the parameters
    assert protocol.client_credentials(_request({}), {"client_id": "nxc_1"}, allow_public=True) == (
        "nxc_1", None, "none")
    with pytest.raises(InvalidClientError):
        protocol.client_credentials(_request({}), {"client_id": "nxc_1"}, allow_public=False)
    with pytest.raises(InvalidRequestError, match="one client authentication method"):
        protocol.client_credentials(_request(_basic("nxc_1:s")), {"client_secret": "s"}, allow_public=False)
    with pytest.raises(InvalidClientError) as malformed:
        protocol.client_credentials(_request({"Authorization": "Basic %%%"}), {}, allow_public=False)
    assert malformed.value.status_code == 401
    assert protocol.client_credentials(_request({"Authorization": "Bearer abc"}), {"client_id": "nxc_1"},
                                       allow_public=True)[2] == "none"


def test_error_redirect_carries_state_and_issuer():
    err = InvalidRequestError("code_challenge: required", state="xyz", redirect_uri="https://app.example/cb?t=1")
    response = protocol.error_redirect(err, issuer="https://id.example/auth/v2/oauth")
    assert response.status_code == 302 and response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    assert location.startswith("https://app.example/cb?")
    assert parse_qs(urlsplit(location).query) == {
        "t": ["1"], "error": ["invalid_request"], "error_description": ["code_challenge: required"],
        "state": ["xyz"], "iss": ["https://id.example/auth/v2/oauth"]}


def test_error_response_is_rfc_json():
    response = protocol.error_response(InvalidClientError("client_secret: does not match", status_code=401))
    assert response.status_code == 401 and response.media_type == "application/json"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.body == b'{"error":"invalid_client","error_description":"client_secret: does not match"}'


def test_sign_in_page_escapes_what_it_echoes():
    page = protocol.login_page(issuer="https://id.example/o", client_name="<script>x</script>",
                               params={"state": '"><script>'}, csrf="c")
    body = page.body.decode()
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert page.headers["x-frame-options"] == "DENY"
