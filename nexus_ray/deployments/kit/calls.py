"""Calls to a service of another namespace: over DeploymentHandles, with a timeout and the request id.

Inside a namespace, services call each other as plain functions (one process, DESIGN.md).
Across namespaces a service calls what another service's package lists in ``exports``::

    # nexus_ray/deployments/commerce/ledger/__init__.py
    exports = {"post_transfer": service.post_transfer}

    # in finance
    entry = await call("ledger-mgr", "post_transfer", debit=..., credit=..., amount=...)

The call goes to the ingress of the target's namespace (which forwards it when the
service is dedicated), waits at most ``cross_call_timeout_s`` (then 503) and carries the
request id, so the logs of both sides share it. Errors raised by the callee (NotFound,
Conflict...) arrive intact: the platform's errors survive pickling.

Where it stays in-process instead, and why: outside Serve (the in-process apps of the
integration tests and of `bench/`) every namespace is built in the one process, so the
call is a plain function call; the readiness probes of the directory likewise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ray.serve.handle import DeploymentHandle

from nexus_ray.catalog import service
from nexus_ray.config import get_settings
from nexus_ray.deployments import health
from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.logs import request_id_var
from nexus_ray.runtime.placement import ingress_deployment


def _in_serve() -> bool:
    from ray import serve

    try:
        serve.get_replica_context()
    except Exception:
        return False
    return True


def _ingress(namespace: str) -> DeploymentHandle:
    from ray import serve

    return serve.get_deployment_handle(ingress_deployment(namespace), app_name=namespace)


async def _remote(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, get_settings().cross_call_timeout_s)
    except TimeoutError:
        raise ServiceUnavailable(f"{what} did not answer in time; retry") from None


async def call(service_name: str, function: str, /, **kwargs: Any) -> Any:
    """Run ``function`` of ``service_name``'s ``exports`` with ``kwargs`` (JSON-able or picklable values)."""
    from nexus_ray.deployments.ingress import run_export

    target = service(service_name)
    if not _in_serve():
        return await run_export(service_name, function, kwargs)
    handle = _ingress(target.namespace)
    return await _remote(handle.invoke.remote(service_name, function, kwargs, request_id_var.get()), service_name)


def exported(service_name: str, function: str) -> bool:
    """Whether ``service_name``'s package in this code base exports ``function``.

    For a collaborator that may not be built yet (a service written in parallel): the caller
    checks before it calls, and falls back to its documented behaviour without it, instead
    of telling "absent" from the callee's own NotFound.
    """
    from nexus_ray.deployments.app import service_module

    module = service_module(service(service_name))
    return function in (getattr(module, "exports", None) or {})


async def namespace_health(namespace: str) -> list[dict]:
    """Readiness of a namespace's services: over its DeploymentHandle inside Serve, in-process otherwise."""
    if not _in_serve():
        return await health.namespace_report(namespace)
    return await _remote(_ingress(namespace).health_report.remote(), f"the {namespace} namespace")
