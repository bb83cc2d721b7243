"""notification-service: email (real SMTP), push (Web Push, VAPID) and SMS through provider interfaces;
stored, localised templates; preferences and quiet hours; retries with backoff and dead letters.

Routes in :mod:`.views`; logic and the delivery state machine in :mod:`.service`; providers in
:mod:`.providers`; template rendering in :mod:`.templates`. ``background``: the event consumer
(``order.created``, ``order.paid``, ``payment_intent.payment_failed``, ``delivery.status``,
``user.password_changed``) and the delivery loop. ``exports``: :func:`notify` for other namespaces, and
the home view's summary.
"""

from __future__ import annotations

from typing import Any

from nexus_ray.stores import postgres

from . import service
from .views import router

background = [service.consume_events, service.deliver_forever]


async def notify(*, user_id: str, category: str, template: str, data: dict[str, Any], key: str,
                 caller: str, urgent: bool = False) -> int:
    """Queue ``template`` for ``user_id`` on their channels for ``category``; ``key`` (per ``caller``) makes
    it idempotent. Returns how many messages were queued (0 on a replay)."""
    async with postgres.transaction() as conn:
        queued = await service.notify_user(conn, user_id=user_id, category=category, template=template, data=data,
                                           urgent=urgent, key=f"{caller}:{key}", created_by=caller)
    service.wake()
    return queued


#: What services of other namespaces may call (nexus_ray.deployments.kit.calls.call).
exports = {"notify": notify, "home_summary": service.home_summary}

__all__ = ["background", "exports", "router"]
