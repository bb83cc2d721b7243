"""Liveness and readiness: which stores each service needs, whether they answer, and what the service serves."""

from __future__ import annotations

import asyncio
import functools
import time

from nexus_ray.catalog import Service, Store, in_namespace
from nexus_ray.stores import cache, documents, events, postgres

_PROBES = {"postgres": postgres.ping, "redis": cache.ping, "documents": documents.ping, "kafka": events.ping}
_TTL_S = 2.0
_results: dict[str, tuple[float, str]] = {}
_locks: dict[str, asyncio.Lock] = {}


async def probe(store: Store, timeout: float = 3.0) -> str:
    """"ok" or a short reason; cached a moment so probes under load cost one check per store."""
    now = time.monotonic()
    hit = _results.get(store)
    if hit and hit[0] > now:
        return hit[1]
    lock = _locks.setdefault(store, asyncio.Lock())
    async with lock:
        hit = _results.get(store)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        try:
            ok = await asyncio.wait_for(_PROBES[store](), timeout)
            result = "ok" if ok else "unhealthy"
        except TimeoutError:
            result = "timeout"
        except Exception as exc:  # the reason, not the message: messages can carry DSNs
            result = f"error: {type(exc).__name__}"
        _results[store] = (time.monotonic() + _TTL_S, result)
        return result


@functools.cache
def route_count(service: Service) -> int:
    """How many API routes ``service`` serves beyond the health probes every service gets (0: health only)."""
    # Imported here: the app builder imports this module.
    from nexus_ray.deployments.app import _routers_of
    from nexus_ray.edge.security import api_routes

    return sum(len(api_routes(router.routes)) for router in _routers_of(service).values())


def state(ready: bool, routes: int) -> str:
    """One word for a service in the directory and `nexus status`: not ready, health only, or ready."""
    if not ready:
        return "not ready"
    return "ready" if routes else "health only"


async def service_report(service: Service) -> dict:
    """Readiness of one service: its stores and whether all answer, and how many API routes it serves."""
    results = await asyncio.gather(*(probe(s) for s in service.stores))
    stores = dict(zip(service.stores, results, strict=True))
    ready = all(r == "ok" for r in results)
    routes = route_count(service)
    return {
        "name": service.name,
        "namespace": service.namespace,
        "path": service.path(),
        "port": service.port,
        "tier": service.tier,
        "ready": ready,
        "routes": routes,
        "state": state(ready, routes),
        "stores": stores,
    }


async def namespace_report(namespace: str) -> list[dict]:
    """Readiness of every service of a namespace."""
    return list(await asyncio.gather(*(service_report(s) for s in in_namespace(namespace))))
