"""backend-api: the front door's service directory with live health, the platform notice, the OpenAPI index."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from nexus_ray.catalog import NAMESPACES, SERVICES, in_namespace
from nexus_ray.edge.security import Principal, authorize, public
from nexus_ray.exceptions import ValidationFailed
from nexus_ray.stores.cache import redis_client

router = APIRouter()

NOTICE_KEY = "nexus:platform:notice"


class NoticeIn(BaseModel):
    """A platform-wide notice shown to every client (maintenance windows, incidents)."""

    message: str = Field(min_length=1, max_length=500, description="Text shown to users.")
    severity: Literal["info", "warning", "critical"] = Field("info", description="How prominently to show it.")
    until: datetime | None = Field(None, description="When the notice expires (UTC); none: until cleared.")


class NoticeRead(NoticeIn):
    set_by: str
    set_at: datetime


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


@router.get("/notice", dependencies=[authorize("platform:gateway:read")], summary="The current platform notice")
async def get_notice() -> dict:
    raw = await redis_client().get(NOTICE_KEY)
    return {"notice": NoticeRead.model_validate_json(raw).model_dump(mode="json") if raw else None}


@router.put("/notice", summary="Set the platform notice", response_model=NoticeRead)
async def set_notice(body: NoticeIn, principal: Principal = authorize("platform:gateway:admin")) -> NoticeRead:
    now = datetime.now(UTC)
    ttl = None
    if body.until is not None:
        until = body.until if body.until.tzinfo else body.until.replace(tzinfo=UTC)
        ttl = int((until - now).total_seconds())
        if ttl <= 0:
            raise ValidationFailed.for_field("until", "must be in the future")
    notice = NoticeRead(**body.model_dump(), set_by=principal.subject, set_at=now)
    await redis_client().set(NOTICE_KEY, notice.model_dump_json(), ex=ttl)
    return notice


@router.delete("/notice", status_code=204, dependencies=[authorize("platform:gateway:admin")],
               summary="Clear the platform notice")
async def clear_notice() -> Response:
    await redis_client().delete(NOTICE_KEY)
    return Response(status_code=204)


@router.get("/openapi", dependencies=[public()], summary="Where each namespace's OpenAPI document is")
async def openapi_index() -> dict:
    return {
        "namespaces": [
            {"namespace": ns, "openapi": f"/{ns}/openapi.json", "docs": f"/{ns}/docs",
             "services": [s.name for s in SERVICES if s.namespace == ns]}
            for ns in NAMESPACES
        ]
    }
