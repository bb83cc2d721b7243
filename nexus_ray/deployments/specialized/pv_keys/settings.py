"""pv-keys' own settings (``NEXUS_`` variables, read with :func:`~nexus_ray.deployments.kit.settings.settings_of`)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class PvKeysSettings(ServiceSettings):
    """Settings only pv-keys (and key-service, for the pv-keys signing keys) reads."""

    pv_key_max_ttl_s: int = Field(
        365 * 86400,
        ge=60,
        description="Longest lifetime of a pv-keys access key, seconds; a rotated pv-keys signing key keeps "
        "verifying this long after its rotation.",
    )
