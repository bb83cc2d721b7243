"""This service's own settings: the fields only it reads, from `NEXUS_<FIELD>` variables (kit.settings)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings, settings_of


class UsersSettings(ServiceSettings):
    """user-auth: email verification and the mail provider."""

    email_verification_ttl_s: int = Field(
        86400, ge=60, description="Seconds an email verification token stays usable (it is single-use)."
    )
    mail_provider: str = Field(
        "mailbox",
        description="Provider that delivers the identity services' mail (verification links). 'mailbox': "
        "written to the mail_outbox table in the transaction of the change, where a relay or a test reads it.",
    )


def settings() -> UsersSettings:
    """This process's UsersSettings."""
    return settings_of(UsersSettings)
