"""chat-service's schemas: rooms, members, policy, messages, reports, mutes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ROOM_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
USER_ID_PATTERN = r"^[A-Za-z0-9_.@:-]{1,128}$"


class Policy(BaseModel):
    """The room's moderation filter: messages with a blocked word, or any link when links are blocked, are refused."""

    model_config = ConfigDict(extra="forbid")

    blocked_words: list[str] = Field(default_factory=list, max_length=500,
                                     description="Words refused in messages (whole words, any case).")
    block_links: bool = Field(False, description="Refuse messages that contain a link.")


class RoomCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    room_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=ROOM_ID_PATTERN,
                         description="The room's id, chosen by the client to make creation idempotent (creating "
                         "it again returns it); a new one when omitted.")
    name: str = Field(min_length=1, max_length=200)
    policy: Policy = Field(default_factory=Policy)


class RoomRead(BaseModel):
    room_id: str
    name: str
    created_by: str
    members: dict[str, Literal["member", "moderator"]] = Field(description="Each member's role.")
    seq: int = Field(description="Sequence number of the room's last message (0: none yet).")
    reads: dict[str, int] = Field(description="Read receipts: each member's last read sequence number.")
    policy: Policy
    muted: dict[str, datetime] = Field(description="Muted members and until when.")


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["member", "moderator"] = "member"


class MuteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: int = Field(ge=1, le=60 * 24 * 365, description="How long the member may not post.")


class MessageEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=4000)


class MessageRead(BaseModel):
    room_id: str
    seq: int = Field(description="Per-room sequence number: increasing, never reused (gaps are possible).")
    sender: str
    client_id: str = Field(description="The sender's own id of the message (dedup of resends).")
    text: str | None = Field(description="Null once deleted.")
    sent_at: datetime
    edited: bool
    edited_at: datetime | None
    deleted: bool


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class ReportRead(BaseModel):
    report_id: str
    room_id: str
    seq: int
    reported_by: str
    reason: str
    reported_at: datetime
