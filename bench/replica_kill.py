"""SIGKILL of one `platform` ingress replica under an open-loop load (issue 6, "a killed replica stalls").

wrk2 sends a constant 400 requests/s (latency corrected for coordinated omission) to an authenticated
platform GET for 40 s; 15 s in, one of the two `platform` replicas gets SIGKILL. Reported: wrk2's
socket errors (its ``timeout`` counts, every 2 s, each connection whose request is older than 2 s),
non-2xx answers, throughput, corrected p50/p99/p99.9, requests answered per second (a wrk2 Lua
hook), and a timeline of what HAProxy saw (server states and sessions per replica, from its stats
page, sampled every 0.25 s) and of the replicas' processes.

    NEXUS_DATA_DIR=/tmp/nx python bench/replica_kill.py [--rate 400] [--duration 40] [--kill-at 15] [--runs 3]

Needs the platform running (``nexus up``) and ``wrk2`` (``../shared/tools/wrk2/build.sh``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]

# Per-second answers as the client saw them: a response() hook writes "<second> <status>" per
# answer, one file per wrk2 thread (threads' Lua states are separate).
LUA = r"""
local n = 0
function setup(thread) n = n + 1; thread:set("id", n) end
function init(args)
  out = io.open(args[1] .. "." .. id, "w")
  out:setvbuf("line")
end
function response(status, headers, body) out:write(os.time(), " ", status, "\n") end
"""


def nexus(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "nexus_ray.cli", *args], capture_output=True, text=True,
                          check=True).stdout


def token(scope: str) -> str:
    return nexus("token", "bench-kill", "-s", scope).strip().splitlines()[-1]


def platform_replicas(temp_dir: str) -> list[psutil.Process]:
    from nexus_ray.runtime import cluster

    found = []
    for p in cluster.processes(temp_dir):
        try:
            if "ServeReplica:platform" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def haproxy_stats(port: int) -> list[dict]:
    """Rows of HAProxy's stats page for the platform backend (servers and the backend line)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/stats;csv", timeout=1).text
    except httpx.HTTPError:
        return []
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return [r for r in rows if "platform" in r.get("pxname", "")]


def parse_wrk2(out: str) -> dict:
    def ms(v: str, unit: str) -> float:
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    pct = {}
    dist = out.split("Latency Distribution (HdrHistogram - Recorded Latency)")[-1]
    for label in ("50.000", "99.000", "99.900", "100.000"):
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\b", dist, re.M)
        pct[label] = ms(m.group(1), m.group(2)) if m else None
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(s|m)", out)
    return {
        "requests": int(total.group(1)) if total else None,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": pct["50.000"], "p99_ms": pct["99.000"], "p99_9_ms": pct["99.900"], "max_ms": pct["100.000"],
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors else {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def one_run(url: str, tok: str, temp_dir: str, args: argparse.Namespace) -> dict:
    before = platform_replicas(temp_dir)
    assert len(before) == 2, f"expected 2 platform replicas, found {len(before)}"
    victim = min(before, key=lambda p: p.pid)
    victim_ports = sorted({c.laddr.port for c in victim.net_connections("tcp") if c.status == psutil.CONN_LISTEN})
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
        lua = f.name
    answers = lua + ".answers"
    cmd = [args.wrk2, "-t2", f"-c{args.connections}", f"-d{args.duration}s", f"-R{args.rate}", "--latency",
           "-s", lua, "-H", f"Authorization: Bearer {tok}", url, "--", answers]
    samples: list[dict] = []
    stop = threading.Event()

    def sample(t0: float) -> None:
        while not stop.is_set():
            rows = haproxy_stats(args.haproxy_stats_port)
            samples.append({
                "t": round(time.monotonic() - t0, 2),
                "servers": {r["svname"]: [r["status"], int(r["scur"] or 0), int(r["qcur"] or 0),
                                          int(r["stot"] or 0)] for r in rows},
                # HAProxy's own count of connection errors, response errors, retries and redispatches
                "errors": {r["svname"]: {k: int(r[k] or 0) for k in ("econ", "eresp", "wretr", "wredis", "hrsp_5xx")}
                           for r in rows},
                "replicas": sorted(p.pid for p in platform_replicas(temp_dir)),
            })
            stop.wait(0.25)

    t0 = time.monotonic()
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = threading.Thread(target=sample, args=(t0,), daemon=True)
    sampler.start()
    time.sleep(args.kill_at)
    killed_at = time.monotonic() - t0
    if args.no_kill:
        victim_ports = []  # the same load without the kill: the baseline of the run
    else:
        os.kill(victim.pid, signal.SIGKILL)
    time.sleep(1)
    # A port of the dead replica still listening (held by another process) would take connections and never answer.
    still_listening = sorted({c.laddr.port for c in psutil.net_connections("tcp")
                              if c.status == psutil.CONN_LISTEN and c.laddr.port in victim_ports})
    if args.py_spy and not args.no_kill:
        # Where the surviving replica spends its time after the kill, and who holds the CPU meanwhile.
        survivor = next(p.pid for p in before if p.pid != victim.pid)
        result_diag = {}
        for label in ("2s", "8s"):
            result_diag[f"top_{label}"] = subprocess.run(["top", "-b", "-n1", "-w", "160", "-o", "%CPU"],
                                                         capture_output=True, text=True).stdout.splitlines()[:30]
            result_diag[f"py_spy_survivor_{label}"] = subprocess.run(
                [args.py_spy, "dump", "--pid", str(survivor)], capture_output=True, text=True).stdout.splitlines()
            time.sleep(5)
        rec = subprocess.run([args.py_spy, "record", "--pid", str(survivor), "--duration", "8", "--format", "raw",
                              "--output", "/dev/stdout", "--nonblocking"], capture_output=True, text=True).stdout
        result_diag["py_spy_record_survivor_top"] = sorted(
            (ln.rsplit(" ", 1) for ln in rec.splitlines() if ln.rsplit(" ", 1)[-1].isdigit()),
            key=lambda x: -int(x[1]))[:25]
    out, _ = wrk.communicate(timeout=args.duration + 60)
    stop.set()
    sampler.join()
    os.unlink(lua)
    result = parse_wrk2(out)
    per_second: dict[int, list[int]] = {}
    for f in Path(answers).parent.glob(Path(answers).name + ".*"):
        for line in f.read_text().splitlines():
            second, status = map(int, line.split())
            per_second.setdefault(second, [0, 0])[status != 200] += 1
        f.unlink()
    start_s = min(per_second, default=0)
    # [second of the run, answered 200, answered otherwise]; a second with no answer at all is listed as 0, 0.
    result["per_second_ok_other"] = [[s - start_s, *per_second.get(s, [0, 0])]
                                     for s in range(start_s, max(per_second, default=0) + 1)]
    result["killed_pid"] = None if args.no_kill else victim.pid
    result["killed_at_s"] = round(killed_at, 2)
    if args.py_spy and not args.no_kill:
        result["diagnosis"] = result_diag
    result["victim_listening_ports"] = victim_ports
    result["still_listening_1s_after_kill"] = still_listening
    # What HAProxy and the process table saw, only where it changed.
    timeline, last = [], None
    for s in samples:
        state = {"servers": {k: v[0] for k, v in s["servers"].items()}, "replicas": s["replicas"]}
        if state != last:
            timeline.append({"t": s["t"], **state})
            last = state
    result["timeline"] = timeline
    # Requests in flight per server (HAProxy's scur), once a second.
    result["in_flight_by_server"] = [
        {"t": s["t"], **{k.removeprefix("SERVE_REPLICA_platform-platform-ingress-")[:12]: v[1]
                         for k, v in s["servers"].items()}}
        for s in samples[::4]
    ]
    # Cumulative per HAProxy process: a reload starts them again from zero, so keep the largest seen.
    result["haproxy_errors"] = {}
    for s in samples:
        for name, counts in s["errors"].items():
            seen = result["haproxy_errors"].setdefault(name, {})
            for k, v in counts.items():
                seen[k] = max(seen.get(k, 0), v)
    result["max_queued_by_server"] = {}
    for s in samples:
        for name, (_status, _scur, qcur, _stot) in s["servers"].items():
            result["max_queued_by_server"][name] = max(result["max_queued_by_server"].get(name, 0), qcur)
    if args.raw:
        result["wrk2_output"] = out
    return result


def wait_two_replicas(temp_dir: str, url: str, tok: str, timeout: float = 120) -> None:
    """Between runs: wait until the replacement serves, so each run starts from two healthy replicas."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(platform_replicas(temp_dir)) == 2:
            ok = sum(httpx.get(url, headers={"Authorization": f"Bearer {tok}"}, timeout=5).status_code == 200
                     for _ in range(20))
            if ok == 20:
                time.sleep(5)  # let HAProxy's health checks mark the new server UP
                return
        time.sleep(1)
    raise TimeoutError("the platform did not get back to two replicas")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    ap.add_argument("--rate", type=int, default=400)
    ap.add_argument("--duration", type=int, default=40)
    ap.add_argument("--kill-at", type=float, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--haproxy-stats-port", type=int, default=int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", 8404)))
    ap.add_argument("--wrk2", default=os.environ.get("WRK2", "wrk2"),
                    help="wrk2 binary; bench/build_wrk2_eof.sh builds one that counts a connection closed with a "
                         "request outstanding as an error instead of hanging on it (see the script)")
    ap.add_argument("--no-kill", action="store_true", help="the same run without the kill (baseline)")
    ap.add_argument("--raw", action="store_true", help="include wrk2's whole output")
    ap.add_argument("--py-spy", help="path of py-spy: dump and record the surviving replica after the kill")
    args = ap.parse_args()

    from nexus_ray.config import get_settings
    from nexus_ray.runtime import cluster

    temp_dir = cluster.temp_dir_for(get_settings().data_dir.resolve())
    tok = token("platform:gateway:read")
    url = f"{args.api}/platform/v1/gateway/notice"
    results = []
    for i in range(args.runs):
        wait_two_replicas(temp_dir, url, tok)
        # Warm-up at the same rate so the run starts from a steady state.
        subprocess.run([args.wrk2, "-t2", f"-c{args.connections}", "-d5s", f"-R{args.rate}", "-H",
                        f"Authorization: Bearer {tok}", url], capture_output=True, check=True)
        r = one_run(url, tok, temp_dir, args)
        bulky = ("timeline", "per_second_ok_other", "in_flight_by_server", "wrk2_output", "diagnosis")
        print(json.dumps({"run": i + 1, **{k: v for k, v in r.items() if k not in bulky}}), file=sys.stderr)
        results.append(r)
    print(json.dumps({"rate": args.rate, "duration_s": args.duration, "kill_at_s": args.kill_at,
                      "connections": args.connections, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
