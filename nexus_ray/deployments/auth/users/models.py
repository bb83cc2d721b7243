"""Schemas of user-auth: users and profiles, roles, API keys, verification, export and erasure."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,30}[A-Za-z0-9]$"
ROLE_PATTERN = r"^[a-z][a-z0-9-]{1,39}$"
LOCALE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"

# A scope the edge can check: `*`, `<namespace>:*`, `<namespace>:<slug>:*` or `<namespace>:<slug>:<action>`.
_SCOPE = re.compile(r"^(\*|[a-z][a-z0-9-]*:(\*|[a-z0-9][a-z0-9-]*:(\*|[a-z0-9][a-z0-9-]*)))$")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def normalize_email(value: str) -> str:
    """``value`` as a deliverable address (domain lower-cased, IDNA-encoded); ValueError if it is not one."""
    value = value.strip()
    if len(value) > 254:
        raise ValueError("an email address has at most 254 characters")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("an email address reads name@domain")
    if len(local) > 64 or not _LOCAL_PART.match(local):
        raise ValueError("the part before @ is not a valid mailbox name")
    try:
        domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError("the domain is not a valid host name") from None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise ValueError("the domain is not a valid host name")
    return f"{local}@{domain}"


def check_scope(value: str) -> str:
    if not _SCOPE.match(value):
        raise ValueError("a scope reads <namespace>:<slug>:<action>, with * for any part from the right")
    return value


Email = Annotated[str, Field(min_length=3, max_length=254), AfterValidator(normalize_email)]
Scope = Annotated[str, Field(max_length=120), AfterValidator(check_scope)]
Username = Annotated[str, Field(pattern=USERNAME_PATTERN, description="3 to 32 letters, digits, '.', '_' or '-'.")]
RoleName = Annotated[str, Field(pattern=ROLE_PATTERN)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class UserBase(_Input):
    display_name: str | None = Field(None, min_length=1, max_length=100)
    locale: str | None = Field(None, pattern=LOCALE_PATTERN, max_length=35, description="BCP 47 tag, e.g. en-GB.")
    bio: str | None = Field(None, max_length=500)


class UserCreate(UserBase):
    """Registration of a person."""

    username: Username
    email: Email
    password: SecretStr = Field(description="Checked against the password policy; stored only as an argon2id hash.")


class ServiceAccountCreate(_Input):
    """A non-person principal that acts through API keys."""

    username: Username
    display_name: str | None = Field(None, min_length=1, max_length=100)
    roles: list[RoleName] = Field(default_factory=list, max_length=20)


class UserUpdate(UserBase):
    """Profile changes; a new email address must be verified again."""

    username: Username | None = None
    email: Email | None = None


class UserStatus(_Input):
    """An administrator's decision on an account (erasure has a route of its own)."""

    status: Literal["active", "disabled"]


class UserRead(BaseModel):
    user_id: uuid.UUID
    kind: Literal["user", "service"]
    status: Literal["active", "disabled", "erased"]
    username: str
    email: str | None
    email_verified: bool
    email_verified_at: datetime | None
    display_name: str | None
    locale: str | None
    bio: str | None
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    users: list[UserRead]
    next_after: str | None = Field(description="Pass as `after` for the next page; null on the last one.")


class EmailVerify(_Input):
    token: str = Field(min_length=10, max_length=200, description="The token from the verification mail.")


class EmailVerified(BaseModel):
    user_id: uuid.UUID
    email: str
    email_verified_at: datetime


class VerificationSent(BaseModel):
    email: str
    expires_at: datetime


class RoleWrite(_Input):
    description: str = Field("", max_length=300)
    scopes: list[Scope] = Field(max_length=100)


class RoleRead(BaseModel):
    name: str
    description: str
    builtin: bool
    scopes: list[str]
    created_at: datetime
    updated_at: datetime


class UserRoles(BaseModel):
    user_id: uuid.UUID
    roles: list[str]
    scopes: list[str] = Field(description="Effective scopes: what tokens issued to this user carry.")


class ApiKeyCreate(_Input):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1, max_length=50)
    expires_in_s: int | None = Field(None, ge=60, le=366 * 86400, description="Lifetime; none: until revoked.")


class ApiKeyRead(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    active: bool


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The full key. Shown this once: only a keyed hash of it is stored.")


class ErasureReceipt(BaseModel):
    user_id: uuid.UUID
    erased_at: datetime
    already_erased: bool
    api_keys_revoked: int
    sessions_revoked: int


class PersonalData(BaseModel):
    """Everything the identity services hold about one account."""

    format: Literal["nexus-personal-data/1"] = "nexus-personal-data/1"
    exported_at: datetime
    user: dict[str, Any]
    roles: list[dict[str, Any]]
    scopes: list[str]
    api_keys: list[dict[str, Any]]
    email_verifications: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
