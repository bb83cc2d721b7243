"""The client address: X-Forwarded-For is believed only from trusted proxies, and only as far as they wrote it.

And the HAProxy that Serve starts on a head replaces whatever X-Forwarded-For the client sent
(tests/e2e/test_client_address.py shows both through the real entrypoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from nexus_ray.config import Settings
from nexus_ray.edge.security import client_address, forwarded_client
from nexus_ray.runtime import cluster

LOOPBACK = ["127.0.0.0/8", "::1"]


def _request(peer: str | None, *forwarded: str) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "client": (peer, 40000) if peer else None})


def test_defaults_trust_loopback_only():
    assert Settings().trusted_proxies == LOOPBACK


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # A client that is not a proxy names whatever it likes: ignored.
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7"),
        ("203.0.113.7", ["127.0.0.1"], "203.0.113.7"),
        # The proxy's entry is the client; what the client sent before it is not looked at.
        ("127.0.0.1", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # header lines read as one list
        # Trusted hops are skipped: a proxy behind a proxy.
        ("127.0.0.1", ["198.51.100.1, 203.0.113.7, 127.0.0.5"], "203.0.113.7"),
        # Nothing forwarded, or only proxies: the furthest address known.
        ("127.0.0.1", [], "127.0.0.1"),
        ("127.0.0.1", ["127.0.0.2"], "127.0.0.2"),
        # An entry that is no address ends the walk at the last hop vouched for.
        ("127.0.0.1", ["203.0.113.7, unknown"], "127.0.0.1"),
        ("127.0.0.1", ["198.51.100.1, garbage, 127.0.0.3"], "127.0.0.3"),
        ("127.0.0.1", [""], "127.0.0.1"),
        # Ports and brackets are not part of the address; IPv6 loopback and v4-mapped peers are proxies.
        ("127.0.0.1", ["203.0.113.7:5555"], "203.0.113.7"),
        ("::1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["2001:DB8::7"], "2001:db8::7"),
    ],
)
def test_walk_from_the_right_over_trusted_hops(peer, forwarded, expected):
    assert forwarded_client(peer, forwarded, LOOPBACK) == expected


def test_nothing_trusted_means_the_peer():
    assert forwarded_client("127.0.0.1", ["203.0.113.7"], []) == "127.0.0.1"


def test_a_configured_proxy_network():
    proxies = ["10.0.0.0/8"]
    assert forwarded_client("10.1.2.3", ["203.0.113.7, 10.9.9.9"], proxies) == "203.0.113.7"
    assert forwarded_client("127.0.0.1", ["203.0.113.7"], proxies) == "127.0.0.1"  # loopback not listed


def test_request_uses_the_settings(monkeypatch):
    from nexus_ray.config import get_settings

    monkeypatch.setattr(get_settings(), "trusted_proxies", LOOPBACK)
    assert client_address(_request("127.0.0.1", "198.51.100.1", "203.0.113.7")) == "203.0.113.7"
    assert client_address(_request("203.0.113.9", "198.51.100.1")) == "203.0.113.9"
    assert client_address(_request(None, "198.51.100.1")) == "unknown"
    assert client_address(_request("127.0.0.1", "203.0.113.7")) == "203.0.113.7"
    monkeypatch.setattr(get_settings(), "trusted_proxies", [])
    # The same request again: the answer is remembered per trusted-proxy list, never across lists.
    assert client_address(_request("127.0.0.1", "203.0.113.7")) == "127.0.0.1"


@pytest.mark.parametrize("bad", ["localhost", "10.0.0.0/33", "1.2.3.4.5", ""])
def test_trusted_proxies_must_be_addresses(monkeypatch, bad):
    monkeypatch.setenv("NEXUS_TRUSTED_PROXIES", f'["127.0.0.1", "{bad}"]')
    with pytest.raises(ValidationError, match="NEXUS_TRUSTED_PROXIES"):
        Settings()


def test_trusted_proxies_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEXUS_TRUSTED_PROXIES", '["10.0.0.0/16", "fd00::/8"]')
    assert Settings().trusted_proxies == ["10.0.0.0/16", "fd00::/8"]


# -- The HAProxy launcher ---------------------------------------------------------------------


def _serve_haproxy_config(tmp_path) -> str:
    """The config the installed Serve renders for a head's HAProxy (no server is started)."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions, gRPCOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=18998), grpc_options=gRPCOptions(), is_head=True,
        socket_path=str(tmp_path / "admin.sock"), server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "state"), metrics_socket_path=str(tmp_path / "metrics.sock"),
    )
    path = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg=cfg, config_file_path=str(path))._generate_config_file_internal()
    return str(path)


def test_launcher_puts_the_rule_in_serves_frontend_and_haproxy_accepts_it(tmp_path):
    config = _serve_haproxy_config(tmp_path)
    launcher = cluster.write_haproxy_launcher(tmp_path / "haproxy-ingress")
    checked = subprocess.run([str(launcher), "-c", "-f", config], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout
    started = (tmp_path / "haproxy.cfg.nexus").read_text()
    frontend = started.split("frontend http_frontend\n", 1)[1].split("\nbackend ", 1)[0]
    rules = [line.strip() for line in frontend.splitlines() if line.strip().startswith("http-request")]
    # First of the frontend's rules, so no other rule (health, routes, routing) sees the client's header.
    assert rules[0] == "http-request set-header X-Forwarded-For %[src]"
    # Serve's 502/503/504 answers (one plain-text 500) are the platform's problem+json ones.
    pages = {line.split()[1]: line.split()[2] for line in started.splitlines() if line.strip().startswith("errorfile")}
    assert set(pages) == {"502", "503", "504"}
    assert all(page == f"{launcher}-{status}.http" for status, page in pages.items())
    original = (tmp_path / "haproxy.cfg").read_text()
    assert [line for line in started.replace(cluster.INGRESS_RULES, "").splitlines() if "errorfile" not in line] == [
        line for line in original.splitlines() if "errorfile" not in line]


async def test_haproxy_answers_problem_json_when_no_replica_answers(tmp_path, until):
    """A replica that ends the connection unanswered (as one killed under a request does) gives a 502, and no
    replica at all a 503, each as problem+json with a code; Serve's config would have said "500" in plain text."""
    import json
    import socket
    import threading

    import httpx

    from nexus_ray.runtime.embedded import free_port

    closer = socket.socket()  # takes each connection and closes it without an answer
    closer.bind(("127.0.0.1", 0))
    closer.listen(16)

    def close_all() -> None:
        while True:
            try:
                conn, _ = closer.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=close_all, daemon=True).start()
    port, nobody = free_port(), free_port()
    serves = tmp_path / "500.http"  # what Serve writes and its config names for all three
    serves.write_bytes(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\n"
                       b"Internal Server Error")
    config = tmp_path / "haproxy.cfg"
    # The shape of Serve's: the 50x answers set in defaults, the frontend the launcher looks for.
    config.write_text(f"""global
    maxconn 100
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    retries 1
    errorfile 502 {serves}
    errorfile 503 {serves}
    errorfile 504 {serves}
frontend http_frontend
    bind 127.0.0.1:{port}
    use_backend dead if {{ path_beg /dead }}
    default_backend closing
backend closing
    server s1 127.0.0.1:{closer.getsockname()[1]}
backend dead
    server s1 127.0.0.1:{nobody}
""")
    launcher = cluster.write_haproxy_launcher(tmp_path / "haproxy-ingress")
    proxy = await asyncio.create_subprocess_exec(str(launcher), "-db", "-f", str(config))
    answers: dict[str, httpx.Response] = {}

    async def answered(http: httpx.AsyncClient) -> bool:
        assert proxy.returncode is None, "HAProxy exited"
        with contextlib.suppress(httpx.TransportError):  # until it listens
            answers["closing"] = await http.get("/orders")
            return True
        return False

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            await until(lambda: answered(http), within_s=30)
            answers["dead"] = await http.get("/dead")
    finally:
        proxy.kill()
        await proxy.wait()
        closer.close()
    closing, dead = answers["closing"], answers["dead"]
    for answer, status, code in ((closing, 502, "upstream_failed"), (dead, 503, "no_replica")):
        assert answer.status_code == status
        assert answer.headers["content-type"] == "application/problem+json"
        body = json.loads(answer.content)
        assert body["status"] == status and body["code"] == code and body["detail"]
    assert dead.headers["retry-after"] == "1"


def test_launcher_refuses_a_config_without_the_frontend(tmp_path):
    config = tmp_path / "other.cfg"
    config.write_text("global\n    maxconn 10\n")
    launcher = cluster.write_haproxy_launcher(tmp_path / "haproxy-ingress", real="/bin/true")
    run = subprocess.run([str(launcher), "-db", "-f", str(config)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "X-Forwarded-For" in run.stderr


def test_launcher_passes_every_argument_on_to_the_real_binary(tmp_path):
    seen = tmp_path / "argv"
    fake = tmp_path / "fake-haproxy"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\n')
    fake.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend http_frontend\n    bind :1\n")
    launcher = cluster.write_haproxy_launcher(tmp_path / "haproxy-ingress", real=str(fake))
    run = subprocess.run([str(launcher), "-db", "-f", str(config), "-sf", "123", "-x", "/s"], timeout=60)
    assert run.returncode == 0
    assert seen.read_text().split() == ["-db", "-f", f"{config}.nexus", "-sf", "123", "-x", "/s"]


def test_uvicorn_in_the_replicas_believes_no_proxy(monkeypatch):
    # The head sets FORWARDED_ALLOW_IPS="" for Serve's uvicorn, which otherwise rewrites the peer from
    # X-Forwarded-For when it comes from loopback, before the edge (and trusted_proxies) sees it.
    import uvicorn
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    async def app(scope, receive, send):  # pragma: no cover - never called
        pass

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")
    config = uvicorn.Config(app, log_config=None)
    config.load()
    layer = config.loaded_app
    while not isinstance(layer, ProxyHeadersMiddleware):
        layer = layer.app
    assert "127.0.0.1" not in layer.trusted_hosts and "::1" not in layer.trusted_hosts
