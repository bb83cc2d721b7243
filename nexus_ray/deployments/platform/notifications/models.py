"""notification-service's schemas: messages, templates, contacts and preferences."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

Channel = Literal["email", "push", "sms"]
Status = Literal["queued", "sending", "sent", "failed", "dead"]
CATEGORY_PATTERN = r"^[a-z][a-z0-9_.-]{0,39}$"
LOCALE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"


class MessageCreate(BaseModel):
    """A direct send: to a user (through their contact details) or to an address, on one channel."""

    model_config = ConfigDict(extra="forbid")

    client_message_id: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Your id for this message: sending again with the same id returns the first message.")
    channel: Channel = Field(..., description="email, push or sms.")
    user_id: str | None = Field(None, max_length=200, description="Recipient user (their contact details).")
    to: str | None = Field(None, max_length=2000, description="Recipient address instead of a user: email "
                           "address, phone number or push endpoint (admin scope).")
    template: str = Field("direct.message", max_length=100, pattern=r"^[a-z][a-z0-9_.-]*$",
                          description="Template key.")
    locale: str | None = Field(None, pattern=LOCALE_PATTERN, description="Default: the user's, else the service's.")
    category: str = Field("direct", pattern=CATEGORY_PATTERN, description="What the message is about.")
    data: dict[str, Any] = Field(default_factory=dict, description="Values of the template's placeholders.")
    urgent: bool = Field(False, description="Urgent messages are sent during quiet hours too.")


class MessageRead(BaseModel):
    id: UUID
    client_message_id: str | None
    created_by: str
    user_id: str | None
    channel: Channel
    category: str
    template: str
    locale: str
    recipient: str
    subject: str
    body_text: str
    urgent: bool
    status: Status
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_error: str | None
    source_event: UUID | None
    created_at: datetime
    sent_at: datetime | None


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field("", max_length=500)
    body_text: str = Field(..., min_length=1, max_length=100_000)
    body_html: str = Field("", max_length=200_000)


class TemplateRead(TemplateBody):
    key: str
    channel: Channel
    locale: str
    updated_at: datetime


class PushSubscription(BaseModel):
    endpoint: str = Field(..., pattern=r"^https://", max_length=2000, description="The push service's URL.")
    keys: dict[str, str] = Field(default_factory=dict, description="p256dh and auth of the subscription.")


class Preferences(BaseModel):
    """A user's contact details, quiet hours and channels per category."""

    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str | None = Field(None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164.")
    push: list[PushSubscription] = Field(default_factory=list, max_length=20)
    locale: str = Field("en", pattern=LOCALE_PATTERN)
    timezone: str = Field("UTC", max_length=64, description="IANA zone of the quiet hours.")
    quiet_start: time | None = Field(None, description="Local time quiet hours start (non-urgent messages wait).")
    quiet_end: time | None = Field(None, description="Local time quiet hours end.")
    channels: dict[str, list[Channel]] = Field(
        default_factory=dict, description="Channels per category; a category not named uses the defaults.")
