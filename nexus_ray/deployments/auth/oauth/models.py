"""Schemas of auth-service-v2: registered OAuth clients (the administration API) and the protocol's documents.

The protocol endpoints (``/authorize``, ``/token``, ``/revoke``, ``/introspect``) take form-encoded
parameters defined by the RFCs, parsed by :mod:`.protocol`; the models here describe what the
administration API takes and returns, and what the discovery document and userinfo return.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nexus_ray.deployments.auth.users.models import Scope

CLIENT_ID_PATTERN = r"^nxc_[0-9a-f]{24}$"

GrantType = Literal["authorization_code", "refresh_token", "client_credentials"]
ClientType = Literal["confidential", "public"]
IdTokenAlg = Literal["RS256", "ES256", "EdDSA"]

_PRIVATE_SCHEME = re.compile(r"^[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+$")
_LOOPBACK_NAMES = {"localhost"}


def check_redirect_uri(value: str) -> str:
    """A redirect URI a client may register (RFC 6749 section 3.1.2, RFC 8252, OAuth 2.0 Security BCP).

    Absolute, no fragment, no wildcard; https, http only to the loopback interface (native apps),
    or a private-use scheme in reverse-domain form (``com.example.app:/callback``).
    """
    if any(c.isspace() or not c.isprintable() for c in value) or "*" in value:
        raise ValueError("must not contain spaces, control characters or wildcards: redirect URIs are matched exactly")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValueError("is not a valid URI") from None
    if not parts.scheme:
        raise ValueError("must be an absolute URI")
    if parts.fragment or value.endswith("#"):
        raise ValueError("must not have a fragment")
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not host:
            raise ValueError("must name a host")
        if scheme == "http" and not _is_loopback(host):
            raise ValueError("must use https (http only for the loopback interface)")
    elif not _PRIVATE_SCHEME.match(scheme):
        raise ValueError("must use https, http to the loopback interface, or a reverse-domain private-use scheme")
    return value


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_name(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must not contain control characters")
    return value


RedirectUri = Annotated[str, Field(min_length=3, max_length=2000), AfterValidator(check_redirect_uri)]
ClientName = Annotated[
    str, Field(min_length=1, max_length=100, description="Shown to users on the sign-in page."),
    AfterValidator(check_name),
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ClientBase(_Input):
    name: ClientName
    redirect_uris: list[RedirectUri] = Field(
        default_factory=list, max_length=20,
        description="Where /authorize may send the user back; an authorization request must name one of them "
        "exactly. Required for authorization_code.",
    )
    allowed_scopes: list[Scope] = Field(
        default_factory=list, max_length=200,
        description="Platform scopes the client's tokens may carry (the OpenID scopes openid, profile and email are "
        "always allowed in the authorization code flow). A user's token is further limited to the user's own "
        "scopes. The registering administrator must hold each of them.",
    )
    grant_types: list[GrantType] = Field(
        min_length=1, max_length=3,
        description="authorization_code (users sign in; PKCE S256 required), refresh_token (rotating refresh tokens "
        "with authorization_code), client_credentials (the client acts for itself; confidential clients only).",
    )
    id_token_signed_response_alg: IdTokenAlg = Field("RS256", description="Algorithm of the client's ID tokens.")
    introspect_any: bool = Field(
        False, description="A resource server: may introspect tokens issued to any client (confidential only). "
        "Otherwise a client introspects only its own tokens.",
    )


class ClientCreate(ClientBase):
    client_type: ClientType = Field(
        description="confidential: has a secret (client_secret_basic or client_secret_post). public: no secret "
        "(browser and native apps; authentication method none)."
    )


class ClientUpdate(_Input):
    name: ClientName | None = None
    redirect_uris: list[RedirectUri] | None = Field(None, max_length=20)
    allowed_scopes: list[Scope] | None = Field(None, max_length=200)
    grant_types: list[GrantType] | None = Field(None, min_length=1, max_length=3)
    id_token_signed_response_alg: IdTokenAlg | None = None
    introspect_any: bool | None = None


class ClientRead(BaseModel):
    client_id: str
    client_type: ClientType
    name: str
    redirect_uris: list[str]
    allowed_scopes: list[str]
    grant_types: list[str]
    id_token_signed_response_alg: str
    introspect_any: bool
    token_endpoint_auth_methods: list[str] = Field(description="How the client authenticates at /token.")
    created_by: str
    created_at: datetime
    updated_at: datetime
    secret_rotated_at: datetime | None


class ClientCreated(ClientRead):
    client_secret: str | None = Field(
        description="Confidential clients only. Shown once: only a keyed hash of it is stored."
    )


class ClientSecret(BaseModel):
    client_id: str
    client_secret: str = Field(description="The new secret; the previous one stopped working. Shown once.")


class ClientPage(BaseModel):
    items: list[ClientRead]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


class UserInfo(BaseModel):
    """OpenID Connect UserInfo: ``sub`` always; profile and email claims when the token holds those scopes."""

    model_config = ConfigDict(extra="allow")

    sub: str
    name: str | None = None
    preferred_username: str | None = None
    locale: str | None = None
    email: str | None = None
    email_verified: bool | None = None


class ProviderMetadata(BaseModel):
    """The OpenID Provider Metadata document (OpenID Connect Discovery 1.0, RFC 8414)."""

    model_config = ConfigDict(extra="allow")

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    response_types_supported: list[str]
    subject_types_supported: list[str]
    id_token_signing_alg_values_supported: list[str]


class Jwks(BaseModel):
    keys: list[dict[str, Any]]
