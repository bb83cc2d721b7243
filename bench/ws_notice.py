"""What a live stream costs at the edge: N open notice streams on one ingress process.

    python bench/ws_notice.py [--streams 1000]

Starts embedded stores in a temporary directory and, in a child process, an app with the
platform notice stream behind the real edge (guard, middleware) served by uvicorn, as a
Serve replica serves it. Opens N authenticated streams (token in the subprotocol), then
publishes one notice and times its arrival at every stream. Prints the connection rate,
the server process's memory per open stream, the Redis subscriptions it holds, and the
fan-out time (publish to the last stream receiving it), with the server's CPU time for
each, which a machine shared with other work changes less than the wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import secrets
import socket
import statistics
import time

import psutil
from scratch import scratch_stores  # bench/ is on sys.path when a bench runs


def serve(sock: socket.socket) -> None:
    """The child process: the notice stream on the real edge, served by uvicorn on ``sock``."""
    import uvicorn
    from fastapi import FastAPI

    from nexus_ray.deployments.platform.gateway import live as notice_live
    from nexus_ray.edge import errors
    from nexus_ray.edge.middleware import EdgeMiddleware
    from nexus_ray.edge.security import check_route_security

    app = FastAPI()
    errors.install(app)
    app.include_router(notice_live.router, prefix="/v1/gateway")
    check_route_security(app.routes)
    app.add_middleware(EdgeMiddleware, namespace="platform", max_body_bytes=1 << 20)
    uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, backlog=4096)).run(sockets=[sock])


async def drive(port: int, server: psutil.Process, n: int) -> None:
    from websockets.asyncio.client import connect

    from nexus_ray.deployments.platform.gateway import live as notice_live
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import tokens

    wire_edge()
    from nexus_ray.stores.cache import redis_client

    await tokens.prepare()
    token = tokens.issue("bench", ["platform:gateway:read"], ttl_s=3600)
    url = f"ws://127.0.0.1:{port}/v1/gateway/notice/live"
    await notice_live.publish_notice(None)
    for _ in range(100):  # the child is up when it accepts a stream
        try:
            async with connect(url, subprotocols=["nexus.bearer", token]) as ws:
                await ws.recv()
            break
        except OSError:
            await asyncio.sleep(0.2)
    rss0, cpu0 = server.memory_info().rss, sum(server.cpu_times()[:2])
    t0 = time.perf_counter()
    streams = []
    for i in range(0, n, 50):  # 50 handshakes in flight at a time
        batch = [connect(url, subprotocols=["nexus.bearer", token], open_timeout=60) for _ in range(min(50, n - i))]
        opened = await asyncio.gather(*batch)
        await asyncio.gather(*(ws.recv() for ws in opened))  # the current notice: the stream is live
        streams += opened
    connect_s = time.perf_counter() - t0
    rss1, cpu1 = server.memory_info().rss, sum(server.cpu_times()[:2])
    channel = notice_live.CHANNEL
    subscriptions = dict(await redis_client().pubsub_numsub(channel))[channel.encode()]

    async def arrival(ws) -> float:
        json.loads(await ws.recv())
        return time.perf_counter()

    waits = [asyncio.create_task(arrival(ws)) for ws in streams]
    sent = time.perf_counter()
    await notice_live.publish_notice(json.dumps({"message": "bench", "severity": "info", "until": None,
                                                 "set_by": "bench", "set_at": "2026-01-01T00:00:00+00:00"}))
    fanout = sorted(t - sent for t in await asyncio.gather(*waits))
    cpu2 = sum(server.cpu_times()[:2])
    await asyncio.gather(*(ws.close() for ws in streams))
    print(f"{n} streams opened in {connect_s:.2f} s ({n / connect_s:.0f}/s, handshake + auth + first notice); "
          f"server CPU {(cpu1 - cpu0) / n * 1000:.2f} ms per stream opened")
    print(f"server memory: {(rss1 - rss0) / n / 1024:.1f} KiB RSS per open stream "
          f"({rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB)")
    print(f"Redis subscriptions held by the server for {n} streams: {subscriptions}")
    print(f"fan-out of one notice: p50 {statistics.median(fanout) * 1000:.1f} ms, "
          f"last {fanout[-1] * 1000:.1f} ms after publish; server CPU {(cpu2 - cpu1) / n * 1e6:.0f} us per stream")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    args = ap.parse_args()
    with scratch_stores("nexus-ws-bench-", NEXUS_RATE_LIMIT_PER_PRINCIPAL="100000000",
                        NEXUS_RATE_LIMIT_PER_ADDRESS="100000000", NEXUS_ENVIRONMENT="test",
                        NEXUS_MASTER_KEY=secrets.token_urlsafe(48)):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        child = multiprocessing.get_context("spawn").Process(target=serve, args=(sock,), daemon=True)
        child.start()
        try:
            asyncio.run(drive(sock.getsockname()[1], psutil.Process(child.pid), args.streams))
        finally:
            child.terminate()
            child.join(10)
            sock.close()


if __name__ == "__main__":
    main()
