"""session-mgr's schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SESSION_ID_PATTERN = r"^[0-9a-f]{32}$"


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    device: str = Field(min_length=1, max_length=128, description="The client's name for the device.")
    ip: IPvAnyAddress | None = Field(None, description="The user's address; default: the caller's.")
    user_agent: str | None = Field(None, max_length=512, description="Default: the request's User-Agent.")
    idle_timeout_s: int | None = Field(None, ge=1, description="Default and maximum: session_idle_timeout_s.")
    absolute_timeout_s: int | None = Field(None, ge=1, description="Default and maximum: session_absolute_timeout_s.")


class SessionRead(BaseModel):
    session_id: str
    user_id: str
    device: str
    ip: str
    user_agent: str
    created_at: datetime
    last_used_at: datetime
    idle_timeout_s: int
    absolute_timeout_s: int
    idle_expires_at: datetime = Field(description="When the session ends unless used before.")
    expires_at: datetime = Field(description="When the session ends however it is used.")


class Revoked(BaseModel):
    revoked: int = Field(description="How many sessions ended.")
