"""ai-dispatch's own settings (variables ``NEXUS_DISPATCH_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class DispatchSettings(ServiceSettings):
    """The loop's pace, the offers' lifetime and the cost model of a driver-job pair."""

    dispatch_interval_s: float = Field(2.0, gt=0, description="Time between dispatch rounds, seconds.")
    dispatch_lease_s: float = Field(
        10.0, gt=0, description="How long a replica's loop stays the live one without renewing its lease, seconds.",
    )
    dispatch_offer_ttl_s: float = Field(30.0, gt=0, description="How long a driver has to answer an offer, seconds.")
    dispatch_speed_kmh: float = Field(25.0, gt=0, description="Average road speed used for travel times, km/h.")
    dispatch_detour: float = Field(
        1.35, ge=1, description="Road distance over great-circle distance (the cost model's detour factor).",
    )
    dispatch_max_pickup_km: float = Field(
        15.0, gt=0, description="A driver farther than this from a pickup is not offered the job, km.",
    )
    dispatch_handling_s: float = Field(
        600.0, ge=0, description="Time at pickup and drop-off together, seconds (for the shift-end check).",
    )
    dispatch_max_jobs: int = Field(2000, ge=1, description="Open jobs considered in one round (oldest first).")
