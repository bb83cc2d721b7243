"""What fsyncing Redis's append-only file before each acknowledgement costs (README, "Durability").

    python bench/durability.py [--seconds 3] [--runs 3] [--dir DIR]

Starts three Redis servers of its own with the embedded configuration (``embedded.start_redis``)
in a temporary directory -- ``appendfsync always`` (the default), ``everysec`` and no append-only
file -- and, with no Ray and no other store, measures for each, run after run in turn:

* journal commits of a :class:`PersistentActor` opened with ``PersistentActor.open``: one actor
  committing one op after another (each commit waits for the previous, as one actor's do), and
  32 actors committing at once (Redis fsyncs once per event-loop turn for every write in it);
* the edge's per-request Redis call (``ratelimit.admit``: two rate-limit counters and a revocation
  check, a write on every request) from 64 concurrent callers.

Reported per run: operations per second, and p50 / p99 of one operation in milliseconds. fsync
costs what the disk under ``--dir`` makes it cost: on tmpfs it is free, so the filesystem is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NEXUS_LOG_LEVEL", "WARNING")

from nexus_ray.actors import PersistentActor
from nexus_ray.config import get_settings
from nexus_ray.runtime import embedded
from nexus_ray.stores import cache

POLICIES: dict[str, Any] = {"always": "always", "everysec": "everysec", "no AOF": None}


class Ledger(PersistentActor):
    """A few named values: the state stays small, so a commit costs its journal write (and a snapshot every 100)."""

    kind = "bench-durability"

    def apply(self, state: dict[str, Any], op: str, data: dict[str, Any]) -> dict[str, Any]:
        return {**state, data["name"]: data["value"]}


async def _timed(op, seconds: float, workers: int) -> tuple[int, float, list[float]]:
    """Run ``op(worker, i)`` in ``workers`` concurrent loops for ``seconds``; (ops, elapsed s, latencies s)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await op(worker, i)
            latencies.append(time.perf_counter() - t0)
            i += 1

    began = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return len(latencies), time.perf_counter() - began, latencies


async def journal(actors: int, seconds: float, run: int) -> tuple[int, float, list[float]]:
    opened = [await Ledger.open(f"r{run}-a{a}-{os.getpid()}") for a in range(actors)]

    async def commit(worker: int, i: int) -> None:
        await opened[worker].commit("set", name=f"k{i % 20}", value=i)

    await _timed(commit, 0.3, actors)  # warm: connections, first snapshot
    return await _timed(commit, seconds, actors)


async def admit(clients: int, seconds: float, run: int) -> tuple[int, float, list[float]]:
    from nexus_ray.edge import ratelimit, revocations

    async def request(worker: int, i: int) -> None:
        limits = [("principal", f"bench-{worker}", 10**9), ("address", f"10.0.{run}.{worker}", 10**9)]
        await ratelimit.admit(limits, revocation_keys=[revocations.token_key(f"jti-{worker}-{i}")])

    await _timed(request, 0.3, clients)
    return await _timed(request, seconds, clients)


SHAPES = {
    "journal commit, 1 actor": lambda s, r: journal(1, s, r),
    "journal commit, 32 actors at once": lambda s, r: journal(32, s, r),
    "edge admit (rate limit + revocation check), 64 callers": lambda s, r: admit(64, s, r),
}


def _use(url: str) -> None:
    os.environ["NEXUS_REDIS_URL"] = url
    get_settings.cache_clear()


def _filesystem(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _dev, point, fstype, *_ = line.split()
            if str(path).startswith(point) and len(point) > len(best):
                best, kind = point, fstype
    return f"{kind} (mounted on {best})"


async def measure(urls: dict[str, str], seconds: float, runs: int) -> dict[tuple[str, str], list[tuple]]:
    results: dict[tuple[str, str], list[tuple]] = {}
    for run in range(runs):  # policies in turn within each run, so drift in the machine's speed hits all alike
        for policy, url in urls.items():
            _use(url)
            for shape, bench in SHAPES.items():
                ops, elapsed, latencies = await bench(seconds, run)
                q = statistics.quantiles(latencies, n=100)
                results.setdefault((shape, policy), []).append((ops / elapsed, q[49] * 1e3, q[98] * 1e3))
                print(f"run {run + 1} {policy:9s} {shape}: {ops / elapsed:8.0f}/s", flush=True)
            await cache.close_redis()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Length of one measurement.")
    parser.add_argument("--runs", type=int, default=3, help="Runs of every policy and shape.")
    parser.add_argument("--dir", type=Path, default=None, help="Where the Redis data goes (default: a temp dir).")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nexus-durability-", dir=args.dir))
    print(f"Redis data in {root}: {_filesystem(root.resolve())}; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    pids: list[int] = []
    try:
        urls = {}
        for name, appendfsync in POLICIES.items():
            pid, urls[name] = embedded.start_redis(root / name.replace(" ", "-"), appendfsync=appendfsync)
            pids.append(pid)
        results = asyncio.run(measure(urls, args.seconds, args.runs))
    finally:
        for pid in pids:
            embedded.stop_redis(pid)
        shutil.rmtree(root, ignore_errors=True)
    print()
    for shape in SHAPES:
        print(f"{shape}: ops/s, p50 ms, p99 ms per run")
        for policy in POLICIES:
            runs = results[(shape, policy)]
            cells = "   ".join(f"{r:7.0f}/s {p50:6.2f} {p99:6.2f}" for r, p50, p99 in runs)
            print(f"  {policy:9s} {cells}   median {statistics.median(r for r, _, _ in runs):7.0f}/s")


if __name__ == "__main__":
    main()
