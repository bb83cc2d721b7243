"""The WebSocket guard's offline parts: the start-up check of WebSocket routes, close codes, the auth message."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI, WebSocket

from nexus_ray.edge.security import authorize, check_route_security, public, route_guard
from nexus_ray.edge.websocket import _auth_message, close_code, close_reason, ws_authorize, ws_public
from nexus_ray.exceptions import Forbidden, NotFound, RateLimited, ServiceUnavailable, Unauthorized, ValidationFailed


def _app(router: APIRouter) -> FastAPI:
    app = FastAPI()
    app.include_router(router, prefix="/v1/probe")
    return app


def test_unguarded_websocket_route_refused_at_build():
    router = APIRouter()

    @router.websocket("/live")
    async def live(websocket: WebSocket):
        await websocket.accept()

    with pytest.raises(RuntimeError, match=r"WEBSOCKET /v1/probe/live"):
        check_route_security(_app(router).routes)


def test_http_guard_does_not_count_on_a_websocket_route_nor_the_reverse():
    ws = APIRouter()

    @ws.websocket("/live", dependencies=[authorize("probe:live:read")])
    async def live(websocket: WebSocket):
        await websocket.accept()

    with pytest.raises(RuntimeError, match=r"WEBSOCKET /v1/probe/live"):
        check_route_security(_app(ws).routes)

    http = APIRouter()

    @http.get("/things", dependencies=[ws_public()])
    async def things():
        return []

    with pytest.raises(RuntimeError, match=r"GET /v1/probe/things"):
        check_route_security(_app(http).routes)


def test_plain_starlette_websocket_route_refused():
    from starlette.routing import WebSocketRoute

    app = FastAPI()

    async def raw(websocket: WebSocket):
        await websocket.accept()

    app.router.routes.append(WebSocketRoute("/raw", raw))
    with pytest.raises(RuntimeError, match=r"WEBSOCKET /raw"):
        check_route_security(app.routes)


def test_guarded_websocket_routes_pass_and_report_their_guard():
    from fastapi.routing import APIWebSocketRoute, iter_route_contexts

    router = APIRouter()

    @router.websocket("/scoped")
    async def scoped(websocket: WebSocket, principal=ws_authorize("probe:live:read", "probe:live:write")):
        pass

    @router.websocket("/open", dependencies=[ws_public()])
    async def open_(websocket: WebSocket):
        pass

    @router.get("/http", dependencies=[public()])
    async def http():
        return {}

    app = _app(router)
    check_route_security(app.routes)
    guards = {
        rc.path: route_guard(rc) for rc in iter_route_contexts(app.routes)
        if isinstance(rc.original_route, APIWebSocketRoute)
    }
    assert guards == {
        "/v1/probe/scoped": ("scopes", ("probe:live:read", "probe:live:write")),
        "/v1/probe/open": ("public", ()),
    }


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (Unauthorized("x"), 4401),
        (Forbidden("x"), 4403),
        (NotFound("x"), 4404),
        (ValidationFailed("x"), 4422),
        (RateLimited.retry_after(5, "address"), 4429),
        (ServiceUnavailable("x"), 1013),
    ],
)
def test_close_code_is_4000_plus_the_http_status(err, code):
    assert close_code(err) == code


def test_close_reason_fits_a_close_frame():
    assert close_reason("short") == "short"
    cut = close_reason("é" * 200)
    assert len(cut.encode()) <= 123 and cut.endswith("...")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type": "auth", "token": "abc"}', ("nexus.bearer", "abc")),
        ('{"type": "auth", "api_key": "nxk_x_y"}', ("nexus.api-key", "nxk_x_y")),
    ],
)
def test_auth_message_accepted(text, expected):
    assert _auth_message(text) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (None, "first message"),  # a binary frame
        ("not json", "first message"),
        ('{"type": "hello"}', "first message"),
        ('["auth"]', "first message"),
        ('{"type": "auth"}', "token or api_key"),
        ('{"type": "auth", "token": ""}', "token"),
        ('{"type": "auth", "token": 42}', "token"),
        ('{"type": "auth", "api_key": null, "token": null}', "token or api_key"),
    ],
)
def test_bad_auth_message_names_what_is_wrong(text, names):
    with pytest.raises(ValueError, match=names):
        _auth_message(text)
