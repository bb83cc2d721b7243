"""Through the real entrypoint (HAProxy, then Serve's replicas): a client cannot choose the address the platform sees.

Before: HAProxy passed the client's X-Forwarded-For on and the replicas believed it from
loopback, so a session opened with ``X-Forwarded-For: 198.51.100.77`` was recorded with that
address (and failed logins, each with a new one, met no per-address throttle). Now HAProxy sets
the header to the peer it saw and the edge believes it only from trusted proxies.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

pytestmark = pytest.mark.e2e

SCOPES = ("platform:sessions:read", "platform:sessions:write")


@pytest.mark.parametrize(
    "forged",
    [
        "198.51.100.77",
        "198.51.100.77, 127.0.0.1",  # ends with a trusted address, hoping to be walked past
        "unknown",
    ],
)
async def test_a_forged_x_forwarded_for_is_not_the_address_recorded(platform, bearer, forged):
    user = f"xff-{uuid.uuid4().hex[:12]}"
    headers = {**bearer(*SCOPES, subject=user), "X-Forwarded-For": forged}
    async with httpx.AsyncClient(base_url=platform, timeout=60) as api:
        r = await api.post(f"/platform/v1/sessions/users/{user}/sessions", json={"device": "probe"}, headers=headers)
        assert r.status_code == 201, r.text
        try:
            # This client connects from loopback: that, and nothing it sent, is what the platform records.
            assert r.json()["ip"] == "127.0.0.1"
        finally:
            await api.delete(f"/platform/v1/sessions/users/{user}/sessions", headers=headers)
