"""The service kit on the in-process platform: cross-namespace calls stay function calls outside Serve."""

from __future__ import annotations

import pytest

from nexus_ray.deployments.kit.calls import call, namespace_health
from nexus_ray.exceptions import NotFound

pytestmark = pytest.mark.integration


async def test_calls_outside_serve_run_in_process(apps):
    report = await namespace_health("commerce")
    assert {r["name"] for r in report} >= {"ledger-mgr", "billing-service"}
    with pytest.raises(NotFound, match="exports no function"):
        await call("session-mgr", "create_session")
    with pytest.raises(KeyError):
        await call("no-such-service", "x")
