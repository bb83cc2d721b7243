"""The OAuth 2.0 wire format of the protocol endpoints: parameters in, JSON, redirects and the sign-in page out.

These endpoints speak the RFCs' formats rather than the platform's problem+json: parameters are
form-encoded (or in the query of /authorize), sent at most once each (RFC 6749 section 3.1), empty
ones count as absent; errors are ``{"error": ..., "error_description": ...}`` JSON (section 5.2) or,
once the redirect URI is trusted, a redirect carrying them (section 4.1.2.1) with ``iss`` (RFC 9207).
Nothing here logs a parameter: they carry passwords, secrets, codes and tokens.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError, OAuth2Error
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_VALUE = 4096
MAX_FIELDS = 64
CSRF_FIELD = "csrf_token"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _name(key: str) -> str:
    """A parameter's name as it may appear in an error description (which allows only some ASCII)."""
    return key if _NAME.match(key) else "a parameter"


def unique(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Parameters as a dict: each at most once, empty ones dropped, none too long; InvalidRequestError otherwise."""
    if len(pairs) > MAX_FIELDS:
        raise InvalidRequestError(f"request: at most {MAX_FIELDS} parameters")
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidRequestError(f"{_name(key)}: must not be repeated")
        if len(value) > MAX_VALUE:
            raise InvalidRequestError(f"{_name(key)}: at most {MAX_VALUE} characters")
        if "\x00" in value:
            raise InvalidRequestError(f"{_name(key)}: must not contain NUL characters")
        if value != "":
            out[key] = value
    return out


def query_params(request: Request) -> dict[str, str]:
    return unique(request.query_params.multi_items())


async def form_params(request: Request) -> dict[str, str]:
    """The form-encoded body of a protocol request (an empty body: no parameters, whatever its type)."""
    body = await request.body()
    if not body:
        return {}
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM:
        raise InvalidRequestError(f"content-type: must be {FORM}")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("body: form-encoded UTF-8 parameters") from None
    return unique(pairs)


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """(client_id, client_secret) of HTTP Basic client authentication (RFC 6749 section 2.3.1), or None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClientError("authorization: malformed Basic credentials", status_code=401) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id:
        raise InvalidClientError("authorization: malformed Basic credentials", status_code=401)
    # The id and secret are form-encoded before Basic encoding (section 2.3.1).
    return unquote_plus(client_id), unquote_plus(secret)


def client_credentials(
    request: Request, params: dict[str, str], *, allow_public: bool
) -> tuple[str, str | None, str]:
    """(client_id, secret, method) the request authenticates its client with; takes them out of ``params``.

    One method only (section 2.3): client_secret_basic, client_secret_post or, for public clients
    where ``allow_public``, none (just ``client_id``).
    """
    basic = basic_credentials(request)
    posted_id, posted_secret = params.pop("client_id", None), params.pop("client_secret", None)
    if basic is not None:
        if posted_secret is not None:
            raise InvalidRequestError("client_secret: use one client authentication method, not two")
        if posted_id is not None and posted_id != basic[0]:
            raise InvalidRequestError("client_id: differs from the one in the Basic credentials")
        return basic[0], basic[1], "client_secret_basic"
    if posted_secret is not None:
        if posted_id is None:
            raise InvalidClientError("client_id: required with client_secret", status_code=401)
        return posted_id, posted_secret, "client_secret_post"
    if posted_id is not None and allow_public:
        return posted_id, None, "none"
    raise InvalidClientError("client authentication required (client_secret_basic or client_secret_post)",
                             status_code=401)


def json_response(
    body: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers={**NO_STORE, **(headers or {})})


def error_response(err: OAuth2Error, headers: dict[str, str] | None = None) -> JSONResponse:
    """An OAuth error as RFC 6749 section 5.2 JSON, with the headers the error asks for (WWW-Authenticate)."""
    extra = {k: v for k, v in err.get_headers() if k.lower() not in ("content-type", "cache-control", "pragma")}
    return json_response(dict(err.get_body()), err.status_code or 400, {**extra, **(headers or {})})


def redirect(uri: str, params: list[tuple[str, str | None]]) -> RedirectResponse:
    """302 to ``uri`` with ``params`` added to its query (those that are None left out)."""
    location = add_params_to_uri(uri, [(k, v) for k, v in params if v is not None])
    return RedirectResponse(location, status_code=302, headers=NO_STORE)


def error_redirect(err: OAuth2Error, *, issuer: str) -> RedirectResponse:
    """An authorization error sent back to the client's (already checked) redirect URI, with state and iss."""
    return redirect(err.redirect_uri, [*err.get_body(), ("iss", issuer)])


def cookie_path(issuer: str) -> str:
    return urlsplit(issuer).path or "/"


def login_page(
    *,
    issuer: str,
    client_name: str,
    params: dict[str, str],
    csrf: str,
    message: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The sign-in form of /authorize: it posts the authorization request back with the user's credentials."""
    e = html.escape
    hidden = "\n".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in params.items()
    )
    notice = f'<p role="alert">{e(message)}</p>' if message else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Nexus</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main>
<h1>Sign in to continue to {e(client_name)}</h1>
{notice}
<form method="post" action="{e(issuer.rstrip('/'))}/authorize">
{hidden}
<input type="hidden" name="{CSRF_FIELD}" value="{e(csrf)}">
<label>Username <input name="username" autocomplete="username" required maxlength="64"></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button>
</form></main></body></html>
"""
    response = HTMLResponse(body, status_code=status_code, headers={
        **NO_STORE,
        # The form takes a password: never inside another site's frame (clickjacking).
        "X-Frame-Options": "DENY",
        # No form-action: browsers apply it to the redirect that follows the post (to the client).
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        **(headers or {}),
    })
    return response


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
