"""backend-api: the front door's service directory with live health, and the OpenAPI index."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from nexus_ray.catalog import NAMESPACES, SERVICES, in_namespace
from nexus_ray.edge.security import authorize, public

router = APIRouter()


async def _namespace(namespace: str) -> list[dict]:
    from nexus_ray.deployments.ingress import namespace_health

    try:
        return await namespace_health(namespace)
    except Exception as exc:  # an unreachable namespace is reported, not fatal to the directory
        return [
            {"name": s.name, "namespace": namespace, "path": s.path(), "port": s.port, "tier": s.tier,
             "ready": False, "error": type(exc).__name__}
            for s in in_namespace(namespace)
        ]


@router.get("/services", dependencies=[authorize("platform:gateway:read")], summary="Every service with live health")
async def directory() -> dict:
    reports = await asyncio.gather(*(_namespace(ns) for ns in NAMESPACES))
    services = [r for rs in reports for r in rs]
    return {
        "count": len(services),
        "ready": sum(1 for s in services if s["ready"]),
        "services": services,
    }


@router.get("/openapi", dependencies=[public()], summary="Where each namespace's OpenAPI document is")
async def openapi_index() -> dict:
    return {
        "namespaces": [
            {"namespace": ns, "openapi": f"/{ns}/openapi.json", "docs": f"/{ns}/docs",
             "services": [s.name for s in SERVICES if s.namespace == ns]}
            for ns in NAMESPACES
        ]
    }
