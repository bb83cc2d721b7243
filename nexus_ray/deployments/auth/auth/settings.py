"""This service's own settings: the fields only it reads, from `NEXUS_<FIELD>` variables (kit.settings)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings, settings_of


class AuthSettings(ServiceSettings):
    """auth-service (legacy login): password policy and hashing, lockout and address throttling, sessions, exchange."""

    password_min_length: int = Field(10, ge=8, le=64, description="Shortest password accepted, characters.")
    password_time_cost: int = Field(
        3, ge=1, description="argon2id iterations (RFC 9106 low-memory profile: 3). Raising it slows every guess."
    )
    password_memory_kib: int = Field(
        65536, ge=8192, description="argon2id memory per hash, KiB (RFC 9106 low-memory profile: 64 MiB)."
    )
    password_parallelism: int = Field(4, ge=1, description="argon2id lanes per hash (RFC 9106: 4).")
    auth_lockout_threshold: int = Field(
        5, ge=1, description="Failed logins for one account, within auth_lockout_window_s, that lock it."
    )
    auth_lockout_window_s: int = Field(
        900, ge=1, description="Seconds over which an account's failed logins are counted towards a lockout."
    )
    auth_lockout_duration_s: int = Field(
        900, ge=1, description="Seconds a locked account refuses every login (423 with Retry-After) before release."
    )
    auth_address_max_failures: int = Field(
        30, ge=1, description="Failed logins one client address may make, over all accounts, per auth_address_window_s "
        "before its logins are refused (429 with Retry-After).",
    )
    auth_address_window_s: int = Field(
        300, ge=1, description="Seconds over which a client address's failed logins are counted."
    )
    auth_session_idle_s: int = Field(
        1800, ge=1, description="A legacy session token unused this many seconds expires."
    )
    auth_session_absolute_s: int = Field(
        43200, ge=1, description="A legacy session token expires this many seconds after login, however used."
    )
    auth_exchange_ttl_s: int = Field(
        900, ge=30, le=86400, description="Lifetime of a v2 access token obtained by exchanging a legacy session, s."
    )


def settings() -> AuthSettings:
    """This process's AuthSettings."""
    return settings_of(AuthSettings)
