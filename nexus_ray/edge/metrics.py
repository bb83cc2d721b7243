"""Per-service request counts and latencies through Ray's metrics.

Ray exports them on each node's metrics export port (Prometheus format) and the
Ray dashboard's Grafana panels read them; outside a Ray worker they are no-ops.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

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
