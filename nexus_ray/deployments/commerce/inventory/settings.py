"""inventory-mgr's own settings (variables ``NEXUS_INVENTORY_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class InventorySettings(ServiceSettings):
    """How often expired reservations are released."""

    inventory_sweep_s: float = Field(
        1.0, gt=0, description="How often held reservations past their expiry are released, seconds.",
    )
    inventory_sweep_batch: int = Field(200, ge=1, le=5000, description="Reservations one sweep transaction expires.")
