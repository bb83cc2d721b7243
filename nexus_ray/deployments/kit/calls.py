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

Where it stays in-process instead, and why: when this replica is the ingress of the target's
namespace and the target is not dedicated, the target's code is in this very process (a
namespace's services share their ingress), so the call is a plain function call -- no
serialisation, no hop through the router, no timeout that a function call would not have
(billing calling ledger-mgr, both in commerce). Outside Serve (the in-process apps of the
integration tests and of `bench/`) every namespace is built in the one process, so the call
is a plain function call too; the readiness probes of the directory likewise.

A namespace that is not deployed (its application deleted, or not deployed yet) is refused at
once with 503 instead of waiting out the timeout for a replica that never comes: before a remote
call the caller checks the applications Serve's controller has (one being deleted counts as gone),
a list it asks for at most every ``_DEPLOYED_TTL_S`` seconds per process (in the background once it
has one). When the controller
cannot be asked the call goes ahead as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from ray.serve.handle import DeploymentHandle

from nexus_ray.catalog import Service, service
from nexus_ray.config import get_settings
from nexus_ray.deployments import health
from nexus_ray.exceptions import ServiceUnavailable
from nexus_ray.logs import request_id_var
from nexus_ray.runtime.placement import dedicated, ingress_deployment


def _in_serve() -> bool:
    from ray import serve

    try:
        serve.get_replica_context()
    except Exception:
        return False
    return True


def _in_process(target: Service) -> bool:
    """Whether ``target``'s exports run in this process: outside Serve, or in the ingress that hosts it."""
    from ray import serve

    try:
        ctx = serve.get_replica_context()
    except Exception:
        return True
    return (ctx.app_name == target.namespace and ctx.deployment == ingress_deployment(target.namespace)
            and target.name not in dedicated())


def _ingress(namespace: str) -> DeploymentHandle:
    from ray import serve

    return serve.get_deployment_handle(ingress_deployment(namespace), app_name=namespace)


_DEPLOYED_TTL_S = 2.0
"""How old the list of deployed applications may be before it is asked for again."""

_GONE = ("DELETING", "NOT_STARTED")
"""Serve application statuses whose calls would wait for a replica that is not coming."""

_deployed_seen: tuple[float, frozenset[str]] | None = None
_deployed_refresh: asyncio.Task[None] | None = None


async def _fetch_deployed() -> None:
    global _deployed_seen
    from ray.serve.context import _get_global_client
    from ray.serve.generated import serve_pb2

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return
    raw = await asyncio.wait_for(client._controller.list_serve_statuses.remote(), get_settings().cross_call_timeout_s)
    live = set()
    for b in raw:
        overview = serve_pb2.StatusOverview.FromString(b)  # type: ignore[attr-defined]
        status = serve_pb2.ApplicationStatus.Name(overview.app_status.status)  # type: ignore[attr-defined]
        if status.removeprefix("APPLICATION_STATUS_") not in _GONE:  # being deleted: no replica is coming
            live.add(overview.name)
    _deployed_seen = (time.monotonic(), frozenset(live))


async def deployed(namespace: str) -> bool | None:
    """Whether ``namespace``'s application is deployed, as Serve's controller said at most about two seconds ago.

    ``None`` when it cannot be told (no controller reachable). The first question waits for the
    controller's answer; later ones answer from the last list while a fresh one is fetched.
    """
    global _deployed_refresh
    if _deployed_seen is None or time.monotonic() - _deployed_seen[0] > _DEPLOYED_TTL_S:
        if _deployed_refresh is None or _deployed_refresh.done():
            _deployed_refresh = asyncio.ensure_future(_fetch_deployed())
        if _deployed_seen is None:
            try:
                await asyncio.shield(_deployed_refresh)
            except Exception:
                return None
    if _deployed_refresh is not None and _deployed_refresh.done() and not _deployed_refresh.cancelled():
        _deployed_refresh.exception()  # seen: a failed refresh is retried on the next question
    if _deployed_seen is None:
        return None
    return namespace in _deployed_seen[1]


async def _remote(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, get_settings().cross_call_timeout_s)
    except TimeoutError:
        raise ServiceUnavailable(f"{what} did not answer in time; retry") from None


async def call(service_name: str, function: str, /, **kwargs: Any) -> Any:
    """Run ``function`` of ``service_name``'s ``exports`` with ``kwargs`` (JSON-able or picklable values)."""
    from nexus_ray.deployments.ingress import run_export

    target = service(service_name)
    if _in_process(target):
        return await run_export(service_name, function, kwargs)
    if await deployed(target.namespace) is False:
        raise ServiceUnavailable(f"{service_name} is not deployed (its namespace {target.namespace} is not "
                                 "running); retry later")
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
    if await deployed(namespace) is False:
        raise ServiceUnavailable(f"the {namespace} namespace is not deployed")
    return await _remote(_ingress(namespace).health_report.remote(), f"the {namespace} namespace")
