"""billing-service's idempotency records (table ``billing_idempotency``; semantics in
:mod:`nexus_ray.deployments.kit.idempotency`)."""

from __future__ import annotations

from nexus_ray.deployments.kit.idempotency import Idempotency
from nexus_ray.deployments.kit.settings import settings_of

from .settings import BillingSettings

KEYS = Idempotency("billing_idempotency", ttl_s=lambda: settings_of(BillingSettings).billing_idempotency_ttl_s)


async def purge_keys_forever() -> None:
    """Background: delete expired idempotency keys every ``billing_idempotency_purge_s``."""
    await KEYS.purge_forever(lambda: settings_of(BillingSettings).billing_idempotency_purge_s)
