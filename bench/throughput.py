"""Throughput of an authenticated GET through the platform's public entrypoint vs a bare app.

Both serve GET .../notice: verify a bearer JWT, read one Redis key. The platform
path adds what every platform route has: the edge (request id, body limit, metrics,
scope check, Redis rate limit) and Serve (HAProxy ingress + one replica). Same
machine, same run, ``wrk`` with 64 connections (``apt-get install wrk``).

    NEXUS_DATA_DIR=.nexus python bench/throughput.py [--duration 20] [--api http://127.0.0.1:8000]

Needs the platform running (``nexus up``); starts and stops the bare app itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def wrk(url: str, token: str, duration: int, connections: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Authorization: Bearer {token}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    return wrk_summary(out)


def wrk_summary(out: str) -> dict:
    """Requests/s, p50 and p99 (ms), non-2xx answers and socket errors from the output of ``wrk --latency``."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"), "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else ""}


@contextlib.contextmanager
def start_bare_app(api: str, token: str) -> Iterator[str]:
    """Run bench/bare_app.py on a free port against the platform's Redis and JWKS; yields its URL."""
    from nexus_ray.config import get_settings
    from nexus_ray.runtime import embedded

    redis_url = get_settings().redis_url or embedded.status(get_settings().data_dir.resolve())["redis"]["url"]
    jwks = httpx.get(f"{api}/specialized/v1/keys/jwks", timeout=10).text
    port = embedded.free_port()
    env = {**os.environ, "NEXUS_REDIS_URL": redis_url, "NEXUS_BENCH_JWKS": jwks}
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench/bare_app.py"), str(port)], env=env)
    try:
        bare_url = f"http://127.0.0.1:{port}/notice"
        deadline = time.monotonic() + 30
        while True:
            try:
                status = httpx.get(bare_url, headers={"Authorization": f"Bearer {token}"}).status_code
                assert status == 200, f"bare app answers {status}"
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "bare app did not start"
                time.sleep(0.2)
        yield bare_url
    finally:
        bare.terminate()
        bare.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()

    token = subprocess.run([sys.executable, "-m", "nexus_ray.cli", "token", "bench", "-s", "platform:gateway:read"],
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    with start_bare_app(args.api, token) as bare_url:
        platform_url = f"{args.api}/platform/v1/gateway/notice"
        assert httpx.get(platform_url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # Warm both, then measure: bare, platform, bare again (drift check).
        wrk(bare_url, token, 3, args.connections)
        wrk(platform_url, token, 3, args.connections)
        b1 = wrk(bare_url, token, args.duration, args.connections)
        p = wrk(platform_url, token, args.duration, args.connections)
        b2 = wrk(bare_url, token, args.duration, args.connections)
    bare_rps = (b1["rps"] + b2["rps"]) / 2
    result = {"bare_first": b1, "platform": p, "bare_second": b2, "ratio": round(p["rps"] / bare_rps, 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
