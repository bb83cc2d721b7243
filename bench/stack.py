"""Startup time, idle cost and fault behaviour of the whole local stack.

    NEXUS_DATA_DIR=/tmp/nexus-bench python bench/stack.py startup   # cold `nexus up` to all 44 ready
    NEXUS_DATA_DIR=/tmp/nexus-bench python bench/stack.py idle      # idle CPU and memory of everything
    NEXUS_DATA_DIR=/tmp/nexus-bench python bench/stack.py faults    # replica kill under load; down/up keeps data

``startup`` stops whatever runs for that data dir first; the others need it running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
NEXUS = str(ROOT / ".venv/bin/nexus")


def data_dir() -> Path:
    return Path(os.environ.get("NEXUS_DATA_DIR", ".nexus")).resolve()


def stack_processes() -> list[psutil.Process]:
    from nexus_ray.runtime import cluster, embedded

    procs = {p.pid: p for p in cluster.processes(cluster.temp_dir_for(data_dir()))}
    for info in embedded.status(data_dir()).values():
        if info.get("alive"):
            p = psutil.Process(info["pid"])
            procs[p.pid] = p
            for c in p.children(recursive=True):
                procs[c.pid] = c
    return list(procs.values())


def startup() -> dict:
    subprocess.run([NEXUS, "down"], capture_output=True)
    t0 = time.monotonic()
    out = subprocess.run([NEXUS, "up", "--detach"], capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        print(out.stdout, out.stderr, file=sys.stderr)
        raise SystemExit(1)
    return {"cold_up_to_all_ready_s": round(elapsed, 1), "log": out.stdout.splitlines()[-12:]}


def idle(seconds: float = 30.0, top: int = 12) -> dict:
    """CPU (as % of the machine) and memory of every stack process over ``seconds``; the ``top`` busiest named."""
    procs = stack_processes()

    def cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            return 0.0

    before, t0 = {p.pid: cpu(p) for p in procs}, time.monotonic()
    time.sleep(seconds)
    after, t1 = {p.pid: cpu(p) for p in procs}, time.monotonic()
    rss = pss = 0
    for p in procs:
        try:
            m = p.memory_full_info()
            rss += m.rss
            pss += m.pss
        except psutil.NoSuchProcess:
            pass
    cores = psutil.cpu_count()
    used = {p.pid: max(0.0, after[p.pid] - before[p.pid]) for p in procs}

    def name(p: psutil.Process) -> str:
        try:
            return (" ".join(p.cmdline()) or p.name())[:80]
        except psutil.Error:
            return "?"

    busiest = sorted(procs, key=lambda p: used[p.pid], reverse=True)[:top]
    return {
        "processes": len(procs),
        "idle_cpu_percent_of_machine": round(100 * sum(used.values()) / (t1 - t0) / cores, 1),
        "rss_mib": round(rss / 2**20),
        "pss_mib": round(pss / 2**20),
        "window_s": seconds,
        "busiest_percent_of_one_core": [[round(100 * used[p.pid] / (t1 - t0), 1), name(p)] for p in busiest],
    }


def _token(scope: str) -> str:
    return subprocess.run([NEXUS, "token", "bench-faults", "-s", scope], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


def kill_replica_under_load(api: str = "http://127.0.0.1:8000") -> dict:
    """Load the platform namespace, SIGKILL its ingress replica, count failures and time to recovery."""
    token = _token("platform:gateway:read")
    url = f"{api}/platform/v1/gateway/notice"
    headers = {"Authorization": f"Bearer {token}"}
    def replicas() -> set[int]:
        found = set()
        for p in stack_processes():
            try:
                if "ServeReplica:platform" in " ".join(p.cmdline()):
                    found.add(p.pid)
            except psutil.Error:
                pass
        return found

    before = replicas()
    victim = psutil.Process(min(before))
    replaced_at: dict[str, float | None] = {"t": None}
    results: list[tuple[float, int]] = []

    async def worker(client: httpx.AsyncClient, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            try:
                r = await client.get(url, headers=headers)
                results.append((time.monotonic(), r.status_code))
            except httpx.HTTPError:
                results.append((time.monotonic(), 0))
                await asyncio.sleep(0.05)

    async def run() -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            start = time.monotonic()
            stop_at = start + 40
            tasks = [asyncio.create_task(worker(client, stop_at)) for _ in range(8)]
            await asyncio.sleep(5)
            killed_at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            while time.monotonic() < stop_at and replaced_at["t"] is None:
                if len(await asyncio.to_thread(replicas) - {victim.pid}) == len(before):
                    replaced_at["t"] = time.monotonic()
                await asyncio.sleep(0.5)
            await asyncio.gather(*tasks)
            return killed_at

    killed_at = asyncio.run(run())
    replaced_s = replaced_at["t"] and round(replaced_at["t"] - killed_at, 1)
    replicas_now = replicas()
    after = [(t, s) for t, s in results if t >= killed_at]
    failures = [(t, s) for t, s in after if s != 200]
    last_failure = max((t for t, _ in failures), default=killed_at)
    tail = [s for t, s in after if t > last_failure]
    return {
        "requests_before_kill": sum(1 for t, _ in results if t < killed_at),
        "requests_after_kill": len(after),
        "failed_after_kill": len(failures),
        "failure_statuses": sorted({s for _, s in failures}),
        "recovered_after_s": round(last_failure - killed_at, 1),
        "ok_requests_after_recovery": sum(1 for s in tail if s == 200),
        "replicas_before": sorted(before),
        "killed": victim.pid,
        "replicas_after": sorted(replicas_now),
        "replacement_started_after_s": replaced_s,
    }


async def _write_and_read(marker: str, write: bool) -> dict:
    from nexus_ray.config import get_settings
    from nexus_ray.runtime import embedded

    st = embedded.status(data_dir())
    os.environ.update({"NEXUS_POSTGRES_URL": st["postgres"]["url"], "NEXUS_REDIS_URL": st["redis"]["url"],
                       "NEXUS_MONGO_URL": st["mongo"]["url"]})
    get_settings.cache_clear()
    from nexus_ray.stores import cache, documents, postgres

    pg = await postgres.pool()
    await pg.execute("CREATE TABLE IF NOT EXISTS bench_persistence (marker text PRIMARY KEY)")
    if write:
        await pg.execute("INSERT INTO bench_persistence VALUES ($1)", marker)
        await cache.redis_client().set(f"bench:persistence:{marker}", "1")
        await documents.database()["bench_persistence"].insert_one({"marker": marker})
    found = {
        "postgres": await pg.fetchval("SELECT count(*) FROM bench_persistence WHERE marker = $1", marker) == 1,
        "redis": await cache.redis_client().get(f"bench:persistence:{marker}") == b"1",
        "documents": await documents.database()["bench_persistence"].count_documents({"marker": marker}) == 1,
    }
    await postgres.close_pool()
    await cache.close_redis()
    await documents.close_mongo()
    return found


def down_up_keeps_data() -> dict:
    marker = uuid.uuid4().hex
    before = asyncio.run(_write_and_read(marker, write=True))
    subprocess.run([NEXUS, "down"], check=True, capture_output=True)
    subprocess.run([NEXUS, "up", "--detach"], check=True, capture_output=True)
    after = asyncio.run(_write_and_read(marker, write=False))
    return {"written": before, "found_after_down_up": after}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["startup", "idle", "faults", "kill"])
    args = ap.parse_args()
    if args.what == "startup":
        out = startup()
    elif args.what == "idle":
        out = idle()
    elif args.what == "kill":
        out = {"kill_ingress_replica_under_load": kill_replica_under_load()}
    else:
        out = {"kill_ingress_replica_under_load": kill_replica_under_load(), "down_up": down_up_keeps_data()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
