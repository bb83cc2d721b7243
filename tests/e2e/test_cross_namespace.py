"""Calls across namespaces go over the target namespace's DeploymentHandle and reach the service's exports."""

from __future__ import annotations

import uuid

import httpx
import pytest
from ray import serve

from nexus_ray.exceptions import NotFound
from nexus_ray.runtime.placement import ingress_deployment

pytestmark = pytest.mark.e2e

SCOPES = ("platform:sessions:read", "platform:sessions:write")


async def test_an_export_is_called_over_the_namespace_handle(platform, bearer):
    user = f"cross-{uuid.uuid4().hex[:10]}"
    headers = bearer(*SCOPES, subject=user)
    base = f"/platform/v1/sessions/users/{user}/sessions"
    async with httpx.AsyncClient(base_url=platform, timeout=30) as c:
        for device in ("phone", "tv"):
            assert (await c.post(base, json={"device": device}, headers=headers)).status_code == 201
        handle = serve.get_deployment_handle(ingress_deployment("platform"), app_name="platform")
        ended = await handle.invoke.remote("session-mgr", "revoke_all_sessions", {"user_id": user}, "rid-cross-1")
        assert ended == 2
        assert (await c.get(base, headers=headers)).json()["items"] == []


async def test_unknown_exports_and_foreign_services_are_refused(platform):
    handle = serve.get_deployment_handle(ingress_deployment("platform"), app_name="platform")
    with pytest.raises(NotFound, match="exports no function"):
        await handle.invoke.remote("session-mgr", "create_session", {}, None)
    with pytest.raises(NotFound, match="not a service of platform"):
        await handle.invoke.remote("ledger-mgr", "anything", {}, None)


async def test_callers_know_which_namespaces_are_deployed(platform):
    """A call into a namespace Serve does not have is refused at once (503) instead of waiting for a replica;
    the caller tells from the controller's list of deployments, which it keeps for about two seconds."""
    from nexus_ray.deployments.kit import calls

    assert await calls.deployed("commerce") is True
    assert await calls.deployed("platform") is True
    assert await calls.deployed("no-such-namespace") is False
