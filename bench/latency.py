"""Latency at a fixed request rate (open loop) and closed-loop throughput: the platform vs the bare app.

Both serve GET .../notice (bench/throughput.py says what each does). For each rate, wrk2 runs
30 s at that constant rate with 64 connections against the bare app, then the platform, back to
back; latency is measured from each request's intended send time (corrected for coordinated
omission). Then ``wrk -c64`` (closed loop) for the throughput ratio: bare, platform, bare.

    NEXUS_DATA_DIR=/tmp/nx python bench/latency.py [--rates 200,400,800,1200] [--duration 30]

Needs the platform running (``nexus up``), ``wrk2`` (``../shared/tools/wrk2/build.sh``) and ``wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replica_kill import parse_wrk2, token
from throughput import start_bare_app, wrk


def wrk2(url: str, tok: str, rate: int, duration: int, connections: int) -> dict:
    out = subprocess.run([os.environ.get("WRK2", "wrk2"), "-t2", f"-c{connections}", f"-d{duration}s", f"-R{rate}",
                          "--latency", "-H", f"Authorization: Bearer {tok}", url],
                         capture_output=True, text=True, check=True).stdout
    return {k: v for k, v in parse_wrk2(out).items() if k != "max_ms"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    ap.add_argument("--rates", default="200,400,800,1200")
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--closed-loop-duration", type=int, default=20, help="0 skips the wrk -c64 ratio")
    args = ap.parse_args()

    tok = token("platform:gateway:read")
    platform_url = f"{args.api}/platform/v1/gateway/notice"
    with start_bare_app(args.api, tok) as bare_url:
        wrk(bare_url, tok, 3, args.connections)
        wrk(platform_url, tok, 3, args.connections)
        fixed = []
        for rate in map(int, args.rates.split(",")):
            b = wrk2(bare_url, tok, rate, args.duration, args.connections)
            p = wrk2(platform_url, tok, rate, args.duration, args.connections)
            fixed.append({"rate": rate, "bare": b, "platform": p})
            print(json.dumps(fixed[-1]), file=sys.stderr)
        closed = None
        if args.closed_loop_duration:
            d = args.closed_loop_duration
            b1 = wrk(bare_url, tok, d, args.connections)
            p = wrk(platform_url, tok, d, args.connections)
            b2 = wrk(bare_url, tok, d, args.connections)
            closed = {"bare_first": b1, "platform": p, "bare_second": b2,
                      "ratio": round(p["rps"] / ((b1["rps"] + b2["rps"]) / 2), 3)}
    print(json.dumps({"connections": args.connections, "duration_s": args.duration, "fixed_rate": fixed,
                      "closed_loop": closed}, indent=1))


if __name__ == "__main__":
    main()
