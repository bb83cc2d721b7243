"""One fixed rate against the platform's notice route, with the CPU of every process of the stack.

    NEXUS_DATA_DIR=... NEXUS_HTTP_PORT=... NEXUS_METRICS_EXPORT_PORT=... \\
        python bench/rate_cpu.py [--rate 800] [--duration 25] [--py-spy PATH --spy-match ServeReplica:platform]

(``bench/with_stack.sh`` sets those variables.) wrk2 (``WRK2=wrk2-eof`` picks the binary) at ``--rate`` with
64 connections, latency corrected for coordinated omission; the CPU of each process of the stack, of
Redis, HAProxy and the load generator over 15 s from the 5th second, in % of one core; and a reference
loop (a fixed amount of pure Python) timed before and after, so that runs on a host whose speed drifts
can be told apart. Ends by checking that Serve's HTTP request counter for the ``platform`` application
reaches the metrics endpoint. With ``--py-spy``, a raw py-spy profile of the first process whose
command line contains ``--spy-match``, over the same 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import wrk2
from replica_kill import token

from nexus_ray.runtime import cluster

_LOAD_GENERATORS = ("wrk", "wrk2", "wrk2-eof", "wrk2-spread")
_OTHERS = ("redis-server", "haproxy", *_LOAD_GENERATORS)


def reference_ms() -> int:
    t, x = time.perf_counter(), 0
    for i in range(2_000_000):
        x += i
    return round((time.perf_counter() - t) * 1000)


def cpu_of(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far (user + system) of each of ``pids`` and of their children, keyed ``pid:name``."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
                out[f"{p.pid}:{p.name()}"] = t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return out


async def per_call(call: Callable[[int], Awaitable[object]], number: int,
                   pids: list[int]) -> tuple[float, float, float]:
    """Await ``call(i)`` for ``i`` in ``range(number)``; per call, in microseconds: the wall time, this process's
    CPU, and the CPU of the PostgreSQL processes among ``pids`` (and their children)."""
    def own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    pg_before, me_before, t0 = cpu_of(pids), own(), time.perf_counter()
    for i in range(number):
        await call(i)
    wall, me = time.perf_counter() - t0, own() - me_before
    pg = sum(v - pg_before.get(k, 0.0) for k, v in cpu_of(pids).items() if "postgres" in k)
    return wall * 1e6 / number, me * 1e6 / number, pg * 1e6 / number


def stack_cpu(temp_dir: str, wait_s: float, span_s: float, *, me: bool = False) -> dict[str, float]:
    """After ``wait_s``, the CPU of each process of the stack over ``span_s`` seconds, in % of one core, keyed
    by pid and command line: Ray's, the embedded stores of ``NEXUS_DATA_DIR``, the broker (its command line names
    no data directory: it keeps topics in memory), Redis, HAProxy, the load generator, and with ``me`` this process
    and its children."""
    time.sleep(wait_s)
    procs = {p.pid: p for p in cluster.processes(temp_dir)}
    # process_iter's attrs read each name where a process that ends meanwhile is passed over, not raised
    procs.update({p.pid: p for p in psutil.process_iter(["name"])
                  if (p.info["name"] or "") in _OTHERS or (p.info["name"] or "").startswith("tansu")})
    data_dir = os.environ.get("NEXUS_DATA_DIR")
    if data_dir:  # the embedded stores (PostgreSQL's backends are its children)
        procs.update({p.pid: p for p in cluster.processes(data_dir)})
    if me:
        procs[os.getpid()] = psutil.Process()
        procs.update({p.pid: p for p in psutil.Process().children(recursive=True)})
    start = {}
    for pid, p in procs.items():
        try:
            start[pid] = sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    time.sleep(span_s)
    cpu = {}
    for pid, c in start.items():
        try:
            p = procs[pid]
            cpu[f"{pid} {' '.join(p.cmdline())[:60]}"] = round((sum(p.cpu_times()[:2]) - c) / span_s * 100, 1)
        except psutil.Error:
            pass
    return cpu


def py_spy(temp_dir: str, match: str, out: str, wait_s: float, span_s: float) -> None:
    """After ``wait_s``, a raw py-spy profile (``PY_SPY`` names the binary) of the first stack process whose
    command line contains ``match``, over ``span_s`` seconds."""
    time.sleep(wait_s)
    target = next(p for p in cluster.processes(temp_dir) if match in " ".join(p.cmdline()))
    subprocess.run([os.environ.get("PY_SPY", "py-spy"), "record", "-r", "250", "-d", str(round(span_s)), "-f", "raw",
                    "-o", out, "-p", str(target.pid)], capture_output=True, check=False)


def watch(cpu: dict[str, float], *, wait_s: float, span_s: float, spy_out: str | None = None,
          spy_match: str = "ServeReplica:platform", me: bool = False) -> list[threading.Thread]:
    """Start, in threads, :func:`stack_cpu` into ``cpu`` and (with ``spy_out``) :func:`py_spy`, against the stack
    of ``NEXUS_DATA_DIR`` (bench/with_stack.sh sets it); join the threads for the results."""
    head = cluster.running(Path(os.environ["NEXUS_DATA_DIR"]))
    assert head is not None, "no stack running for NEXUS_DATA_DIR"
    threads = [threading.Thread(target=lambda: cpu.update(stack_cpu(head.temp_dir, wait_s, span_s, me=me)))]
    if spy_out:
        threads.append(threading.Thread(target=py_spy, args=(head.temp_dir, spy_match, spy_out, wait_s, span_s)))
    for t in threads:
        t.start()
    return threads


def print_cpu(cpu: dict[str, float], top: int = 8) -> None:
    """The total, the ``top`` busiest processes, and PostgreSQL's backends summed (each is a process of its own)."""
    pg = [pct for name, pct in cpu.items() if name.split(" ", 1)[1].startswith("postgres:")]
    print(f"CPU, % of one core: all {sum(cpu.values()):.0f}; PostgreSQL's {len(pg)} backends {sum(pg):.0f}; busiest:")
    for name, pct in sorted(cpu.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {pct:5.1f}  {name}")


#: What each process of a stack is, by its command line: the first of these words it holds, else "Ray and the rest".
_KINDS = (("postgres:", "PostgreSQL"), ("bin/postgres", "PostgreSQL"), ("ServeReplica:", None),
          ("bin/secantu", "document store"), ("tansu", "Kafka broker"), ("redis-server", "Redis"),
          ("haproxy", "HAProxy"), ("bench/", "load generator"))


def kind_of(name: str) -> str:
    """The kind of the process ``name`` (a key of :func:`stack_cpu`): PostgreSQL, a Serve application's replicas
    (``replica: commerce``), a store, HAProxy, the load generator, or Ray and the rest (Ray's own processes, idle
    workers, the dashboard)."""
    command = name.split(" ", 1)[1] if " " in name else name
    if command.split(" ", 1)[0].rsplit("/", 1)[-1] in _LOAD_GENERATORS:
        return "load generator"
    for word, kind in _KINDS:
        if word in command:
            return kind or f"replica: {command.split(word, 1)[1].split(':', 1)[0]}"
    return "Ray and the rest"


def print_kinds(cpu: dict[str, float], per_s: float) -> None:
    """``cpu`` (% of one core per process) summed by :func:`kind_of`, and as ms of CPU per unit of ``per_s``."""
    kinds: dict[str, float] = {}
    for name, pct in cpu.items():
        kind = kind_of(name)
        kinds[kind] = kinds.get(kind, 0.0) + pct
    print(f"by kind, % of one core and ms of CPU per order at {per_s}/s:")
    for kind, pct in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {pct:5.1f}  {10 * pct / per_s:5.2f} ms  {kind}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=800)
    ap.add_argument("--duration", type=int, default=25)
    ap.add_argument("--py-spy", help="write a raw py-spy profile here")
    ap.add_argument("--spy-match", default="ServeReplica:platform")
    args = ap.parse_args()
    tok = token("platform:gateway:read")
    url = f"http://127.0.0.1:{os.environ['NEXUS_HTTP_PORT']}/platform/v1/gateway/notice"

    ref_before = reference_ms()
    wrk2(url, tok, 400, 8, 64)  # warm: connections, caches, pools
    cpu: dict[str, float] = {}

    threads = watch(cpu, wait_s=5, span_s=15, spy_out=args.py_spy, spy_match=args.spy_match)
    result = wrk2(url, tok, args.rate, args.duration, 64)
    for t in threads:
        t.join()
    top = sorted(cpu.items(), key=lambda kv: -kv[1])[:10]

    serve_counted = []
    deadline = time.monotonic() + 20
    while not serve_counted and time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{os.environ['NEXUS_METRICS_EXPORT_PORT']}/metrics",
                                      timeout=5).read().decode()
        serve_counted = [line for line in text.splitlines()
                         if line.startswith("ray_serve_num_http_requests_total") and 'application="platform"' in line]
        if not serve_counted:
            time.sleep(1)
    print(json.dumps({"rate": args.rate, "reference_ms": [ref_before, reference_ms()], "wrk2": result,
                      "cpu_total_pct_of_core": round(sum(cpu.values()), 1), "busiest": top,
                      "serve_http_requests_counted": bool(serve_counted)}, indent=1))


if __name__ == "__main__":
    main()
