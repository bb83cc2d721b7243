"""puabo-nexus (deliveries): the delivery lifecycle, tracking timeline, proof of delivery, dispatch and shipping.

Routes in :mod:`.views`; logic (state machine, where deliveries come from, dispatch) in
:mod:`.service`; ``background`` consumes ``shipment.created`` and ``dispatch.assigned`` and
submits deliveries to ai-dispatch. Emits ``delivery.status`` on every move.
"""

from __future__ import annotations

from . import service
from .views import router

background = [service.consume_forever, service.submit_forever]

#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call): backend-api's home view.
exports = {"home_summary": service.home_summary}

__all__ = ["background", "exports", "router"]
