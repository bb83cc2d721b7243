"""backend-api: the user's home, one call that gathers what each service knows of the user.

``GET /platform/v1/gateway/home`` asks every source below at once, each with the same
deadline (``home_deadline_s``), and answers 200 with what came back in time. A source
that is not there, too slow or failing is marked, never a 5xx::

    {"user_id": "u-1", "partial": true, "deadline_ms": 800,
     "sources": {"orders": {"service": "puabo-nuki-order-processor", "status": "ok", "data": {...}, "elapsed_ms": 12},
                 "deliveries": {"service": "puabo-nexus", "status": "absent", "data": null, ...}, ...}}

Statuses: ``ok`` (answered in time); ``timeout`` (no answer within the deadline);
``unavailable`` (its namespace is down, or it raised, or answered something that is not
a dict); ``absent`` (the service does not export ``home_summary`` yet). ``partial`` is
true unless every source is ``ok``.

The contract of a source (what a service adds to its package's ``exports`` to appear here)::

    exports = {"home_summary": home_summary}

    async def home_summary(*, user_id: str) -> dict:
        '''What the home screen shows of this service for ``user_id``.'''

* keyword argument ``user_id`` only (the token subject);
* returns a small dict of JSON values (no pydantic models, no datetimes: ISO strings),
  at most a few KiB: counts plus the few latest items (e.g. ``{"open": 2, "latest": [...]}``);
* a user the service knows nothing of gets its empty answer (``{"count": 0, ...}``),
  never NotFound (NotFound reads as "absent");
* fast: one or two indexed reads, well within the deadline (default 0.8 s); no writes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from nexus_ray.deployments.kit.calls import call
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import NotFound

from .models import HomeSource, HomeView
from .settings import GatewaySettings

EXPORT = "home_summary"

#: The home's sources: its section name and the catalog service that fills it.
SOURCES: dict[str, str] = {
    "orders": "puabo-nuki-order-processor",
    "deliveries": "puabo-nexus",
    "notifications": "notification-service",
    "recommendations": "recommendation-engine",
    "chat": "chat-service",
}


Status = Literal["ok", "timeout", "unavailable", "absent"]


async def _ask(service_name: str, user_id: str, deadline_s: float) -> HomeSource:
    started = time.perf_counter()
    status: Status = "ok"
    data = None
    try:
        data = await asyncio.wait_for(call(service_name, EXPORT, user_id=user_id), deadline_s)
        if not isinstance(data, dict):
            status, data = "unavailable", None
    except TimeoutError:
        status = "timeout"
    except NotFound:
        status = "absent"  # the service (or its home_summary) is not there yet
    except Exception:  # a down namespace, a failing store: marked, never the caller's 5xx
        status = "unavailable"
    return HomeSource(service=service_name, status=status, data=data,
                      elapsed_ms=round((time.perf_counter() - started) * 1000, 1))


async def home(*, user_id: str, sources: dict[str, str] | None = None, deadline_s: float | None = None) -> HomeView:
    """The home of ``user_id``: every source asked in parallel, each given ``deadline_s`` at most."""
    sources = SOURCES if sources is None else sources
    deadline = settings_of(GatewaySettings).home_deadline_s if deadline_s is None else deadline_s
    answers = await asyncio.gather(*(_ask(svc, user_id, deadline) for svc in sources.values()))
    by_name: dict[str, Any] = dict(zip(sources, answers, strict=True))
    return HomeView(user_id=user_id, partial=any(a.status != "ok" for a in answers),
                    deadline_ms=round(deadline * 1000), sources=by_name)
