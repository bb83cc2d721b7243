"""The `nexus` command: run the platform locally, deploy it, and look at it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from nexus_ray.config import get_settings

app = typer.Typer(help="nexus-ray: the Nexus COS platform on Ray.", no_args_is_help=True, add_completion=False)
console = Console()


def _data_dir() -> Path:
    return get_settings().data_dir.resolve()


def _say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


def _store_env() -> dict[str, str]:
    """Store URLs for the cluster: configured ones, else the embedded servers (started now)."""
    s = get_settings()
    env = {"NEXUS_DATA_DIR": str(_data_dir()), "NEXUS_ENVIRONMENT": s.environment}
    configured = {
        "NEXUS_POSTGRES_URL": s.postgres_url,
        "NEXUS_REDIS_URL": s.redis_url,
        "NEXUS_MONGO_URL": s.mongo_url,
        "NEXUS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
    }
    if all(configured.values()):
        return {**env, **configured}
    from nexus_ray.runtime import embedded

    stores = embedded.start(_data_dir(), progress=_say)
    return {**env, **stores.env(), **{k: v for k, v in configured.items() if v}}


@app.command()
def up(
    detach: bool = typer.Option(False, "--detach", "-d", help="Return once everything is ready; leave it running."),
    timeout: float = typer.Option(240.0, help="Seconds to wait for every service to be ready."),
) -> None:
    """Start the embedded stores and a local Ray head, deploy every service, print where to reach them.

    Ctrl-C (or SIGTERM) stops everything it started, at any moment: while it starts (as the stores come up, Ray
    starts or the services deploy) as well as once it runs. A start that fails leaves what it started running, for
    `nexus status` and the logs; `nexus down` stops it."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if _start(detach, timeout):
            return  # detached, and running
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    down()


def _interrupt(*_: object) -> None:
    """SIGTERM as Ctrl-C: wherever ``up`` is, it stops what it started."""
    raise KeyboardInterrupt


def _start(detach: bool, timeout: float) -> bool:
    """What ``up`` does before it waits: True once everything runs detached."""
    from nexus_ray.runtime import cluster, serve_config

    s = get_settings()
    t0 = time.monotonic()
    data_dir = _data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = _store_env()
    head = cluster.start_head(
        data_dir, env, dashboard_port=s.dashboard_port, metrics_export_port=s.metrics_export_port,
        client_server_port=s.ray_client_server_port, pandas=s.ray_local_pandas, progress=_say,
    )
    config = serve_config.build(host=s.http_host, port=s.http_port, max_ongoing_requests=s.ingress_max_ongoing_requests)
    cluster.deploy(head.dashboard_url, config)
    _say("deployed 9 applications; waiting for every service to be ready")
    api = f"http://{s.http_host}:{s.http_port}"
    try:
        cluster.wait_ready(api, head.dashboard_url, timeout=timeout, progress=_say)
    except (TimeoutError, RuntimeError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    _say(f"[green]all 44 services ready in {time.monotonic() - t0:.1f} s[/green]")
    console.print(f"  API        {api}/<namespace>/v1/<service>/...   (directory: {api}/platform/v1/gateway/services)")
    console.print(f"  OpenAPI    {api}/<namespace>/docs")
    console.print(f"  Dashboard  {head.dashboard_url}")
    console.print(f"  Metrics    {head.metrics_url}")
    console.print(f"  Data       {data_dir}")
    if detach:
        console.print("Running in the background; stop with `nexus down`.")
        return True
    console.print("Press Ctrl-C to stop everything.")
    return False


@app.command()
def down() -> None:
    """Stop the local Ray head and the embedded stores (their data stays in the data directory)."""
    from nexus_ray.runtime import cluster, embedded

    n = cluster.stop_head(_data_dir())
    _say(f"ray head stopped ({n} processes)")
    stopped = embedded.stop(_data_dir())
    _say(f"stores stopped: {', '.join(stopped) or 'none running'}")


@app.command()
def status(api: str = typer.Option("", help="API base URL; default from settings.")) -> None:
    """A table of every service: its readiness, the API routes it serves beyond health, its stores."""
    from nexus_ray.catalog import NAMESPACES
    from nexus_ray.deployments.health import state

    s = get_settings()
    base = api or f"http://{s.http_host}:{s.http_port}"
    table = Table("service", "namespace", "path", "tier", "state", "routes", "stores")
    colour = {"ready": "green", "health only": "yellow", "not ready": "red"}
    ok = serving = 0
    with httpx.Client(timeout=10) as client:
        for ns in NAMESPACES:
            try:
                body = client.get(f"{base}/{ns}/health/ready").json()
                rows = body.get("services") or []
            except (httpx.HTTPError, ValueError):
                rows = []
                table.add_row("-", ns, f"/{ns}", "-", "[red]unreachable[/red]", "", "")
            for r in rows:
                ok += bool(r.get("ready"))
                serving += bool(r.get("ready") and r.get("routes"))
                word = state(bool(r.get("ready")), int(r.get("routes") or 0))
                stores = " ".join(f"{k}:{v}" for k, v in (r.get("stores") or {}).items())
                table.add_row(r["name"], ns, r["path"], str(r["tier"]), f"[{colour[word]}]{word}[/{colour[word]}]",
                              str(r.get("routes", "?")), stores)
    console.print(table)
    console.print(f"{ok}/44 services ready: {serving} serve API routes, {ok - serving} health only")
    if ok < 44:
        raise typer.Exit(1)


@app.command()
def deploy(
    address: str = typer.Option(..., help="Dashboard address of the Ray cluster, e.g. http://head:8265"),
) -> None:
    """Deploy every service to an existing Ray cluster (the package must be installed there)."""
    from nexus_ray.runtime import cluster, serve_config

    config = serve_config.build()
    cluster.deploy(address.rstrip("/"), config)
    _say(f"deployed {len(config['applications'])} applications to {address}; `serve status` shows progress")


@app.command("serve-config")
def serve_config_cmd(
    write: bool = typer.Option(False, help="Write cluster/serve_config.yaml (the catalog's placement alone)."),
) -> None:
    """Print the Serve config this machine's settings give (NEXUS_DEDICATED_SERVICES included), or write the
    checked-in one."""
    from nexus_ray.runtime import serve_config

    if write:
        console.print(f"wrote {serve_config.write()}")
    else:
        print(serve_config.render(serve_config.build()), end="")


@app.command("ingress-launcher")
def ingress_launcher(
    path: Path = typer.Argument(..., help="Where to write the launcher (e.g. ~/.nexus/haproxy-ingress)."),
) -> None:
    """Write the HAProxy launcher Serve must start on this node, and print its path.

    For nodes started by hand or by the cluster files: set ``RAY_SERVE_HAPROXY_BINARY_PATH`` to the
    printed path and ``FORWARDED_ALLOW_IPS=""`` in the environment of ``ray start`` (what `nexus up`
    does for a local head), so the ingress replaces a client's X-Forwarded-For with the address it saw.
    """
    from nexus_ray.runtime import cluster

    print(cluster.write_haproxy_launcher(path.expanduser().resolve()))


@app.command()
def token(
    subject: str = typer.Argument(..., help="Who the token is for."),
    scope: list[str] = typer.Option(["*"], "--scope", "-s", help="Scopes to grant (repeat)."),
    ttl: int = typer.Option(3600, help="Lifetime in seconds."),
) -> None:
    """Mint an access token with key-service's current signing key (development and test only)."""
    from nexus_ray.deployments.specialized import keys
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import tokens
    from nexus_ray.exceptions import ValidationFailed
    from nexus_ray.stores import postgres

    wire_edge()

    if get_settings().environment == "production":
        console.print("[red]refused: mint tokens through auth-service-v2 in production[/red]")
        raise typer.Exit(2)
    if not get_settings().postgres_url:  # the signing keys are in PostgreSQL (key-service)
        os.environ.update({k: v for k, v in _store_env().items()})
        get_settings.cache_clear()

    async def mint() -> str:
        try:
            await tokens.prepare()
            token = tokens.issue(subject, scope, ttl_s=ttl, kind="operator", actor="cli")
            await keys.flush_audit()
            return token
        finally:
            await postgres.close_pool()

    try:
        print(asyncio.run(mint()))
    except ValidationFailed as exc:
        console.print(f"[red]{exc.detail}[/red] (--ttl is at most NEXUS_TOKEN_MAX_TTL_S)")
        raise typer.Exit(2) from None


@app.command("api-key")
def api_key(
    principal: str = typer.Argument(..., help="Who the key acts for."),
    name: str = typer.Option("cli", help="A label for the key."),
    scope: list[str] = typer.Option(..., "--scope", "-s", help="Scopes to grant (repeat)."),
) -> None:
    """Create a scoped API key (printed once; only its hash is stored)."""
    from nexus_ray.edge import apikeys

    if not get_settings().postgres_url:
        os.environ.update({k: v for k, v in _store_env().items()})
        get_settings.cache_clear()
    key_id, key = asyncio.run(apikeys.create(principal=principal, name=name, scopes=scope))
    console.print(f"key id {key_id}; the key is shown once:")
    print(key)


@app.callback()
def _refuse_invalid_settings() -> None:
    # Before any command: invalid settings (the development master key outside development, above
    # all) stop everything with one clear line, not a traceback, and never with the value itself.
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False, include_input=False):
            console.print(f"[red]refused to start: {error['msg'].removeprefix('Value error, ')}[/red]")
        raise typer.Exit(2) from None


@app.command("reseal-keys")
def reseal_keys() -> None:
    """Re-seal key-service's signing keys under NEXUS_MASTER_KEY after a master-key rotation (idempotent).

    Run it once every replica has the new NEXUS_MASTER_KEY and the old one in NEXUS_PREVIOUS_MASTER_KEYS;
    then the old one can be dropped.
    """
    from nexus_ray.deployments.specialized import keys
    from nexus_ray.stores import postgres

    if not get_settings().postgres_url:
        os.environ.update(_store_env())
        get_settings.cache_clear()

    async def run() -> dict:
        try:
            return await keys.reseal(actor="cli")
        finally:
            await postgres.close_pool()

    done = asyncio.run(run())
    console.print(f"{len(done['resealed'])} signing keys re-sealed under master key {done['master_key_id']}")
    if done["unreadable"]:
        console.print(f"[red]sealed under a master key not in NEXUS_PREVIOUS_MASTER_KEYS: {done['unreadable']}[/red]")
        raise typer.Exit(1)


events_app = typer.Typer(help="Events: consumers' dead letters and their replay.", no_args_is_help=True)
app.add_typer(events_app, name="events")


def _with_stores() -> None:
    """Point this process at the stores: the configured ones, else the embedded servers (started if need be)."""
    if not get_settings().postgres_url:
        os.environ.update(_store_env())
        get_settings.cache_clear()


T = TypeVar("T")


def _run_on_stores(work: Coroutine[Any, Any, T]) -> T:
    """Run the coroutine ``work`` on the stores, closing the pool after it."""
    from nexus_ray.stores import postgres

    async def run() -> T:
        try:
            return await work
        finally:
            await postgres.close_pool()

    return asyncio.run(run())


@events_app.command("dead-letters")
def dead_letters(
    consumer: str = typer.Option("", "--consumer", "-c", help="Only this consumer group's; default: every consumer's."),
    after: int = typer.Option(0, help="Start after this dead letter id (the last id of the previous page)."),
    limit: int = typer.Option(50, help="Most dead letters to show (1-1000)."),
) -> None:
    """List the events consumers gave up on, oldest first, with their last error."""
    from nexus_ray.exceptions import ValidationFailed
    from nexus_ray.stores import events

    _with_stores()
    try:
        letters = _run_on_stores(events.list_dead_letters(consumer=consumer or None, after=after, limit=limit))
    except ValidationFailed as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(2) from None
    table = Table("id", "consumer", "topic", "event", "status", "attempts", "died", "last error")
    for d in letters:
        table.add_row(str(d.id), d.consumer, d.topic, str(d.event_id), d.status, str(d.attempts),
                      d.dead_at.strftime("%Y-%m-%d %H:%M:%S"), f"{d.error_type}: {d.error_message}"[:120])
    console.print(table)
    if len(letters) == limit:
        console.print(f"more: --after {letters[-1].id}")


@events_app.command("replay")
def replay(
    dead_letter_id: int = typer.Argument(..., help="Id of the dead letter (from `nexus events dead-letters`)."),
    wait: float = typer.Option(0.0, help="Seconds to wait for the consumer to deliver it; 0: do not wait."),
) -> None:
    """Ask a dead letter's consumer to deliver it to its handler once more (asking twice delivers once)."""
    from nexus_ray.exceptions import NotFound
    from nexus_ray.stores import events

    async def request() -> events.DeadLetter:
        letter = await events.request_replay(dead_letter_id=dead_letter_id)
        deadline = time.monotonic() + wait
        while letter.status == "replaying" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            letter = await events.get_dead_letter(dead_letter_id=dead_letter_id)
        return letter

    _with_stores()
    try:
        letter = _run_on_stores(request())
    except NotFound as exc:
        console.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(2) from None
    if letter.status == "replaying":
        said = f"replay requested: a running consumer of {letter.consumer} delivers it at its next look"
    elif letter.status == "replayed":
        said = f"replayed at {letter.replayed_at:%Y-%m-%d %H:%M:%S}"
    else:
        said = f"the replay failed again: {letter.error_type}: {letter.error_message}"[:200]
    console.print(f"dead letter {letter.id} (event {letter.event_id}, {letter.topic}): {said}")
    if letter.status == "dead":
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
