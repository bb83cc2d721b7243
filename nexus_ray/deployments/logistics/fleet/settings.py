"""fleet-manager's own settings (variables ``NEXUS_FLEET_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class FleetSettings(ServiceSettings):
    """Batch sizes of fleet-manager's telemetry ingestion and bounds of its queries."""

    fleet_telemetry_batch_max: int = Field(
        5000, ge=1, le=20000, description="Position updates one telemetry batch may carry (5,000 is about 450 KB of "
        "JSON, within the edge's default 1 MiB body limit).",
    )
    fleet_nearest_max_k: int = Field(100, ge=1, le=10000, description="Largest k of a nearest-vehicles query.")
    fleet_area_max: int = Field(5000, ge=1, description="Most vehicles an area query returns.")
