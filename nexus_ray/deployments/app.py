"""Builds the FastAPI app of one namespace: its services' routers behind the edge.

A service module (``nexus_ray.deployments.<namespace>.<module>``, see
:attr:`nexus_ray.catalog.Service.package`) exposes:

* ``router`` -- an ``APIRouter`` mounted at ``/<namespace>/v1/<slug>``;
* ``routers`` -- optional ``{"v1": ..., "v2": ...}`` instead, one per API version;
* ``background`` -- optional ``list`` of async callables run for the app's lifetime
  (event consumers, loops), cancelled at shutdown.

Every service also gets ``/health/live`` and ``/health/ready`` here, so no
service repeats them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from nexus_ray.catalog import Service, in_namespace, stores_of
from nexus_ray.config import get_settings
from nexus_ray.deployments import health
from nexus_ray.deployments.wiring import wire_edge
from nexus_ray.edge import errors
from nexus_ray.edge.middleware import EdgeMiddleware
from nexus_ray.edge.security import api_routes, check_route_security, public
from nexus_ray.exceptions import PROBLEM_JSON, ServiceUnavailable
from nexus_ray.logs import configure as configure_logs
from nexus_ray.runtime import heap
from nexus_ray.stores import cache, documents, events, postgres

log = logging.getLogger(__name__)


@functools.cache
def service_module(service: Service) -> ModuleType | None:
    """The module holding a service's routes, or None while the service has none yet (looked up once a process:
    every call between services asks)."""
    try:
        spec = importlib.util.find_spec(service.package)
    except ModuleNotFoundError:
        return None
    return importlib.import_module(service.package) if spec else None


def _health_router(service: Service) -> APIRouter:
    router = APIRouter(tags=[service.name])

    @router.get("/health/live", dependencies=[public(rate_limited=False)], summary=f"{service.name} liveness")
    async def live() -> dict:
        return {"service": service.name, "status": "live"}

    @router.get("/health/ready", dependencies=[public(rate_limited=False)], summary=f"{service.name} readiness",
                responses={503: {"description": "A store the service needs does not answer."}})
    async def ready() -> Any:
        report = await health.service_report(service)
        if not report["ready"]:
            err = ServiceUnavailable(f"{service.name} is not ready", extra={"stores": report["stores"]})
            return JSONResponse(err.problem(), status_code=503, media_type=PROBLEM_JSON)
        return report

    return router


def _routers_of(service: Service) -> dict[str, APIRouter]:
    module = service_module(service)
    if module is None:
        return {}
    if hasattr(module, "routers"):
        return dict(module.routers)
    return {"v1": module.router} if hasattr(module, "router") else {}


def build_app(
    namespace: str, *, exclude: frozenset[str] | set[str] = frozenset(), only: str | None = None,
    version: str | None = None,
) -> FastAPI:
    """The ASGI app of ``namespace``: every service's routes, health, OpenAPI, the edge.

    ``exclude`` leaves out services that run in deployments of their own; ``only`` (with
    ``version``) builds the app of one such service: its routes alone, mounted at the root
    of its application's route prefix ``/<namespace>/<version>/<slug>``.
    """
    settings = get_settings()
    configure_logs(settings.log_level)
    wire_edge()
    services = tuple(s for s in in_namespace(namespace) if s.name not in exclude and (only is None or s.name == only))
    if only is not None and not services:
        raise KeyError(f"{only} is not a service of {namespace}")
    background = []
    for s in services:
        module = service_module(s)
        background += list(getattr(module, "background", []) if module else [])

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task] = []
        relay = None
        if "kafka" in stores_of(namespace):
            relay = events.OutboxRelay()
            app.state.relay = relay
            tasks.append(asyncio.create_task(relay.run(), name="outbox-relay"))
        tasks += [asyncio.create_task(fn(), name=getattr(fn, "__name__", "background")) for fn in background]
        heap.settle(settings)
        try:
            yield
        finally:
            if relay is not None:
                relay.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await postgres.close_pool()
            await cache.close_redis()
            await documents.close_mongo()

    app = FastAPI(
        title=f"nexus-ray {namespace}" + (f" {only} {version}" if only else ""),
        version="1",
        description=f"Services of the {namespace} namespace: "
        + ", ".join(s.name for s in services),
        lifespan=lifespan,
    )
    errors.install(app)
    errors.document_problems(app)

    if only is None:
        @app.get("/health/live", dependencies=[public(rate_limited=False)], tags=["health"])
        async def namespace_live() -> dict:
            return {"namespace": namespace, "status": "live"}

        @app.get("/health/ready", dependencies=[public(rate_limited=False)], tags=["health"],
                 responses={503: {"description": "Not every service is ready.", "content": {"application/json": {}}}})
        async def namespace_ready() -> JSONResponse:
            report = await health.namespace_report(namespace)
            body = {"namespace": namespace, "ready": all(r["ready"] for r in report), "services": report}
            return JSONResponse(body, status_code=200 if body["ready"] else 503)

    # A dedicated service's app sits at /<namespace>/<version>/<slug>: its routes mount at the root,
    # and metrics name them by the same templates as when the namespace ingress hosts them.
    def prefix_of(s: Service, v: str) -> str:
        return "" if only is not None else f"/{v}/{s.slug}"

    for s in services:
        versions = [version] if only is not None and version else list(s.versions)
        for v in versions:
            if v not in s.versions:
                raise RuntimeError(f"{s.name} has no API version {v}")
            app.include_router(_health_router(s), prefix=prefix_of(s, v))
        for v, router in _routers_of(s).items():
            if v not in s.versions:
                raise RuntimeError(f"{s.name} has a {v} router but the catalog lists {s.versions}")
            if v in versions:
                app.include_router(router, prefix=prefix_of(s, v), tags=[s.name])

    check_route_security(app.routes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID", "Idempotency-Key"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    from ray.serve.context import _get_internal_replica_context

    mounted_at = f"/{version}/{services[0].slug}" if only is not None else ""
    templates = {(rc.endpoint, rc.path.split("/", 2)[1]): mounted_at + rc.path for rc in api_routes(app.routes)}
    app.add_middleware(
        EdgeMiddleware,
        namespace=namespace,
        max_body_bytes=settings.max_body_bytes,
        echo_request_id=_get_internal_replica_context() is None,
        templates=templates,
    )
    return app
