"""backend-api's home view through the entrypoint: latency at a fixed rate, then with a namespace stopped.

    flock /tmp/nexus-ray.lock timeout 1500 bash bench/with_stack.sh python bench/home.py \
        [--rate 20] [--duration 15] [--stop ai]

Against a running stack (bench/with_stack.sh starts a private one). Sends ``GET
/platform/v1/gateway/home`` at ``--rate`` per second (open loop: latency counts from when
a request was due) and prints p50/p99/max and the status codes; prints one answer; then
deletes the Serve application of ``--stop`` (the stack's config deployed again without it), does the same again, and
prints the answer with that namespace gone (its sources marked, ``partial`` true, no 5xx).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter

import httpx


def token() -> str:
    out = subprocess.run([sys.executable, "-m", "nexus_ray.cli", "token", "bench-home", "-s", "platform:gateway:read"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


async def load(http: httpx.AsyncClient, headers: dict[str, str], rate: float, duration: float) -> dict:
    n = int(rate * duration)
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    codes: Counter[int] = Counter()

    async def one(due: float) -> None:
        r = await http.get("/platform/v1/gateway/home", headers=headers)
        latencies.append((time.perf_counter() - due) * 1000)
        codes[r.status_code] += 1

    tasks = []
    for k in range(n):
        due = start + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    ordered = sorted(latencies)
    return {"requests": n, "codes": dict(codes), "p50_ms": round(statistics.median(ordered), 1),
            "p99_ms": round(ordered[round(0.99 * (n - 1))], 1), "max_ms": round(ordered[-1], 1)}


def stop_namespace(namespace: str) -> None:
    """Deploy the stack's Serve config again without ``namespace``'s application: Serve deletes it."""
    from nexus_ray.config import get_settings
    from nexus_ray.runtime import cluster, serve_config

    s = get_settings()
    config = serve_config.build(host=s.http_host, port=s.http_port, max_ongoing_requests=s.ingress_max_ongoing_requests)
    config["applications"] = [a for a in config["applications"] if a["name"] != namespace]
    dashboard = f"http://127.0.0.1:{os.environ.get('NEXUS_DASHBOARD_PORT', '8265')}"
    began = time.monotonic()
    cluster.deploy(dashboard, config)
    while True:  # until Serve no longer lists the application (its replicas stopped)
        if namespace not in cluster.serve_applications(dashboard):
            break
        time.sleep(0.5)
    print(f"application {namespace!r} gone from Serve {time.monotonic() - began:.1f} s after the deploy without it")


def brief(answer: dict) -> dict:
    return {"partial": answer["partial"], "deadline_ms": answer["deadline_ms"],
            "sources": {k: (v["status"], v["elapsed_ms"]) for k, v in answer["sources"].items()}}


async def run(args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {token()}"}
    async with httpx.AsyncClient(base_url=args.api, timeout=30) as http:
        print("all namespaces up:", json.dumps(await load(http, headers, args.rate, args.duration)))
        print("answer:", json.dumps(brief((await http.get("/platform/v1/gateway/home", headers=headers)).json())))
        await asyncio.to_thread(stop_namespace, args.stop)
        print(f"namespace {args.stop!r} deleted; its application is gone")
        print(f"with {args.stop} stopped:", json.dumps(await load(http, headers, args.rate, args.duration)))
        r = await http.get("/platform/v1/gateway/home", headers=headers)
        print(f"answer ({r.status_code}):", json.dumps(brief(r.json())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--stop", default="ai", help="The namespace whose application is deleted for the second half.")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
