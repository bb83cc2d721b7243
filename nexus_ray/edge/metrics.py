"""Per-service request counts and latencies through Ray's metrics.

Ray exports them on each node's metrics export port (Prometheus format) and the
Ray dashboard's Grafana panels read them; outside a Ray worker they are no-ops.
"""

from __future__ import annotations

import asyncio
import time

from ray.util.metrics import Counter, Gauge, Histogram

_TAGS = ("namespace", "service", "route", "method", "status")

REQUESTS = Counter(
    "nexus_http_requests_total", description="HTTP requests served by the platform's ingresses.", tag_keys=_TAGS
)
LATENCY = Histogram(
    "nexus_http_request_duration_seconds",
    description="Time from the request reaching the ingress to its response, seconds.",
    boundaries=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
    tag_keys=_TAGS,
)

_tag_cache: dict[tuple[str, str, str, int], dict[str, str]] = {}


def service_of(route: str) -> str:
    """The service slug of a route template ``/v1/<slug>/...`` (``-`` for namespace routes)."""
    parts = route.split("/", 3)
    return parts[2] if len(parts) > 2 and parts[1].startswith("v") else "-"


def observe(namespace: str, route: str, method: str, status: int, seconds: float) -> None:
    """Record one served request."""
    key = (namespace, route, method, status)
    tags = _tag_cache.get(key)
    if tags is None:
        if len(_tag_cache) > 10_000:  # bounded: route templates, not raw paths, keep this small
            _tag_cache.clear()
        tags = {"namespace": namespace, "service": service_of(route), "route": route, "method": method,
                "status": str(status)}
        _tag_cache[key] = tags
    REQUESTS.inc(1, tags=tags)
    LATENCY.observe(seconds, tags=tags)


# WebSocket connections: labelled by route template like the HTTP ones; a connection's
# close code is known only when it ends, so it labels the closed count and the duration.
_WS_TAGS = ("namespace", "service", "route")

WS_OPENED = Counter(
    "nexus_ws_connections_opened_total",
    description="WebSocket connections accepted by the platform's ingresses.",
    tag_keys=_WS_TAGS,
)
WS_CLOSED = Counter(
    "nexus_ws_connections_closed_total",
    description="WebSocket connections ended, by close code (refused handshakes included: 'denied').",
    tag_keys=(*_WS_TAGS, "code"),
)
WS_MESSAGES = Counter(
    "nexus_ws_messages_total",
    description="WebSocket messages received (direction=in) and sent (direction=out).",
    tag_keys=(*_WS_TAGS, "direction"),
)
WS_DURATION = Histogram(
    "nexus_ws_connection_duration_seconds",
    description="Time from a WebSocket connection's acceptance to its end, seconds.",
    boundaries=[0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0],
    tag_keys=(*_WS_TAGS, "code"),
)


def ws_tags(namespace: str, route: str) -> dict[str, str]:
    """The tags of one WebSocket route's metrics (computed once per connection)."""
    return {"namespace": namespace, "service": service_of(route), "route": route}


def ws_opened(tags: dict[str, str]) -> None:
    """Record one accepted connection."""
    WS_OPENED.inc(1, tags=tags)


WS_MESSAGES_FLUSH_S = 1.0
"""Messages are counted in the process and added to :data:`WS_MESSAGES` this long after the first one counted."""

_ws_pending: dict[tuple[str, str, str, str], int] = {}
_ws_due = 0.0  # when the pending counts' timer should have flushed them


def ws_message(tags: dict[str, str], direction: str) -> None:
    """Record one message, ``direction`` "in" (from the client) or "out".

    A busy socket sends thousands of frames a second, and one call of Ray's counter per frame was 5 % of
    a chat replica's CPU (py-spy, 500 members at 50 messages/s): the counts are summed here and added
    once a second per label set (:func:`flush_ws_messages`, also run when a connection closes).
    """
    global _ws_due
    now = time.monotonic()
    if _ws_pending and now > _ws_due + WS_MESSAGES_FLUSH_S:  # the timer's loop is gone: flush here
        flush_ws_messages()
    if not _ws_pending:
        try:
            asyncio.get_running_loop().call_later(WS_MESSAGES_FLUSH_S, flush_ws_messages)
        except RuntimeError:  # no event loop: count it now
            WS_MESSAGES.inc(1, tags={**tags, "direction": direction})
            return
        _ws_due = now + WS_MESSAGES_FLUSH_S
    key = (tags["namespace"], tags["service"], tags["route"], direction)
    _ws_pending[key] = _ws_pending.get(key, 0) + 1


def flush_ws_messages() -> None:
    """Add the messages counted so far to the counter."""
    pending = list(_ws_pending.items())
    _ws_pending.clear()
    for (namespace, service, route, direction), count in pending:
        WS_MESSAGES.inc(count, tags={"namespace": namespace, "service": service, "route": route,
                                     "direction": direction})


def ws_closed(tags: dict[str, str], code: str, seconds: float | None) -> None:
    """Record one ended connection; ``seconds`` is None for one never accepted."""
    closed = {**tags, "code": code}
    flush_ws_messages()
    WS_CLOSED.inc(1, tags=closed)
    if seconds is not None:
        WS_DURATION.observe(seconds, tags=closed)


# product-catalog's in-memory search index (nexus_ray/deployments/commerce/catalog/search_index.py), per process.
CATALOG_INDEX_READY = Gauge(
    "nexus_catalog_search_index_ready",
    description="1 while this process's catalog search index answers searches, 0 while it searches the store.",
)
CATALOG_INDEX_PRODUCTS = Gauge(
    "nexus_catalog_search_index_products", description="Active products held in this process's search index.",
)
CATALOG_INDEX_LAG = Gauge(
    "nexus_catalog_search_index_lag_seconds",
    description="Time from the store's write to the search index applying it, seconds (latest change event).",
)


def catalog_index(*, ready: bool, products: int, lag_s: float) -> None:
    """Record the catalog search index's state."""
    CATALOG_INDEX_READY.set(1.0 if ready else 0.0)
    CATALOG_INDEX_PRODUCTS.set(float(products))
    CATALOG_INDEX_LAG.set(lag_s)
