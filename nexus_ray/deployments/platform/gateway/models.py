"""backend-api's schemas: the service directory, the platform notice, the OpenAPI index."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ServiceHealth(BaseModel):
    """One service in the directory, with its live readiness."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str
    path: str = Field(description="Public path prefix of the service's v1 API.")
    port: int = Field(description="The service's legacy port (catalog).")
    tier: int = Field(description="Service level: 1 = 99.99 %, 2 = 99.95 %, 3 = 99.9 %.")
    ready: bool
    stores: dict[str, str] = Field(default_factory=dict, description="Each store the service needs: ok or why not.")
    error: str | None = Field(None, description="Why the namespace hosting the service could not be asked.")


class Directory(BaseModel):
    count: int
    ready: int
    services: list[ServiceHealth]


class NoticeIn(BaseModel):
    """A platform-wide notice shown to every client (maintenance windows, incidents)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=500, description="Text shown to users.")
    severity: Literal["info", "warning", "critical"] = Field("info", description="How prominently to show it.")
    until: datetime | None = Field(None, description="When the notice expires (UTC); none: until cleared.")


class NoticeRead(NoticeIn):
    model_config = ConfigDict(extra="ignore")

    set_by: str
    set_at: datetime


class CurrentNotice(BaseModel):
    notice: NoticeRead | None = Field(description="The notice in force, or null.")


class NamespaceDocs(BaseModel):
    namespace: str
    openapi: str
    docs: str
    services: list[str]


class OpenApiIndex(BaseModel):
    namespaces: list[NamespaceDocs]


class DeadLetterRead(BaseModel):
    """An event a consumer gave up on after its last attempt, and where its replay stands."""

    id: int
    consumer: str = Field(description="The consumer group that could not handle it.")
    event_id: str
    topic: str
    key: str | None
    data: dict[str, Any]
    occurred_at: datetime
    attempts: int
    error_type: str
    error_message: str = Field(description="The last error, redacted and shortened.")
    first_failed_at: datetime
    dead_at: datetime
    status: Literal["dead", "replaying", "replayed"]
    replay_requested_at: datetime | None
    replayed_at: datetime | None


class HomeSource(BaseModel):
    """One source of the home view: what it answered, or why it did not."""

    service: str = Field(description="The catalog service asked.")
    status: Literal["ok", "timeout", "unavailable", "absent"] = Field(
        description="ok: answered in time; timeout: not within the deadline; unavailable: down or failed; "
        "absent: the service does not provide a home summary (yet).")
    data: dict[str, Any] | None = Field(description="The service's summary; null unless ok.")
    elapsed_ms: float


class HomeView(BaseModel):
    """The user's home: each source's summary, and whether any is missing."""

    user_id: str
    partial: bool = Field(description="True when any source is not ok.")
    deadline_ms: int = Field(description="How long each source was given.")
    sources: dict[str, HomeSource]
