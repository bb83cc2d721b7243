"""fleet-manager: telemetry ingestion, nearest-vehicle queries, and a killed FleetActor coming back.

    flock /tmp/nexus-ray.lock timeout 1200 bash bench/with_stack.sh python bench/fleet.py \\
        [--vehicles 10000] [--batch 1000] [--duration 10] [--inflight 4] [--http-batch 500] \\
        [--http-concurrency 8] [--rates 10,20,40] [--queries 2000]

Needs the platform running (``bench/with_stack.sh`` starts a private one); connects to its Ray
cluster and stores. With ``--local`` (no stack needed; still under the lock, it starts Ray)::

    flock /tmp/nexus-ray.lock timeout 1200 .venv/bin/python bench/fleet.py --local

it starts scratch stores, a Ray head of its own and the ``logistics`` namespace app (the same
ASGI app a Serve replica runs: edge, routes, actors) in a uvicorn process connected to that
Ray; the HTTP runs then go to that app, without HAProxy and Serve's proxy in front. Runs, in order:

* ``core``   -- the FleetActor class in this process on the stack's Redis (the actor's own code,
  no Ray hop): ingestion of ``--batch``-reading batches, and ``nearest(k=5)`` over ``--vehicles``
  vehicles (70 % available) at random points: p50/p99 wall time and thread CPU time per query.
  This is the "inside the actor" figure: what one query costs the actor's process.
* ``actor``  -- the same through Ray into a named FleetActor: batches sent with ``--inflight``
  calls in flight for ``--duration`` s (updates applied per second), and the round trip of
  ``nearest`` calls from this process.
* ``http``   -- telemetry batches of ``--http-batch`` readings POSTed through the entrypoint
  (HAProxy, edge, fleet-manager's route, the actor): closed loop with ``--http-concurrency``
  requests in flight, then open loop at each of ``--rates`` batches/s with wrk2 (a Lua script
  makes each body, with times that increase so no reading is stale).
* ``kill``   -- the Ray fleet's actor killed (``ray.kill``, restart allowed) right after more
  readings: time until it answers again, and how many positions it came back with (those of its
  last positions snapshot; the readings after it are the documented loss).

Readings cover a 0.2 x 0.4 degree box (about 22 x 27 km, a city) at random.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOX = (52.40, 13.20, 0.20, 0.40)  # min lat, min lon, lat span, lon span
FLEET_API = "/logistics/v1/fleet"


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values), p))


def readings(n: int, vehicles: int, t0: float) -> tuple[list[str], np.ndarray, np.ndarray, list[float]]:
    ids = [f"v{random.randrange(vehicles)}" for _ in range(n)]
    lat = BOX[0] + np.random.random(n) * BOX[2]
    lon = BOX[1] + np.random.random(n) * BOX[3]
    return ids, lat, lon, [t0 + i * 1e-6 for i in range(n)]


def registrations(vehicles: int) -> list[list[dict[str, Any]]]:
    rows = [{"vehicle_id": f"v{i}", "vehicle_type": "van", "capacity_kg": 500,
             "status": "available" if random.random() < 0.7 else "busy"} for i in range(vehicles)]
    return [rows[i:i + 2000] for i in range(0, vehicles, 2000)]


# -- core: the actor's code in this process ------------------------------------------------------------


async def core(args: argparse.Namespace) -> dict[str, Any]:
    from nexus_ray.actors.fleet import FleetActor

    fleet = await FleetActor.open(f"bench-core-{uuid.uuid4().hex[:8]}")
    try:
        for chunk in registrations(args.vehicles):
            await fleet.upsert_vehicles(chunk)
        t0, applied, batches = time.perf_counter(), 0, 0
        while time.perf_counter() - t0 < min(args.duration, 5):
            ids, lat, lon, ts = readings(args.batch, args.vehicles, 1e6 + batches)
            applied += (await fleet.ingest(ids, lat, lon, ts))["applied"]
            batches += 1
        ingest_s = time.perf_counter() - t0
        wall, cpu = [], []
        for _ in range(args.queries):
            qlat, qlon = BOX[0] + random.random() * BOX[2], BOX[1] + random.random() * BOX[3]
            w, c = time.perf_counter(), time.thread_time()
            fleet.nearest(qlat, qlon, 5)
            cpu.append((time.thread_time() - c) * 1000)
            wall.append((time.perf_counter() - w) * 1000)
        return {"vehicles": args.vehicles, "ingest_updates_per_s": round(applied / ingest_s),
                "nearest_ms": {"p50": round(pct(wall, 50), 3), "p99": round(pct(wall, 99), 3),
                               "p99_cpu": round(pct(cpu, 99), 3), "p50_cpu": round(pct(cpu, 50), 3)}}
    finally:
        await fleet.close()
        await fleet.erase()


# -- actor: through Ray --------------------------------------------------------------------------------


async def through_ray(args: argparse.Namespace, fleet_id: str) -> tuple[dict[str, Any], Any]:
    from nexus_ray.actors import get_or_create
    from nexus_ray.actors.fleet import FleetActor

    handle = get_or_create(FleetActor, fleet_id)
    for chunk in registrations(args.vehicles):
        await handle.upsert_vehicles.remote(chunk)
    applied, batches = 0, 0
    t0 = time.perf_counter()

    async def sender() -> None:
        nonlocal applied, batches
        while time.perf_counter() - t0 < args.duration:
            batches += 1
            ids, lat, lon, ts = readings(args.batch, args.vehicles, 2e6 + batches)
            applied += (await handle.ingest.remote(ids, lat.tolist(), lon.tolist(), ts))["applied"]

    await asyncio.gather(*(sender() for _ in range(args.inflight)))
    elapsed = time.perf_counter() - t0
    rtt = []
    for _ in range(min(args.queries, 500)):
        qlat, qlon = BOX[0] + random.random() * BOX[2], BOX[1] + random.random() * BOX[3]
        s = time.perf_counter()
        await handle.nearest.remote(qlat, qlon, 5)
        rtt.append((time.perf_counter() - s) * 1000)
    return {"batch": args.batch, "inflight": args.inflight, "updates_per_s": round(applied / elapsed),
            "batches": batches, "nearest_round_trip_ms": {"p50": round(pct(rtt, 50), 2),
                                                          "p99": round(pct(rtt, 99), 2)}}, handle


# -- http: through the entrypoint ----------------------------------------------------------------------


def token(scope: str) -> str:
    out = subprocess.run([sys.executable, "-m", "nexus_ray.cli", "token", "bench-fleet", "-s", scope],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def body_template(n: int, vehicles: int) -> bytes:
    """A telemetry body whose times read ``TS.<reading>``: each request puts its own whole second in."""
    ids, lat, lon, _ = readings(n, vehicles, 0)
    parts = [f'{{"vehicle_id":"{v}","lat":{a:.6f},"lon":{o:.6f},"ts":TS.{j:06d}}}'
             for j, (v, a, o) in enumerate(zip(ids, lat, lon, strict=True))]
    return ('{"updates":[' + ",".join(parts) + "]}").encode()


async def http_closed(args: argparse.Namespace, base: str, headers: dict[str, str], fleet_id: str) -> dict[str, Any]:
    import httpx

    url = f"{FLEET_API}/fleets/{fleet_id}/telemetry"
    bodies = [body_template(args.http_batch, args.vehicles) for _ in range(200)]
    applied, latencies, errors, n = 0, [], 0, 0
    async with httpx.AsyncClient(base_url=base, timeout=60, headers={**headers, "Content-Type": "application/json"},
                                 limits=httpx.Limits(max_connections=args.http_concurrency)) as c:
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal applied, errors, n
            while time.perf_counter() - t0 < args.duration:
                i = n
                n += 1
                # Times grow with the request number, so a reading is stale only if a later request overtook it.
                raw = bodies[i % len(bodies)].replace(b"TS", str(3_000_000 + i).encode())
                s = time.perf_counter()
                r = await c.post(url, content=raw)
                latencies.append((time.perf_counter() - s) * 1000)
                if r.status_code == 200:
                    applied += r.json()["applied"] + r.json()["stale"]
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(args.http_concurrency)))
        elapsed = time.perf_counter() - t0
    return {"batch": args.http_batch, "concurrency": args.http_concurrency, "requests": len(latencies),
            "errors": errors, "readings_per_s": round(applied / elapsed),
            "p50_ms": round(pct(latencies, 50), 1), "p99_ms": round(pct(latencies, 99), 1)}


LUA = """
local n = 0
request = function()
  n = n + 1
  local parts = {}
  for i = 1, %(batch)d do
    parts[i] = string.format('{"vehicle_id":"v%%d","lat":%%.6f,"lon":%%.6f,"ts":%%d.%%06d}',
      math.random(0, %(vehicles)d - 1), %(lat0)f + math.random() * %(dlat)f, %(lon0)f + math.random() * %(dlon)f,
      %(t0)d + n, i)
  end
  local body = '{"updates":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json",
                                          ["Authorization"] = "Bearer %(token)s"}, body)
end
"""


def http_open(args: argparse.Namespace, base: str, tok: str, fleet_id: str, rate: int, t0: int) -> dict[str, Any]:
    from replica_kill import parse_wrk2  # bench/ is on sys.path when a bench runs

    script = LUA % {"batch": args.http_batch, "vehicles": args.vehicles, "lat0": BOX[0], "dlat": BOX[2],
                    "lon0": BOX[1], "dlon": BOX[3], "t0": t0, "path": f"{FLEET_API}/fleets/{fleet_id}/telemetry",
                    "token": tok}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        # One thread: its request counter orders the readings' times.
        out = subprocess.run([os.environ.get("WRK2", "wrk2"), "-t1", f"-c{min(16, max(2, rate))}",
                              f"-d{args.duration}s", f"-R{rate}", "--latency", "-s", f.name, base],
                             capture_output=True, text=True, timeout=args.duration + 60).stdout
    finally:
        os.unlink(f.name)
    parsed = parse_wrk2(out)
    return {"rate_batches_per_s": rate, "readings_per_s_offered": rate * args.http_batch,
            "answered_batches_per_s": parsed["rps"], "p50_ms": parsed["p50_ms"], "p99_ms": parsed["p99_ms"],
            "p99_9_ms": parsed["p99_9_ms"], "non_2xx": parsed["non_2xx"], "socket_errors": parsed["socket_errors"]}


# -- kill ----------------------------------------------------------------------------------------------


async def kill(args: argparse.Namespace, handle: Any, fleet_id: str) -> dict[str, Any]:
    import ray

    before = await handle.stats.remote()
    # The periodic positions snapshot, written now; then readings it does not hold; then the kill.
    await handle.snapshot_positions.remote()
    snapshot = await handle.vehicles.remote(None)
    ids, lat, lon, ts = readings(200, args.vehicles, 1e9)  # newer than every earlier run's readings
    await handle.ingest.remote(ids, lat.tolist(), lon.tolist(), ts)
    pid = await handle.pid.remote()
    ray.kill(handle, no_restart=False)
    t = time.perf_counter()
    # The kill is asynchronous: the first answers may still come from the old process.
    for _ in range(12000):
        if await handle.pid.remote() != pid:
            break
        await asyncio.sleep(0.01)
    after = await handle.stats.remote()
    back_s = time.perf_counter() - t
    restored = await handle.vehicles.remote(None)
    held = {v["vehicle_id"]: (v["lat"], v["lon"], v["ts"]) for v in snapshot}
    back = {v["vehicle_id"]: (v["lat"], v["lon"], v["ts"]) for v in restored}
    return {"positioned_before_kill": before["positioned"], "positioned_after": after["positioned"],
            "vehicles_after": after["vehicles"], "answered_again_after_s": round(back_s, 2),
            "restarted_in_a_new_process": (await handle.pid.remote()) != pid,
            "positions_equal_to_last_snapshot": held == back,
            "vehicles_moved_after_snapshot": len(set(ids)),
            "of_those_back_at_their_snapshot_position": sum(back.get(v) == held.get(v) for v in set(ids))}


async def main_async(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from nexus_ray.config import get_settings
    from nexus_ray.runtime import cluster, embedded

    st = embedded.status(data_dir)
    os.environ.update({"NEXUS_POSTGRES_URL": st["postgres"]["url"], "NEXUS_REDIS_URL": st["redis"]["url"]})
    get_settings.cache_clear()
    results: dict[str, Any] = {"core": await core(args)}
    print(json.dumps({"core": results["core"]}), flush=True)
    head = cluster.running(data_dir)
    if head is None:
        raise SystemExit("no running platform: start it with bench/with_stack.sh (or use --local)")
    cluster.connect(head.address, logging_level="WARNING", log_to_driver=False)

    import httpx

    base = f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}"
    tok = token("logistics:fleet:*")
    headers = {"Authorization": f"Bearer {tok}"}
    fleet_id = f"bench-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        r = await c.post(f"{FLEET_API}/fleets", json={"fleet_id": fleet_id, "name": "bench"}, headers=headers)
        r.raise_for_status()
    results["actor"], handle = await through_ray(args, fleet_id)
    print(json.dumps({"actor": results["actor"]}), flush=True)
    if not args.skip_http:
        results["http_closed"] = await http_closed(args, base, headers, fleet_id)
        print(json.dumps({"http_closed": results["http_closed"]}), flush=True)
        results["http_open"] = []
        for i, rate in enumerate(int(x) for x in args.rates.split(",")):
            results["http_open"].append(http_open(args, base, tok, fleet_id, rate, 10_000_000 * (i + 1)))
            print(json.dumps({"http_open": results["http_open"][-1]}), flush=True)
    results["kill"] = await kill(args, handle, fleet_id)
    print(json.dumps({"kill": results["kill"]}), flush=True)
    return results


def local_platform(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """A Ray head and the logistics app in uvicorn (connected to it) on ``port``; returns (process, address)."""
    from nexus_ray.runtime import cluster
    from nexus_ray.runtime.embedded import free_port

    env = {k: v for k, v in os.environ.items() if k.startswith("NEXUS_")}
    head = cluster.start_head(data_dir, env, dashboard_port=free_port(), metrics_export_port=free_port())
    code = ("import sys, uvicorn\n"
            "from nexus_ray.runtime import cluster\n"
            "cluster.connect(sys.argv[1], logging_level='WARNING', log_to_driver=False)\n"
            "from nexus_ray.deployments.app import build_app\n"
            "inner = build_app('logistics')\n"
            "async def app(scope, receive, send):\n"  # public paths, as Serve's route prefix gives them
            "    if scope['type'] != 'lifespan':\n"
            "        scope = {**scope, 'root_path': '/logistics'}\n"
            "    await inner(scope, receive, send)\n"
            "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning', access_log=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, head.address, str(port)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/logistics/health/live", timeout=2).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the logistics app exited")
        time.sleep(0.5)
    return proc, head.address


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vehicles", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=1000, help="readings per actor call")
    p.add_argument("--duration", type=int, default=10, help="seconds per throughput run")
    p.add_argument("--inflight", type=int, default=4, help="actor calls in flight")
    p.add_argument("--http-batch", type=int, default=500, help="readings per HTTP request")
    p.add_argument("--http-concurrency", type=int, default=8)
    p.add_argument("--rates", default="10,20,40", help="open-loop rates, batches per second")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--local", action="store_true", help="scratch stores, own Ray head, the logistics app in uvicorn")
    args = p.parse_args()
    if not args.local:
        results = asyncio.run(main_async(args, Path(os.environ.get("NEXUS_DATA_DIR", ".nexus")).resolve()))
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        from scratch import scratch_stores

        from nexus_ray.runtime import cluster
        from nexus_ray.runtime.embedded import free_port

        limits = {"NEXUS_RATE_LIMIT_PER_ADDRESS": "100000000", "NEXUS_RATE_LIMIT_PER_PRINCIPAL": "100000000"}
        with scratch_stores("nexus-bench-fleet-", **limits) as data_dir:
            port = free_port()
            os.environ["NEXUS_HTTP_PORT"] = str(port)
            proc, _ = local_platform(data_dir, port)
            try:
                results = asyncio.run(main_async(args, data_dir))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                cluster.stop_head(data_dir)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
