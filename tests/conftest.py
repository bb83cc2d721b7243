"""One set of real stores and one Ray cluster per test session, started on demand.

Unit tests need neither; integration tests ask for ``stores``; e2e tests ask for
``ray_cluster`` or ``platform`` (all nine Serve applications deployed). Everything
started here is stopped by process id at the end of the session.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from pathlib import Path

import pytest

# Settings are read from the environment once per process: set the test environment first.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="nexus-test-"))
os.environ.update(
    {
        "NEXUS_ENVIRONMENT": "test",
        "NEXUS_MASTER_KEY": secrets.token_urlsafe(48),
        "NEXUS_DATA_DIR": str(_SESSION_DIR),
        "NEXUS_LOG_LEVEL": "INFO",
        # The OAuth provider's public URL in the in-process platform (the `client` fixture's base URL):
        # its discovery document's issuer and the iss of every platform token.
        "NEXUS_JWT_ISSUER": "http://nexus.test/auth/v2/oauth",
        # The sweeps present hundreds of refused credentials a minute from one address, which the
        # edge would answer with 429 past its failure budget (tests/integration/test_edge_hardening.py
        # sets a small one to test it).
        "NEXUS_RATE_LIMIT_AUTH_FAILURES_PER_ADDRESS": "1000000",
        # Webhook deliveries retried within a test's patience (tests/integration/test_billing_webhooks.py).
        # Set here, not patched in-process: the deployed platform's billing replica polls the same table
        # and may claim a test's delivery, so every deliverer must keep the same pace and limit.
        "NEXUS_BILLING_WEBHOOK_BACKOFF_S": "0.05",
        "NEXUS_BILLING_WEBHOOK_TIMEOUT_S": "0.5",
        "NEXUS_BILLING_WEBHOOK_POLL_S": "0.1",
        "NEXUS_BILLING_WEBHOOK_MAX_ATTEMPTS": "3",
        # The same for notification retries (tests/integration/test_notifications.py): the deployed
        # notification-service delivers from the same table as the in-process one.
        "NEXUS_NOTIFICATIONS_RETRY_BASE_S": "0.05",
        "NEXUS_NOTIFICATIONS_POLL_S": "0.1",
    }
)
for _k in ("NEXUS_POSTGRES_URL", "NEXUS_REDIS_URL", "NEXUS_MONGO_URL", "NEXUS_KAFKA_BOOTSTRAP", "NEXUS_SMTP_URL"):
    os.environ.pop(_k, None)

from nexus_ray.config import get_settings  # noqa: E402

get_settings.cache_clear()

# What every app's start-up does (build_app): key-service and legacy sessions registered with the edge.
from nexus_ray.deployments.wiring import wire_edge  # noqa: E402
from nexus_ray.runtime.embedded import free_port  # noqa: E402

wire_edge()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def stores(data_dir):
    """The four embedded stores, started once; their URLs are in this process's settings."""
    from nexus_ray.runtime import embedded

    started = embedded.start(data_dir)
    os.environ.update(started.env())
    get_settings.cache_clear()
    yield started
    embedded.stop(data_dir)


@pytest.fixture(scope="session")
async def migrated(stores):
    """The stores with the schema migrated (the pool creates it on first use)."""
    from nexus_ray.stores import postgres

    await postgres.pool()
    yield stores
    await postgres.close_pool()


@pytest.fixture(scope="session")
def ray_cluster(stores, data_dir):
    """A local Ray head whose workers see the stores; this process is connected to it."""
    import ray

    from nexus_ray.runtime import cluster

    env = {**stores.env(), **{k: v for k, v in os.environ.items() if k.startswith("NEXUS_")}}
    head = cluster.start_head(
        data_dir, env, dashboard_port=free_port(), metrics_export_port=free_port(), client_server_port=free_port()
    )
    try:
        cluster.connect(head.address, logging_level="WARNING", log_to_driver=False)
    except BaseException:
        cluster.stop_head(data_dir)  # a fixture that fails before its yield gets no teardown
        raise
    yield head
    ray.shutdown()
    cluster.stop_head(data_dir)


@pytest.fixture(scope="session")
def platform(ray_cluster, bearer):
    """All nine namespace applications deployed on the session cluster; yields the API base URL.

    After ``bearer``: the signing key the tests' tokens use exists before the replicas read their
    keys, as in a running platform (a replica refuses a key it has not read yet at once, and only
    learns of it on a background read).
    """
    from nexus_ray.runtime import cluster, serve_config

    port = free_port()
    config = serve_config.build(host="127.0.0.1", port=port)
    cluster.deploy(ray_cluster.dashboard_url, config)
    api = f"http://127.0.0.1:{port}"
    cluster.wait_ready(api, ray_cluster.dashboard_url, timeout=300)
    yield api


@pytest.fixture(scope="session")
def edge_knows(bearer):
    """``await edge_knows(api)``: wait until every platform replica accepts tokens of this process's current key.

    Tests elsewhere in the session rotate signing keys, after which this process signs with a key
    the replicas have not read yet: a replica refuses such a token at once (401, unknown key) and
    learns the key in the background. A real client sees the same once and retries; a test that
    asserts on its first request waits here first. Each namespace's replicas learn the key on their own:
    ``edge_knows(api, path, scope)`` waits for those that answer ``GET path`` (with a token of ``scope``).
    """
    import httpx

    async def wait(api: str, path: str = "/platform/v1/gateway/notice", scope: str = "platform:gateway:read") -> None:
        headers = bearer(scope, subject="edge-probe")
        accepted = 0
        async with httpx.AsyncClient(base_url=api, timeout=10) as c:
            async def several_in_a_row() -> bool:
                nonlocal accepted
                r = await c.get(path, headers=headers)
                accepted = accepted + 1 if r.status_code == 200 else 0
                return accepted >= 6  # both replicas, whichever HAProxy picks

            await _until(several_in_a_row, within_s=60, every=0.2)

    return wait


async def _until(condition, *, within_s: float = 30.0, every: float = 0.1):
    """Poll ``condition()`` -- a value, or an awaitable of one -- until truthy; fail after ``within_s``."""
    import asyncio
    import time

    deadline = time.monotonic() + within_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


@pytest.fixture(scope="session")
def until():
    """The tests' one way to wait for a condition: ``await until(lambda: ..., within_s=...)``."""
    return _until


@pytest.fixture(scope="module")
def captured_logs():
    """Every log record of a module's tests, as emitted (before any redaction).

    Modules that check their own secrets never reach a log ask for it in ``pytestmark``
    (``pytest.mark.usefixtures("captured_logs")``) so that it records from their first test.
    """
    import logging

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("nexus_ray")]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


class PrefixRouter:
    """Routes ``/<namespace>/...`` to that namespace's app as Serve does (root_path = prefix)."""

    def __init__(self, apps: dict):
        self.apps = apps

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return
        ns = scope["path"].split("/", 2)[1]
        app = self.apps.get(ns)
        if app is None:
            from starlette.responses import PlainTextResponse

            await PlainTextResponse("no application", status_code=404)(scope, receive, send)
            return
        await app({**scope, "root_path": f"/{ns}"}, receive, send)


@pytest.fixture(scope="session")
async def apps(migrated):
    """All nine namespace apps built and started in this process, on the real stores."""
    import contextlib

    from nexus_ray.catalog import NAMESPACES
    from nexus_ray.deployments.app import build_app

    built = {ns: build_app(ns) for ns in NAMESPACES}
    async with contextlib.AsyncExitStack() as stack:
        for app in built.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        yield built


@pytest.fixture(scope="session")
async def client(apps):
    """An HTTP client for the in-process platform: full public paths, as a user would call them."""
    import httpx

    transport = httpx.ASGITransport(app=PrefixRouter(apps), client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://nexus.test") as c:
        yield c


@pytest.fixture(scope="session")
async def served(apps, until):
    """The in-process platform (``apps``) served by uvicorn on a free local port, for WebSocket clients.

    Yields the ``ws://`` base URL; paths are the public ones (``/logistics/v1/...``).
    """
    import asyncio

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(PrefixRouter(apps), lifespan="off", log_config=None))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    await until(lambda: srv.started or task.done())
    assert srv.started, "the server did not start"
    yield f"ws://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    await task
    sock.close()


@pytest.fixture(scope="session")
async def ray_client(ray_cluster, client):
    """The in-process ``client`` with this process connected to the session's Ray cluster, so routes reach actors.

    ``ray_cluster`` comes first so the apps start connected (their actor-backed background work runs).
    """
    yield client


@pytest.fixture(scope="session")
async def bearer(migrated):
    """Makes an Authorization header with a platform token: ``bearer("ns:scope", subject=...)``.

    Signed with key-service's current ES256 key (loaded here once; rotations in this process
    replace it), so the edge verifies it against the live JWKS like any other token.
    """
    from nexus_ray.edge import tokens

    await tokens.prepare()

    def make(*scopes: str, subject: str = "user-1", ttl_s: int = 600) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(subject, list(scopes), ttl_s=ttl_s, actor='tests')}"}

    return make


# -- No secret in any log of the run ------------------------------------------------------
# Every record of the platform's loggers is kept as it was logged (before redaction), and at
# the end of the session those records and every log file of the session's Ray cluster
# (replicas, actors, tasks) are searched for credentials. Finding one fails the run.
import logging  # noqa: E402
import re  # noqa: E402

_SECRET_PATTERNS = {
    "jwt": re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "api key": re.compile(r"nxk_[A-Za-z0-9]+_[A-Za-z0-9_-]{20,}"),
    "session/refresh/code/verification token": re.compile(r"\bnx[svra]_[A-Za-z0-9_-]{20,}"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
}


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "_secret_checked", False):  # reached both the nexus_ray and the root logger
            return
        record._secret_checked = True
        try:
            text = record.getMessage()
        except Exception:
            text = f"{record.msg} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        self.lines.append(f"{record.name}: {text}")


_RECORDER = _Recorder()
for _name in ("nexus_ray", ""):
    logging.getLogger(_name).addHandler(_RECORDER)


def _secrets_in(lines, where: str) -> list[str]:
    found = []
    for line in lines:
        for kind, pattern in _SECRET_PATTERNS.items():
            if pattern.search(line):
                found.append(f"{where}: {kind}: {pattern.sub('<...>', line)[:200]}")
    return found


@pytest.hookimpl(trylast=True)  # after the session's fixtures (stores, Ray) are torn down
def pytest_sessionfinish(session, exitstatus):
    import shutil

    from nexus_ray.runtime import cluster

    found = _secrets_in(_RECORDER.lines, "log record")
    ray_logs = Path(cluster.temp_dir_for(_SESSION_DIR))
    for f in ray_logs.glob("session_*/logs/**/*"):
        if f.is_file() and f.suffix in (".log", ".out", ".err", ""):
            try:
                found += _secrets_in(f.read_text(errors="replace").splitlines(), f.name)
            except OSError:
                pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if found:
        if reporter:
            reporter.write_line(f"SECRETS IN LOGS ({len(found)}):", red=True)
            for line in found[:50]:
                reporter.write_line("  " + line)
        session.exitstatus = 1
    elif reporter:
        reporter.write_line(f"logs checked for secrets: {len(_RECORDER.lines)} records, Ray logs in {ray_logs}: none")
    if session.exitstatus == 0:  # a failed run keeps its data and logs for a look
        shutil.rmtree(ray_logs, ignore_errors=True)
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)
