"""inventory-mgr: stock per SKU and warehouse, reservations that expire, no oversell, a movement history.

Routes in :mod:`.views`; logic (and why it cannot oversell under concurrency) in :mod:`.service`;
``background`` releases lapsed reservations. Other services (the order saga) call ``exports``
with :func:`nexus_ray.deployments.kit.calls.call`, keyword arguments only.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from . import service
from .models import ReservationRead
from .views import router

background = [service.expire_forever]


# Callers are platform services that authorised their own callers: they act as ``caller``, which scopes
# their idempotency keys and their reservations (another caller's reservation is a 404).


async def reserve(*, caller: str, reference: str, lines: list[dict[str, Any]], ttl_s: int, idempotency_key: str
                  ) -> ReservationRead:
    """Hold every line (``{"sku", "quantity"}``) for ``ttl_s`` seconds or none (409 naming the SKU)."""
    out, _ = await service.reserve(caller=caller, reference=reference, lines=lines, ttl_s=ttl_s,
                                   idempotency_key=idempotency_key)
    return out


async def commit_reservation(*, caller: str, reservation_id: UUID | str) -> ReservationRead:
    return await service.commit_reservation(reservation_id=UUID(str(reservation_id)), caller=caller,
                                            privileged=False)


async def release_reservation(*, caller: str, reservation_id: UUID | str) -> ReservationRead:
    return await service.release_reservation(reservation_id=UUID(str(reservation_id)), caller=caller,
                                             privileged=False)


#: What other services may call (nexus_ray.deployments.kit.calls.call).
exports = {"reserve": reserve, "commit_reservation": commit_reservation, "release_reservation": release_reservation}

__all__ = ["background", "exports", "router"]
