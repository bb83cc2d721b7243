"""puabo-nexus (deliveries)' own settings (variables ``NEXUS_DELIVERIES_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class DeliverySettings(ServiceSettings):
    """Proof uploads, the default pickup of shipments, driver fees and the dispatch submission loop."""

    deliveries_proof_max_bytes: int = Field(
        512 * 1024, ge=1024, le=1_000_000, description="Largest proof of delivery (signature or photo), bytes; "
        "below the edge's body limit.",
    )
    deliveries_depot_lat: float | None = Field(
        None, ge=-90, le=90, description="Pickup latitude of deliveries made from shipments (the depot).")
    deliveries_depot_lon: float | None = Field(None, ge=-180, le=180, description="Pickup longitude of the depot.")
    deliveries_default_fee: int = Field(
        500, ge=0, description="Driver's fee of a delivery made from a shipment, minor units of the currency below.")
    deliveries_currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="Currency of default driver fees.")
    deliveries_submit_every_s: float = Field(
        2.0, gt=0, description="How often deliveries not yet submitted to ai-dispatch are submitted, seconds.")
