"""The Serve deployment of a namespace ingress and the application builder of the Serve config.

``cluster/serve_config.yaml`` names :func:`app_builder` with ``{"namespace": ...}``
nine times; each application is one :class:`NamespaceIngress` hosting the routers
of every service of its namespace in-process (DESIGN.md: the edge is middleware,
not a hop).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from ray import serve

from nexus_ray.catalog import NAMESPACES
from nexus_ray.config import get_settings
from nexus_ray.deployments import health
from nexus_ray.deployments.app import build_app


def deployment_name(namespace: str) -> str:
    """Name of a namespace's ingress deployment inside its Serve application."""
    return f"{namespace}-ingress"


@serve.deployment(max_ongoing_requests=256, health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress()
class NamespaceIngress:
    """Serves every route of one namespace; answers readiness reports for the service directory."""

    def __init__(self, namespace: str) -> None:
        if namespace not in NAMESPACES:
            raise ValueError(f"unknown namespace {namespace!r}")
        self.namespace = namespace

    def __serve_build_asgi_app__(self):
        return build_app(self.namespace)

    async def health_report(self) -> list[dict]:
        """Readiness of each service of this namespace (called over a DeploymentHandle)."""
        return await health.namespace_report(self.namespace)


class IngressArgs(BaseModel):
    """Arguments of :func:`app_builder` in the Serve config."""

    namespace: str = Field(description="The namespace whose services this application serves.")


def app_builder(args: dict):
    """Serve application builder: the ingress of ``args["namespace"]``."""
    # Validated here: with postponed annotations Serve passes the raw dict.
    parsed = IngressArgs.model_validate(args)
    return NamespaceIngress.options(name=deployment_name(parsed.namespace)).bind(parsed.namespace)


async def namespace_health(namespace: str) -> list[dict]:
    """Readiness of a namespace's services: over its DeploymentHandle inside Serve, in-process otherwise."""
    try:
        serve.get_replica_context()
    except Exception:
        return await health.namespace_report(namespace)
    handle = serve.get_deployment_handle(deployment_name(namespace), app_name=namespace)
    timeout = get_settings().cross_call_timeout_s
    return await asyncio.wait_for(handle.health_report.remote(), timeout)
