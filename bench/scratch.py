"""Throwaway embedded stores for in-process benchmarks (``from scratch import scratch_stores``; ``NO_RATE_LIMIT``
for a bench's own token), a namespace's app in this process with a client over ASGI (``asgi_client``), a fault
injector that terminates PostgreSQL backends under the app (``terminate_backends``), the machine a run's figures
came from (``machine``), and the CPU time a run cost this process and PostgreSQL (``CpuMeter``)."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

NO_RATE_LIMIT = {"NEXUS_RATE_LIMIT_PER_ADDRESS": str(10**9), "NEXUS_RATE_LIMIT_PER_PRINCIPAL": str(10**9)}
"""``scratch_stores`` settings under which the edge's rate limiter counts but never refuses the bench's token."""

_STORE_URLS = ("NEXUS_POSTGRES_URL", "NEXUS_REDIS_URL", "NEXUS_MONGO_URL", "NEXUS_KAFKA_BOOTSTRAP", "NEXUS_SMTP_URL")


@contextmanager
def scratch_stores(prefix: str, **env: str) -> Iterator[Path]:
    """The embedded stores (and SMTP server) in a new temporary data dir, with their URLs and ``env`` in this
    process's environment (set before any settings are read); stopped and removed afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ.update({"NEXUS_DATA_DIR": str(data_dir), "NEXUS_LOG_LEVEL": "WARNING", **env})
    for k in _STORE_URLS:
        os.environ.pop(k, None)
    from nexus_ray.runtime import embedded

    try:
        os.environ.update(embedded.start(data_dir).env())
        yield data_dir
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def machine(**extra: Any) -> dict[str, Any]:
    """What a run's figures depend on besides the code: cores, Python, the load average at its end."""
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "load_average": [round(x, 1) for x in os.getloadavg()], **extra}


class CpuMeter:
    """CPU seconds (user and system) spent between :meth:`start` and :meth:`stop` by this process and by the
    PostgreSQL of this run's stores (``NEXUS_DATA_DIR``: its postmaster and every backend), and how busy the whole
    machine was. On a host whose speed drifts from minute to minute, CPU time per unit of work compares code far
    more steadily than the rate does."""

    def __init__(self) -> None:
        from nexus_ray.runtime import cluster

        self._postmasters = [p.pid for p in cluster.processes(os.environ["NEXUS_DATA_DIR"]) if p.name() == "postgres"]

    def _now(self) -> tuple[dict[str, float], dict[str, float], Any]:
        import psutil
        from rate_cpu import cpu_of  # bench/ is on sys.path when a bench runs

        return cpu_of([os.getpid()]), cpu_of(self._postmasters), psutil.cpu_times()

    def start(self) -> None:
        self._before = self._now()

    def stop(self) -> dict[str, float]:
        """{"process": s, "postgres": s, "machine_busy": fraction of all cores busy (any process)}."""
        (own0, pg0, sys0), (own1, pg1, sys1) = self._before, self._now()

        def spent(t: Any) -> tuple[float, float]:  # (all, busy); guest time is counted in user already
            every = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
            return every, every - t.idle - getattr(t, "iowait", 0.0)

        (all0, busy0), (all1, busy1) = spent(sys0), spent(sys1)
        return {"process": sum(own1.values()) - sum(own0.values()),
                "postgres": sum(t - pg0.get(name, 0.0) for name, t in pg1.items()),
                "machine_busy": (busy1 - busy0) / (all1 - all0) if all1 > all0 else 0.0}


@asynccontextmanager
async def asgi_client(namespace: str, scopes: list[str], *, timeout: float = 60
                      ) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    """(an httpx client, headers with a bearer token holding ``scopes``) for the ``namespace`` app built in this
    process -- the edge and the services as deployed, without Serve -- with its lifespan (stores, relay, sweeps)
    running. The client reaches it over ASGI from the address 10.9.0.1."""
    import httpx

    from nexus_ray.config import get_settings
    from nexus_ray.deployments.app import build_app
    from nexus_ray.edge import tokens

    get_settings.cache_clear()
    app = build_app(namespace)
    async with app.router.lifespan_context(app):
        await tokens.prepare()
        headers = {"Authorization": f"Bearer {tokens.issue('bench', scopes, ttl_s=3600)}"}
        transport = httpx.ASGITransport(app=app, root_path=f"/{namespace}", client=("10.9.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=timeout) as c:
            yield c, headers


async def terminate_backends(stop: asyncio.Event, *, every_ms: float, rng: random.Random, where: str = "") -> int:
    """Until ``stop``, every ``every_ms`` terminate one PostgreSQL client backend of this database that is running
    a statement or holding a transaction open (``pg_terminate_backend``), chosen at random among those that also
    match the SQL condition ``where``; returns how many were terminated. ``every_ms`` <= 0: none."""
    from nexus_ray.stores import postgres

    if every_ms <= 0:
        return 0
    pg = await postgres.pool()
    kills = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_ms / 1000)
        except TimeoutError:
            pass
        if stop.is_set():
            break
        try:
            pids = await pg.fetch(
                "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
                "AND backend_type = 'client backend' AND state IN ('active', 'idle in transaction') "
                f"AND query NOT ILIKE '%pg_stat_activity%' {'AND ' + where if where else ''}")
            if pids and await pg.fetchval("SELECT pg_terminate_backend($1)", rng.choice(pids)["pid"]):
                kills += 1
        except Exception:  # the killer's own connection may be one a pool replaced: go on
            continue
    return kills
