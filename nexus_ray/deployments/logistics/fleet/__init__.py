"""puabo-nexus-fleet-manager: a FleetActor per fleet -- vehicles, status, telemetry, spatial queries, geofences.

Routes in :mod:`.views`; logic in :mod:`.service`; the actor (state, persistence, what a
crash can lose) in :mod:`nexus_ray.actors.fleet`. Other services call ``exports`` with
:func:`nexus_ray.deployments.kit.calls.call`, keyword arguments only.
"""

from __future__ import annotations

from typing import Any

from . import service
from .models import PositionUpdate, VehicleNear
from .views import router


async def ingest(*, fleet_id: str, updates: list[dict[str, Any]]) -> int:
    """Apply a batch of readings ``{"vehicle_id", "lat", "lon", "ts"}``; returns how many moved a vehicle."""
    result = await service.ingest(fleet_id=fleet_id, updates=[PositionUpdate.model_validate(u) for u in updates])
    return result.applied


async def nearest(*, fleet_id: str, lat: float, lon: float, k: int, available_only: bool = True
                  ) -> list[VehicleNear]:
    """The ``k`` vehicles nearest ``(lat, lon)``, nearest first."""
    return await service.nearest(fleet_id=fleet_id, lat=lat, lon=lon, k=k, available_only=available_only)


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"ingest": ingest, "nearest": nearest}

__all__ = ["exports", "router"]
