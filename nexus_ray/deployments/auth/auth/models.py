"""Schemas of auth-service: login, password changes, session exchange, sessions and lockouts."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Input):
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr = Field(description="Never logged, never stored: verified against the argon2id hash.")
    device: str = Field("", max_length=128, description="The client's name for this device, shown in session lists.")


class LoginResult(BaseModel):
    session_token: str = Field(description="Opaque; send it as `Authorization: Bearer <token>`. Shown once.")
    token_type: Literal["session"] = "session"
    user_id: uuid.UUID
    session_id: str
    expires_at: datetime = Field(description="Absolute expiry; the session also ends after idle_timeout_s unused.")
    idle_timeout_s: int


class PasswordChange(_Input):
    current_password: SecretStr
    new_password: SecretStr


class PasswordSet(_Input):
    new_password: SecretStr


class PasswordChanged(BaseModel):
    """Every credential of the account that the change ended."""

    sessions_revoked: int = Field(description="Legacy sessions ended (the one making the change included).")
    grants_revoked: int = Field(description="Sign-ins at OAuth clients ended, with their refresh tokens.")
    api_keys_revoked: int = Field(description="API keys revoked.")


class PasswordChangedSignedIn(PasswordChanged):
    """A change of the caller's own password: what ended, and the caller's new session."""

    session: LoginResult = Field(description="A new legacy session for the caller (v2 access tokens ended too: "
                                 "exchange this session for a new one).")


class ExchangeRequest(_Input):
    session_token: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(
        None, max_length=4000, description="Space-separated subset of the account's scopes; default: all of them."
    )


class ExchangeResult(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    issued_token_type: str = "urn:ietf:params:oauth:token-type:access_token"
    expires_in: int
    scope: str


class SessionRead(BaseModel):
    session_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ip: str
    user_agent: str
    device: str
    current: bool = Field(description="True for the session the request was made with.")


class LockoutRead(BaseModel):
    username: str
    locked: bool
    retry_after: int = Field(description="Seconds until the lockout ends; 0 when not locked.")
