"""order-processor's own settings (variables ``NEXUS_ORDER_*``)."""

from __future__ import annotations

from pydantic import Field

from nexus_ray.deployments.kit.settings import ServiceSettings


class OrderSettings(ServiceSettings):
    """Saga leases, recovery and the reservation it asks for."""

    order_reservation_ttl_s: int = Field(
        900, ge=1, description="Seconds the stock of an order is held before the saga captures payment.",
    )
    order_authorization_hold_s: int = Field(
        7 * 86400, ge=1, description="Seconds the stock of a manual-capture order is held while it waits at "
        "authorised (as long as a card authorisation lasts).",
    )
    order_lease_s: float = Field(
        30.0, gt=0, description="How long a saga runner owns an order without writing; past it, recovery takes "
        "the order over (the deadline of a crashed runner). Longer than the slowest step call.",
    )
    order_recovery_interval_s: float = Field(
        1.0, gt=0, description="How often unsettled orders past their lease are looked for, seconds.",
    )
    order_max_attempts: int = Field(
        5, ge=1, description="Runs of the saga that may end on an unanswered step before the order is compensated.",
    )
    order_invoice_series: str = Field("ORD", description="Invoice series of orders.")
    order_start_spacing_ms: float = Field(
        50.0, ge=0, description="Milliseconds from one batch of a process's order creations to the next at the "
        "earliest, where orders come at least twice in it (by the mean time between them); a batch goes at once "
        "once 16 creations wait. Orders that arrive apart then start in waves and go through every later step "
        "together, a batch a step; where they come less often, or an order finds none started within it, it "
        "starts at once. 0 starts each batch as soon as the one before is written.",
    )
