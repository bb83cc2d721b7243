"""order-processor: orders through the checkout saga, with compensation, recovery and a state machine.

Routes in :mod:`.views`; what they ask for in :mod:`.service`; the saga's engine (persisted steps,
leases, compensation, recovery) in :mod:`.saga`; the calls to catalog, inventory, billing,
invoices and shipping in :mod:`.steps` (the one module to wire them). ``background`` finishes or
compensates orders whose runner is gone. Events: ``order.created`` and ``order.<status>`` for
every later status (authorized, paid, completed, compensating, failed, cancelling, cancelled,
refunding, refunded), payload ``order_id, customer, total, currency, status``.
"""

from __future__ import annotations

from . import saga, service
from .views import router

background = [saga.recover_forever]

#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call): backend-api's home view.
exports = {"home_summary": service.home_summary}

__all__ = ["background", "exports", "router"]
