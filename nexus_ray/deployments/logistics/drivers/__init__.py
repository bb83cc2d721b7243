"""puabo-nexus-driver-app-backend: drivers, shifts, locations (HTTP and WebSocket), job offers, earnings.

Routes in :mod:`.views` and the driver socket in :mod:`.live`; logic in :mod:`.service`;
``background`` posts earnings a failed ledger call left unposted. Other services call
``exports`` with :func:`nexus_ray.deployments.kit.calls.call`, keyword arguments only
(contract: LOGISTICS_CONTRACTS, issue 9).
"""

from __future__ import annotations

from . import service
from .service import available_drivers, job_finished, offer_job, withdraw_offer
from .views import router

background = [service.post_earnings_forever]

#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"available_drivers": available_drivers, "offer_job": offer_job, "withdraw_offer": withdraw_offer,
           "job_finished": job_finished}

__all__ = ["background", "exports", "router"]
