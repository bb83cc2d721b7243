"""backend-api's logic: the directory over every namespace, the notice in Redis, the OpenAPI index."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from nexus_ray.catalog import NAMESPACES, SERVICES, in_namespace
from nexus_ray.deployments.kit.calls import namespace_health
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.exceptions import ValidationFailed
from nexus_ray.stores import events
from nexus_ray.stores.cache import redis_client

from .live import NOTICE_KEY, publish_notice
from .models import (
    CurrentNotice,
    DeadLetterRead,
    Directory,
    NamespaceDocs,
    NoticeIn,
    NoticeRead,
    OpenApiIndex,
    ServiceHealth,
)


async def _namespace(namespace: str) -> list[ServiceHealth]:
    try:
        return [ServiceHealth.model_validate(r) for r in await namespace_health(namespace)]
    except Exception as exc:  # an unreachable namespace is reported, not fatal to the directory
        return [
            ServiceHealth(name=s.name, namespace=namespace, path=s.path(), port=s.port, tier=s.tier, ready=False,
                          error=type(exc).__name__)
            for s in in_namespace(namespace)
        ]


async def directory() -> Directory:
    """Every service with its live readiness, asked of all namespaces at once."""
    reports = await asyncio.gather(*(_namespace(ns) for ns in NAMESPACES))
    services = [r for rs in reports for r in rs]
    return Directory(count=len(services), ready=sum(1 for s in services if s.ready), services=services)


async def current_notice() -> CurrentNotice:
    raw = await redis_client().get(NOTICE_KEY)
    return CurrentNotice(notice=NoticeRead.model_validate_json(raw) if raw else None)


async def set_notice(*, notice: NoticeIn, set_by: str) -> NoticeRead:
    """Make ``notice`` the platform notice; it expires by itself at ``until``."""
    now = datetime.now(UTC)
    ttl = None
    if notice.until is not None:
        until = notice.until if notice.until.tzinfo else notice.until.replace(tzinfo=UTC)
        ttl = int((until - now).total_seconds())
        if ttl <= 0:
            raise ValidationFailed.for_field("until", "must be in the future")
    stored = NoticeRead(**notice.model_dump(), set_by=set_by, set_at=now)
    await publish_notice(stored.model_dump_json(), ttl_s=ttl)
    return stored


async def clear_notice() -> None:
    await publish_notice(None)


def openapi_index() -> OpenApiIndex:
    return OpenApiIndex(namespaces=[
        NamespaceDocs(namespace=ns, openapi=f"/{ns}/openapi.json", docs=f"/{ns}/docs",
                      services=[s.name for s in SERVICES if s.namespace == ns])
        for ns in NAMESPACES
    ])


def _dead_letter(d: events.DeadLetter) -> DeadLetterRead:
    return DeadLetterRead.model_validate({**vars(d), "event_id": str(d.event_id)})


async def dead_letters(*, consumer: str | None, page: PageRequest) -> Page[DeadLetterRead]:
    """The platform's dead letters (of one consumer group, or all), in the order they died."""
    rows = await events.list_dead_letters(consumer=consumer, after=page.after_value(0), limit=page.fetch_limit)
    return page.of(rows, key=lambda d: (d.id,), item=_dead_letter)


async def dead_letter(*, dead_letter_id: int) -> DeadLetterRead:
    return _dead_letter(await events.get_dead_letter(dead_letter_id=dead_letter_id))


async def replay_dead_letter(*, dead_letter_id: int) -> DeadLetterRead:
    """Ask the dead letter's consumer to deliver it once more (asking twice delivers once)."""
    return _dead_letter(await events.request_replay(dead_letter_id=dead_letter_id))
