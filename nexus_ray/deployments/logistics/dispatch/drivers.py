"""Where dispatch gets its drivers and sends its offers: one interface, two implementations.

:class:`DriverApp` is the platform's: driver-app-backend's exports ``available_drivers``,
``offer_job`` and ``withdraw_offer`` (without that service in the code base, ``available`` is
None and the round does nothing; this is said once in the log). :class:`StaticDrivers` is a
shipped stand-in for a fleet that is not reachable: a fixed list of drivers whose offers are
kept in memory (operators' what-if rounds, and the tests of the loop's rules).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from nexus_ray.deployments.kit.calls import call, exported

from .models import DriverState

log = logging.getLogger(__name__)

DRIVERS = "puabo-nexus-driver-app-backend"
_said_absent: set[str] = set()


def _absent(what: str) -> None:
    if what not in _said_absent:
        _said_absent.add(what)
        log.info("ai-dispatch: %s is not in this code base; dispatch goes on without it", what)


class DriverSource(Protocol):
    """The drivers a round may use, and the channel of its offers."""

    async def available(self) -> list[DriverState] | None:
        """Drivers on shift and free now; None when there is no source to ask."""
        ...

    async def offer(self, *, driver_id: str, offer_id: str, job: dict[str, Any], expires_at: datetime) -> None:
        """Deliver an offer to the driver; raises when it cannot (the offer is then withdrawn)."""
        ...

    async def withdraw(self, *, offer_id: str) -> None:
        """Take an offer back (expired, or its job cancelled)."""
        ...


class DriverApp:
    """driver-app-backend, through its exports."""

    async def available(self) -> list[DriverState] | None:
        if not exported(DRIVERS, "available_drivers"):
            _absent(f"{DRIVERS}.available_drivers")
            return None
        found = await call(DRIVERS, "available_drivers")
        out = []
        for d in found:
            raw = d.model_dump() if hasattr(d, "model_dump") else dict(d)
            out.append(DriverState.model_validate({**raw, "driver_id": str(raw["driver_id"])}))
        return out

    async def offer(self, *, driver_id: str, offer_id: str, job: dict[str, Any], expires_at: datetime) -> None:
        if not exported(DRIVERS, "offer_job"):
            return _absent(f"{DRIVERS}.offer_job")
        await call(DRIVERS, "offer_job", driver_id=driver_id, offer_id=offer_id, job=job, expires_at=expires_at)

    async def withdraw(self, *, offer_id: str) -> None:
        if not exported(DRIVERS, "withdraw_offer"):
            return _absent(f"{DRIVERS}.withdraw_offer")
        await call(DRIVERS, "withdraw_offer", offer_id=offer_id)


@dataclass
class StaticDrivers:
    """A fixed set of drivers; offers and withdrawals are recorded in :attr:`offers` and :attr:`withdrawn`."""

    drivers: list[DriverState]
    offers: list[dict[str, Any]] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)

    async def available(self) -> list[DriverState] | None:
        return list(self.drivers)

    async def offer(self, *, driver_id: str, offer_id: str, job: dict[str, Any], expires_at: datetime) -> None:
        self.offers.append({"driver_id": driver_id, "offer_id": offer_id, "job": job, "expires_at": expires_at})

    async def withdraw(self, *, offer_id: str) -> None:
        self.withdrawn.append(offer_id)
