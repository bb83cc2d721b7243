"""The live platform notice through the real entrypoint: HAProxy, then a Serve replica's own HTTP server."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e

LIVE = "/platform/v1/gateway/notice/live"
NOTICE = "/platform/v1/gateway/notice"


async def _notice(ws) -> dict | None:
    message = json.loads(await ws.recv())
    assert message["type"] == "notice", message
    return message["notice"]


async def test_notice_stream_through_the_entrypoint(platform, bearer, edge_knows):
    await edge_knows(platform)
    token = bearer("platform:gateway:read", subject="e2e-viewer")["Authorization"].split()[1]
    admin = bearer("platform:gateway:admin", subject="e2e-ops")
    ws_url = platform.replace("http://", "ws://") + LIVE
    async with httpx.AsyncClient(base_url=platform, timeout=30) as http:
        assert (await http.delete(NOTICE, headers=admin)).status_code == 204
        async with connect(ws_url, subprotocols=["nexus.bearer", token],
                           additional_headers={"X-Request-ID": "e2e-ws-1"}) as ws:
            assert ws.subprotocol == "nexus.bearer"
            assert ws.response.headers["X-Request-ID"] == "e2e-ws-1"
            assert await _notice(ws) is None
            r = await http.put(NOTICE, json={"message": "upgrade tonight", "severity": "warning"}, headers=admin)
            assert r.status_code == 200, r.text
            got = await _notice(ws)
            assert got["message"] == "upgrade tonight" and got["set_by"] == "e2e-ops"
            assert (await http.delete(NOTICE, headers=admin)).status_code == 204
            assert await _notice(ws) is None


async def test_refusal_close_codes_pass_the_entrypoint(platform, bearer, edge_knows):
    await edge_knows(platform)
    ws_url = platform.replace("http://", "ws://") + LIVE
    wrong = bearer("platform:gateway:write")["Authorization"].split()[1]
    async with connect(ws_url, subprotocols=["nexus.bearer", wrong]) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4403, "missing scope: platform:gateway:read")
    async with connect(ws_url) as ws:  # the credential in the first message
        await ws.send(json.dumps({"type": "auth", "token": "not.a.token"}))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd.code == 4401
