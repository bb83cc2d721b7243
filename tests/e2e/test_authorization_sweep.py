"""The authorization sweep once through the real entrypoint (HAProxy and Serve), not only in-process.

The same sweep as tests/integration/test_edge.py (tests/sweep.py): what the edge refuses in-process it must
refuse as deployed, where the request crosses HAProxy, Serve's proxy and a replica.
"""

from __future__ import annotations

import httpx
import pytest
import sweep

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def apps():
    """The namespace apps built in this process, not started: the route table of what the cluster serves."""
    return sweep.build_apps()


@pytest.fixture(scope="module")
async def entrypoint(platform):
    async with httpx.AsyncClient(base_url=platform, timeout=30) as c:
        yield c


async def test_authorization_sweep_through_the_entrypoint(entrypoint, apps, bearer):
    table = sweep.route_table(apps)
    assert await sweep.sweep_credentials(entrypoint, table, bearer) == len(table)


async def test_another_users_objects_are_refused_through_the_entrypoint(entrypoint, apps, bearer):
    """As user B, every route that takes an object id, or whose body names one, on user A's objects: refused."""
    table = sweep.route_table(apps)
    result = await sweep.sweep_ownership(entrypoint, apps, table, bearer)
    assert result["checked"] == result["routes"] == sum(1 for r in table if r.params) + len(result["by body"])
    # With Ray behind the entrypoint, session-mgr's sessions are real objects of A too.
    assert "GET /platform/v1/sessions/users/{user_id}/sessions/{session_id}" in result["owned"], result["owned"]
    # A's ledger account exists (a known currency), so an entry naming it in its lines is checked, every time.
    assert "POST /commerce/v1/ledger/entries" in result["by body"], result["not created"]
    assert not result["failures"], "\n".join(result["failures"])
