"""This service's own settings: the fields only it reads, from `NEXUS_<FIELD>` variables (kit.settings)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings, settings_of


class OAuthSettings(ServiceSettings):
    """auth-service-v2 (OAuth 2.0 / OpenID Connect provider; its issuer is the platform's jwt_issuer)."""

    oauth_code_ttl_s: int = Field(
        60, ge=5, le=600, description="Seconds an authorization code can be exchanged (once) for tokens. RFC 6749 "
        "recommends at most 600.",
    )
    oauth_access_token_ttl_s: int = Field(
        900, ge=30, description="Lifetime of the access and ID tokens the OAuth provider issues, seconds; never more "
        "than token_max_ttl_s. A revoked access token keeps passing the edge (it verifies tokens offline) until then.",
    )
    oauth_refresh_token_ttl_s: int = Field(
        14 * 86400, ge=60, description="Lifetime of a refresh token, seconds. Each use rotates it: its successor "
        "gets a new lifetime, within oauth_grant_max_age_s.",
    )
    oauth_grant_max_age_s: int = Field(
        90 * 86400, ge=60, description="Longest life of one sign-in at a client (a refresh-token family), seconds: "
        "after it, the user signs in again however often the tokens were refreshed.",
    )
    oauth_session_cookie: str = Field(
        "nexus_session", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Cookie in which the OAuth provider's "
        "/authorize keeps the user's legacy session token (set by its login form, HttpOnly, limited to the "
        "provider's path), so that a signed-in user is not asked for the password again.",
    )


def settings() -> OAuthSettings:
    """This process's OAuthSettings."""
    return settings_of(OAuthSettings)
