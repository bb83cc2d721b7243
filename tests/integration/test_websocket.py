"""WebSocket routes on the real edge: a real server (uvicorn), a real client (websockets), the real stores.

The probe app is built like a namespace app (errors, route check, edge middleware) with
two probe routes and the platform notice stream.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from nexus_ray.config import get_settings
from nexus_ray.deployments.platform.gateway import live as notice_live
from nexus_ray.edge import metrics
from nexus_ray.edge.security import Principal, check_route_security
from nexus_ray.edge.websocket import ws_authorize, ws_public
from nexus_ray.exceptions import NotFound
from nexus_ray.logs import request_id_var

pytestmark = pytest.mark.integration

MESSAGES_PER_MINUTE = 5


@pytest.fixture(scope="module")
async def server(migrated, until):
    """The probe app served by uvicorn on a free local port; yields its ws:// base URL."""
    import socket

    import uvicorn

    from nexus_ray.edge import errors, tokens
    from nexus_ray.edge.middleware import EdgeMiddleware

    await tokens.prepare()
    router = APIRouter()

    @router.websocket("/echo")
    async def echo(websocket: WebSocket, principal: Principal = ws_authorize("probe:echo:read")):
        await websocket.send_json({"subject": principal.subject, "request_id": request_id_var.get()})
        async for text in websocket.iter_text():
            await websocket.send_text(text)

    @router.websocket("/rooms/{room}")
    async def room(websocket: WebSocket, room: str, principal: Principal = ws_authorize("probe:echo:read")):
        raise NotFound(f"no room {room}")

    @router.websocket("/open", dependencies=[ws_public()])
    async def open_echo(websocket: WebSocket):
        await websocket.send_text(await websocket.receive_text())

    @router.websocket("/boom")
    async def boom(websocket: WebSocket, principal: Principal = ws_authorize("probe:echo:read")):
        raise RuntimeError("a bug")

    app = FastAPI()
    errors.install(app)
    app.include_router(router, prefix="/v1/probe")
    app.include_router(notice_live.router, prefix="/v1/gateway")
    check_route_security(app.routes)
    app.add_middleware(
        EdgeMiddleware, namespace="probe", max_body_bytes=2048, ws_messages_per_minute=MESSAGES_PER_MINUTE
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    await until(lambda: srv.started or task.done())
    assert srv.started, "the probe server did not start"
    yield f"ws://127.0.0.1:{port}"
    srv.should_exit = True
    await task
    sock.close()


@pytest.fixture
def token(bearer):
    """A raw access token: ``token("ns:scope", subject=...)``."""
    return lambda *scopes, subject="ws-user": bearer(*scopes, subject=subject)["Authorization"].split()[1]


async def closed_with(ws) -> tuple[int, str]:
    """(code, reason) of the close frame the server sent, reading past any messages before it."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.recv()
    assert info.value.rcvd is not None, "the connection ended without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


async def test_token_in_subprotocol(server, token):
    t = token("probe:echo:read", subject="proto-user")
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
        assert ws.subprotocol == "nexus.bearer"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "nexus.bearer"  # never the token
        hello = json.loads(await ws.recv())
        assert hello["subject"] == "proto-user"
        # One request id for the connection: echoed in the handshake, current in the endpoint.
        assert hello["request_id"] == ws.response.headers["X-Request-ID"]
        await ws.send("ping")
        assert await ws.recv() == "ping"


async def test_token_in_first_message(server, token):
    async with connect(f"{server}/v1/probe/echo", additional_headers={"X-Request-ID": "ws-req-1"}) as ws:
        assert ws.subprotocol is None
        assert ws.response.headers["X-Request-ID"] == "ws-req-1"
        await ws.send(json.dumps({"type": "auth", "token": token("probe:echo:read", subject="msg-user")}))
        assert json.loads(await ws.recv()) == {"subject": "msg-user", "request_id": "ws-req-1"}


async def test_api_key_in_subprotocol_and_first_message(server):
    from nexus_ray.edge import apikeys

    _kid, key = await apikeys.create(principal="svc-ws", name="ws", scopes=["probe:echo:read"])
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.api-key", key]) as ws:
        assert ws.subprotocol == "nexus.api-key"
        assert json.loads(await ws.recv())["subject"] == "svc-ws"
    async with connect(f"{server}/v1/probe/echo") as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": key}))
        assert json.loads(await ws.recv())["subject"] == "svc-ws"


async def test_public_route_needs_no_credential(server):
    async with connect(f"{server}/v1/probe/open") as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"


async def test_no_credential_is_refused(server):
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer"]) as ws:
        code, reason = await closed_with(ws)
    assert code == 4401 and "without a credential" in reason
    async with connect(f"{server}/v1/probe/echo") as ws:
        await ws.send(json.dumps({"type": "auth"}))
        assert await closed_with(ws) == (1008, "auth message: token or api_key is required")
    async with connect(f"{server}/v1/probe/echo") as ws:
        await ws.send("hello")
        code, reason = await closed_with(ws)
    assert code == 1008 and "first message" in reason


async def test_bad_tokens_are_refused_without_echoing_them(server, token):
    good = token("probe:echo:read")
    head, body, sig = good.split(".")
    forged = f"{head}.{body}.{sig[:-6]}AAAAAA"
    for bad in (forged, "garbage.not.jwt", "nxs_notarealsessiontoken0000000000"):
        async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", bad]) as ws:
            assert ws.subprotocol == "nexus.bearer"
            code, reason = await closed_with(ws)
        assert code == 4401, (bad, code, reason)
        assert bad not in reason and sig not in reason
    async with connect(f"{server}/v1/probe/echo") as ws:
        await ws.send(json.dumps({"type": "auth", "token": forged}))
        code, _ = await closed_with(ws)
    assert code == 4401


async def test_missing_scope_is_refused(server, token):
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", token("probe:other:read")]) as ws:
        assert await closed_with(ws) == (4403, "missing scope: probe:echo:read")


async def test_revoked_token_is_refused(server, token):
    from nexus_ray.edge import revocations

    t = token("probe:echo:read", subject="revoked-ws-user")
    await revocations.revoke_subject("revoked-ws-user")
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
        assert await closed_with(ws) == (4401, "token revoked")


async def test_open_connection_ends_when_its_token_is_revoked(server, token, monkeypatch):
    from nexus_ray.edge import revocations

    monkeypatch.setattr(get_settings(), "ws_recheck_s", 0.2)
    t = token("probe:echo:read", subject="revoked-later-user")
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
        await ws.recv()
        await ws.send("still here")
        assert await ws.recv() == "still here"
        await revocations.revoke_subject("revoked-later-user")
        # Bounded, so that a connection the fix would leave open fails instead of hanging.
        assert await asyncio.wait_for(closed_with(ws), 30) == (4401, "token revoked")


async def test_open_connection_ends_when_its_token_expires(server, token, bearer, monkeypatch):
    monkeypatch.setattr(get_settings(), "ws_recheck_s", 0.2)
    monkeypatch.setattr(get_settings(), "jwt_leeway_s", 0)
    t = bearer("probe:echo:read", subject="short-lived", ttl_s=3)["Authorization"].split()[1]
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
        assert json.loads(await ws.recv())["subject"] == "short-lived"
        assert await asyncio.wait_for(closed_with(ws), 30) == (4401, "token expired")


async def test_auth_message_deadline(server, monkeypatch):
    monkeypatch.setattr(get_settings(), "ws_auth_timeout_s", 0.2)
    async with connect(f"{server}/v1/probe/echo") as ws:
        assert await closed_with(ws) == (4408, "no auth message within 0.2 s")


async def test_messages_per_connection_are_limited(server, token):
    t = token("probe:echo:read", subject="chatty-user")
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
        await ws.recv()
        for i in range(MESSAGES_PER_MINUTE):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
        await ws.send("one too many")
        assert await closed_with(ws) == (4429, f"more than {MESSAGES_PER_MINUTE} messages a minute")
    # The limit is the connection's, not the principal's: a new connection starts afresh.
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
        await ws.recv()
        await ws.send("again")
        assert await ws.recv() == "again"


async def test_connection_attempts_count_against_the_address(server, token, monkeypatch):
    from nexus_ray.stores.cache import redis_client

    await redis_client().delete(*[k async for k in redis_client().scan_iter("nexus:rl:address:127.0.0.1:*")] or ["-"])
    monkeypatch.setattr(get_settings(), "rate_limit_per_address", 3)
    codes = []
    for t in ("bad.token.here", token("probe:echo:read"), "another.bad.one", token("probe:echo:read")):
        async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", t]) as ws:
            try:
                await ws.recv()
                codes.append("open")
            except ConnectionClosed as closed:
                codes.append(closed.rcvd.code)
    # Failed authentications count too; the fourth attempt is refused before its token is looked at.
    assert codes == [4401, "open", 4401, 4429]


async def test_endpoint_errors_close_with_their_code(server, token):
    async with connect(f"{server}/v1/probe/rooms/r-9", subprotocols=["nexus.bearer", token("probe:echo:read")]) as ws:
        assert await closed_with(ws) == (4404, "no room r-9")


async def test_unexpected_errors_close_with_1011_and_are_logged(server, token, captured_logs):
    async with connect(f"{server}/v1/probe/boom", subprotocols=["nexus.bearer", token("probe:echo:read")]) as ws:
        assert await closed_with(ws) == (1011, "internal error")
    logged = [r for r in captured_logs if r.name == "nexus_ray.access" and r.levelname == "ERROR"]
    assert any(r.exc_info and "a bug" in str(r.exc_info[1]) for r in logged)


async def test_connection_metrics_by_route_template_and_close_code(server, token, monkeypatch, until):
    recorded = []
    monkeypatch.setattr(metrics, "ws_opened", lambda tags: recorded.append(("opened", tags["route"])))
    monkeypatch.setattr(metrics, "ws_message", lambda tags, d: recorded.append((d, tags["route"])))
    monkeypatch.setattr(metrics, "ws_closed", lambda tags, code, s: recorded.append(("closed", tags["route"], code)))
    async with connect(f"{server}/v1/probe/echo", subprotocols=["nexus.bearer", token("probe:echo:read")]) as ws:
        await ws.recv()
        await ws.send("x")
        await ws.recv()
    async with connect(f"{server}/v1/probe/rooms/r-1", subprotocols=["nexus.bearer", token("probe:echo:read")]) as ws:
        await closed_with(ws)
    await until(lambda: sum(1 for r in recorded if r[0] == "closed") == 2)
    echo, rooms = "/v1/probe/echo", "/v1/probe/rooms/{room}"
    assert recorded == [
        ("opened", echo), ("out", echo), ("in", echo), ("out", echo), ("closed", echo, "1000"),
        ("opened", rooms), ("closed", rooms, "4404"),
    ]


# -- The platform notice stream ----------------------------------------------------------


async def _notice(ws) -> dict | None:
    message = json.loads(await ws.recv())
    assert message["type"] == "notice"
    return message["notice"]


async def _subscribers() -> int:
    from nexus_ray.stores.cache import redis_client

    return dict(await redis_client().pubsub_numsub(notice_live.CHANNEL))[notice_live.CHANNEL.encode()]


async def test_notice_stream_sends_current_then_each_set_and_clear(server, token, until):
    await notice_live.publish_notice(None)
    url = f"{server}/v1/gateway/notice/live"
    async with connect(url, subprotocols=["nexus.bearer", token("platform:gateway:read")]) as ws:
        assert await _notice(ws) is None
        first = {"message": "maintenance at 02:00", "severity": "warning", "until": None,
                 "set_by": "ops-1", "set_at": datetime.now(UTC).isoformat()}
        await notice_live.publish_notice(json.dumps(first))
        assert await _notice(ws) == first
        # Two streams of one replica share one Redis subscription.
        async with connect(url, subprotocols=["nexus.bearer", token("platform:gateway:read")]) as other:
            assert await _notice(other) == first
            assert await _subscribers() == 1
            await notice_live.publish_notice(None)
            assert await _notice(ws) is None
            assert await _notice(other) is None
    await until(lambda: _subscribers_is(0))  # the last stream gone, the subscription is given back


async def _subscribers_is(n: int) -> bool:
    return await _subscribers() == n


async def test_notice_stream_ends_a_notice_at_its_until(server, token):
    """Redis drops an expired notice without a message: the stream still tells its client."""
    until = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    notice = {"message": "brief", "severity": "info", "until": until, "set_by": "ops-1",
              "set_at": datetime.now(UTC).isoformat()}
    await notice_live.publish_notice(json.dumps(notice), ttl_s=3)
    async with connect(f"{server}/v1/gateway/notice/live",
                       subprotocols=["nexus.bearer", token("platform:gateway:read")]) as ws:
        assert await _notice(ws) == notice
        assert await _notice(ws) is None


async def test_notice_stream_needs_the_read_scope(server, token):
    async with connect(f"{server}/v1/gateway/notice/live",
                       subprotocols=["nexus.bearer", token("platform:gateway:write")]) as ws:
        assert await closed_with(ws) == (4403, "missing scope: platform:gateway:read")
