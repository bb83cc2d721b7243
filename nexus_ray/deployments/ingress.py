"""The Serve deployment of a namespace ingress (or a dedicated service) and the application builder.

``cluster/serve_config.yaml`` names :func:`app_builder` once per application: nine
namespace applications, each one :class:`NamespaceIngress` hosting the routers of every
service of its namespace in-process (DESIGN.md: the edge is middleware, not a hop), plus
one application per API version of each dedicated service (:mod:`nexus_ray.runtime.placement`).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from fastapi import FastAPI
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

from nexus_ray.catalog import NAMESPACES, service
from nexus_ray.config import get_settings
from nexus_ray.deployments import health
from nexus_ray.deployments.app import build_app, service_module
from nexus_ray.exceptions import NotFound
from nexus_ray.logs import request_id_var
from nexus_ray.runtime.placement import ingress_deployment, service_app


@serve.deployment(max_ongoing_requests=256, health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress()
class NamespaceIngress:
    """Serves the routes of a namespace (or of one dedicated service); answers calls from other namespaces."""

    def __init__(self, namespace: str, dedicated: list[str] | None = None, only: str | None = None,
                 version: str | None = None) -> None:
        if namespace not in NAMESPACES:
            raise ValueError(f"unknown namespace {namespace!r}")
        self.namespace = namespace
        self.dedicated = frozenset(dedicated or ())
        self.only = only
        self.version = version

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_app(self.namespace, exclude=self.dedicated, only=self.only, version=self.version)

    async def health_report(self) -> list[dict]:
        """Readiness of each service of this namespace (called over a DeploymentHandle)."""
        return await health.namespace_report(self.namespace)

    async def invoke(self, service_name: str, function: str, kwargs: dict[str, Any], request_id: str | None) -> Any:
        """Run ``function`` of ``service_name``'s ``exports`` here, or forward to the service's own deployment."""
        s = service(service_name)
        if s.namespace != self.namespace:
            raise NotFound(f"{service_name} is not a service of {self.namespace}")
        if service_name in self.dedicated and self.only is None:
            app = service_app(s, "v1")
            handle = serve.get_deployment_handle(app, app_name=app)
            return await asyncio.wait_for(handle.invoke.remote(service_name, function, kwargs, request_id),
                                          get_settings().cross_call_timeout_s)
        return await run_export(service_name, function, kwargs, request_id=request_id)


# Module-level, not a method: Serve pickles the deployment class by value, and a method that
# names a ContextVar (request_id_var) would make it unpicklable.
async def run_export(service_name: str, function: str, kwargs: dict[str, Any], *, request_id: str | None = None) -> Any:
    """Call ``function`` from the ``exports`` of a service's package in this process, under ``request_id``."""
    module = service_module(service(service_name))
    exports = getattr(module, "exports", {}) if module is not None else {}
    fn = exports.get(function)
    if fn is None:
        raise NotFound(f"{service_name} exports no function {function!r}")
    token = request_id_var.set(request_id) if request_id else None
    try:
        return await fn(**kwargs)
    finally:
        if token is not None:
            request_id_var.reset(token)


class IngressArgs(BaseModel):
    """Arguments of :func:`app_builder` in the Serve config."""

    namespace: str = Field(description="The namespace whose services this application serves.")
    dedicated: list[str] = Field(
        default_factory=list, description="Services of the namespace that run in deployments of their own."
    )
    service: str | None = Field(None, description="Set for a dedicated service's application: that service alone.")
    version: str | None = Field(None, description="With `service`: the API version this application serves.")


def app_builder(args: dict[str, Any]) -> Application:
    """Serve application builder: the ingress of a namespace, or of one dedicated service's version."""
    # Validated here: with postponed annotations Serve passes the raw dict.
    parsed = IngressArgs.model_validate(args)
    if parsed.service is not None:
        s = service(parsed.service)
        name = service_app(s, parsed.version or "v1")
        return _ingress().options(name=name).bind(s.namespace, None, s.name, parsed.version or "v1")
    return _ingress().options(name=ingress_deployment(parsed.namespace)).bind(parsed.namespace, parsed.dedicated)


def _ingress() -> Deployment:
    # @serve.deployment turns the class into a Deployment; type checkers only see the class.
    return cast(Deployment, NamespaceIngress)
