"""token-mgr's own settings (variables ``NEXUS_TOKENS_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class TokenSettings(ServiceSettings):
    """How often vesting releases are looked for."""

    tokens_vesting_tick_s: float = Field(
        2.0, gt=0, description="Seconds between two looks for vesting periods that have ended and are not released.")
    tokens_vesting_batch: int = Field(
        200, ge=1, description="Schedules looked at per pass of the release loop.")
