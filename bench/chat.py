"""chat-service through the entrypoint: N WebSocket members of one room, messages at a fixed rate.

    flock /tmp/nexus-ray.lock timeout 1500 bash bench/with_stack.sh python bench/chat.py \
        [--clients 500] [--senders 25] [--rate 50] [--duration 10] [--batch]

Against a running stack (``nexus up``; bench/with_stack.sh starts a private one). Mints a
token per member (as ``nexus token`` does), creates one room with ``--clients`` members,
opens one WebSocket per member through the entrypoint, then sends ``--rate`` messages per
second into the room (open loop: message k leaves at t0 + k/rate whatever happened before,
from sender k mod ``--senders``). Every member records each message it receives.

Prints: whether every acknowledged message reached every member exactly once and in order
per sender; delivery latency (send to receipt, one clock: the same process) p50/p99/max
over all deliveries; per message, its first receipt and the time from it to its last (how far apart one
message's frames reach the members); ack latency (send to the sender's ack) p50/p99; the run's
connection and send figures, and the frames received (with ``--batch`` the members connect
with ``?batch=true``: events that queued up for a member while its connection was busy come
in one ``batch`` frame). The client is one Python process on the same machine: its own
parsing of rate x clients messages per second is part of what is measured (its garbage collector is
off while it measures: it keeps every delivery, and full collections over them paused it).

``--procs N`` spreads the members over N client processes (the first holds the senders): 500 members are
500 devices, and one Python process reading all their sockets serialises what they would read at once
(each linger, every member's frame arrives together). Receipts are stamped on the system's monotonic clock,
which all processes share. The default, 1, is what every figure up to 2026-12-01 18:00 UTC used.

``--client aiohttp`` reads the members' sockets with aiohttp's compiled frame reader instead of the
websockets library (the default, which every figure up to 2026-12-01 16:00 UTC used).

With ``--cpu``, the CPU of every process of the stack (and of this client) over the sending, from
its 2nd second to 1 s before its end, in % of one core; with ``--py-spy PATH``, a raw py-spy profile
of the first stack process whose command line contains ``--spy-match``, over the same span.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rate_cpu import print_cpu, watch

SCOPES = ["platform:chat:read", "platform:chat:write"]


async def mint(subjects: list[str]) -> dict[str, str]:
    """Access tokens for ``subjects``, signed with key-service's current key (what ``nexus token`` does)."""
    from nexus_ray.cli import _store_env
    from nexus_ray.config import get_settings
    from nexus_ray.deployments.specialized import keys
    from nexus_ray.deployments.wiring import wire_edge
    from nexus_ray.edge import tokens
    from nexus_ray.stores import postgres

    wire_edge()
    if not get_settings().postgres_url:
        os.environ.update(_store_env())
        get_settings.cache_clear()
    await tokens.prepare()
    try:
        minted = {s: tokens.issue(s, SCOPES, ttl_s=3600, kind="operator", actor="bench") for s in subjects}
        await keys.flush_audit()  # the key's uses, as `nexus token` records them
        return minted
    finally:
        await postgres.close_pool()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


class Client:
    def __init__(self, subject: str, ws) -> None:
        self.subject, self.ws = subject, ws
        self.got: list[tuple[str, str, int, float]] = []  # (sender, client_id, seq, received at)
        self.acks: dict[str, tuple[int, float]] = {}
        self.ready = asyncio.Event()
        self.frames = 0
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for raw in self.ws:
            now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every client process
            self.frames += 1
            event = orjson.loads(raw)
            for one in event["events"] if event["type"] == "batch" else (event,):
                self.handle(one, now)

    def handle(self, event: dict, now: float) -> None:
        kind = event["type"]
        if kind == "message":
            m = event["message"]
            self.got.append((m["sender"], m["client_id"], m["seq"], now))
        elif kind == "ack":
            self.acks[event["client_id"]] = (event["seq"], now)
        elif kind == "ready":
            self.ready.set()


class AiohttpSocket:
    """aiohttp's client WebSocket behind the three calls the bench makes (iterate, send, close). Its frame
    reader is compiled, so the client takes less of the 2 cores than with the pure-Python websockets."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def __aiter__(self):
        import aiohttp

        async for msg in self.ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                yield msg.data

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def close(self) -> None:
        await self.ws.close()


async def opener(args: argparse.Namespace):
    """``(open(url, token) -> socket, close_all)`` for the ``--client`` library, permessage-deflate offered
    unless ``--no-deflate`` (as browsers offer it)."""
    if args.client == "websockets":
        from websockets.asyncio.client import connect

        async def open_websockets(url: str, tok: str):
            return await connect(url, subprotocols=["nexus.bearer", tok], open_timeout=120, max_queue=None,
                                 compression=args.compression)

        async def nothing() -> None:
            return None

        return open_websockets, nothing
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=120))

    async def open_aiohttp(url: str, tok: str) -> AiohttpSocket:
        return AiohttpSocket(await session.ws_connect(url, protocols=("nexus.bearer", tok), max_msg_size=0,
                                                      compress=15 if args.compression else 0, decode_text=False))

    return open_aiohttp, session.close


async def run(args: argparse.Namespace) -> None:
    open_socket, close_all = await opener(args)
    subjects = [f"bench-chat-{i}" for i in range(args.clients)]
    toks = await mint(subjects)
    room_id = uuid.uuid4().hex
    owner = {"Authorization": f"Bearer {toks[subjects[0]]}"}
    async with httpx.AsyncClient(base_url=args.api, timeout=60) as http:
        r = await http.post("/platform/v1/chat/rooms", json={"room_id": room_id, "name": "bench"}, headers=owner)
        r.raise_for_status()
        gate = asyncio.Semaphore(16)

        async def add(subject: str) -> None:
            async with gate:
                (await http.put(f"/platform/v1/chat/rooms/{room_id}/members/{subject}", json={},
                                headers=owner)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(add(s) for s in subjects[1:]))
        print(f"room with {args.clients} members made in {time.perf_counter() - t0:.1f} s")

    url = args.api.replace("http://", "ws://") + f"/platform/v1/chat/rooms/{room_id}/live"
    url += "?batch=true" if args.batch else ""
    share = -(-args.clients // args.procs)  # members per client process; the first holds the senders
    assert args.senders <= share, "--senders must fit in the first client process's share of the members"
    t0 = time.perf_counter()
    others = []
    for i in range(share, args.clients, share):
        mine, theirs = multiprocessing.get_context("spawn").Pipe()
        proc = multiprocessing.get_context("spawn").Process(
            target=member_process, args=(args, url, [(s, toks[s]) for s in subjects[i:i + share]], theirs))
        proc.start()
        others.append((proc, mine))
    loop = asyncio.get_running_loop()
    clients = await connect_members(open_socket, url, [(s, toks[s]) for s in subjects[:share]])
    for _proc, pipe in others:
        assert await loop.run_in_executor(None, pipe.recv) == "ready"
    print(f"{args.clients} members connected (handshake, auth, membership, ready) in {time.perf_counter() - t0:.1f} s"
          + (f" by {args.procs} client processes" if args.procs > 1 else ""))

    # The client keeps every delivery (about a million objects at 250,000): the collector's full passes over
    # them would pause its one event loop for 100 ms and more, late receipts counted against the platform.
    # What it keeps holds no cycles, so the collector stays off while it measures.
    gc.disable()
    senders = clients[: args.senders]
    n = int(args.rate * args.duration)
    sent_at: dict[str, float] = {}
    start = time.monotonic() + 0.5
    for _proc, pipe in others:
        pipe.send((start, n))
    cpu: dict[str, float] = {}
    watchers = (watch(cpu, wait_s=1.5, span_s=max(1.0, args.duration - 2), spy_out=args.py_spy,
                      spy_match=args.spy_match, me=True) if args.cpu or args.py_spy else [])
    late = 0
    for k in range(n):
        due = start + k / args.rate
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.01:
            late += 1
        sender = senders[k % len(senders)]
        cid = f"m{k}"
        sent_at[cid] = due  # open loop: latency counts from when it was due
        await sender.ws.send(orjson.dumps({"type": "send", "client_id": cid, "text": f"message {k}"}).decode())

    await drain(clients, n, start + n / args.rate + args.drain)
    for proc, pipe in others:
        for subject, frames, got in await loop.run_in_executor(None, pipe.recv):
            c = Client(subject, None)
            c.frames, c.got = frames, got
            clients.append(c)
        proc.join()

    acks = {cid: a for s in senders for cid, a in s.acks.items()}
    acked = set(acks)
    order_ok = dupes = missing = 0
    latencies: list[float] = []
    for c in clients:
        ids = [g[1] for g in c.got]
        dupes += len(ids) - len(set(ids))
        missing += len(acked - set(ids))
        per_sender: dict[str, list[int]] = defaultdict(list)
        for sender, cid, _seq, at in c.got:
            per_sender[sender].append(int(cid[1:]))
            latencies.append(at - sent_at[cid])
        order_ok += all(v == sorted(v) for v in per_sender.values())
    ack_lat = [acks[c][1] - sent_at[c] for c in acked]
    print(f"sent {n} messages at {args.rate}/s from {len(senders)} senders ({late} sent >10 ms late by the client); "
          f"acknowledged {len(acked)}")
    print(f"deliveries {len(latencies)} of {len(acked) * len(clients)} expected; missing {missing}, duplicates "
          f"{dupes}; members whose per-sender order held: {order_ok}/{len(clients)}")
    ms = [x * 1000 for x in latencies]
    print(f"delivery latency ms: p50 {statistics.median(ms):.1f}  p99 {pct(ms, 99):.1f}  max {max(ms):.1f}")
    by_second: dict[int, list[float]] = defaultdict(list)
    for c in clients:
        for _sender, cid, _seq, at in c.got:
            by_second[int(sent_at[cid] - start)].append((at - sent_at[cid]) * 1000)
    print("delivery p99 ms by second of sending: "
          + " ".join(f"{pct(by_second[k], 99):.0f}" for k in sorted(by_second)))
    # Per message: when its first member got it, and how long the last one took after the first (how far apart a
    # message's frames leave and get through the replicas, HAProxy and this client).
    receipts: dict[str, list[float]] = defaultdict(list)
    for c in clients:
        for _sender, cid, _seq, at in c.got:
            receipts[cid].append(at)
    first = [min(v) - sent_at[cid] for cid, v in receipts.items()]
    spread = [max(v) - min(v) for v in receipts.values()]
    print(f"per message, ms: first receipt p50 {pct(first, 50) * 1000:.1f} p99 {pct(first, 99) * 1000:.1f}; "
          f"last minus first p50 {pct(spread, 50) * 1000:.1f} p99 {pct(spread, 99) * 1000:.1f}")
    if args.dump:  # when sending began; one line per delivery: message number, member, receipt after due (ms); acks
        lines = [f"s {start:.6f}\n"]  # the monotonic time of message 0's due moment
        lines += [f"d {cid[1:]} {i} {(at - sent_at[cid]) * 1000:.2f}\n"
                 for i, c in enumerate(clients) for _s, cid, _q, at in c.got]
        lines += [f"a {cid[1:]} {(acks[cid][1] - sent_at[cid]) * 1000:.2f}\n" for cid in acked]
        await asyncio.to_thread(Path(args.dump).write_text, "".join(lines))
    ams = [x * 1000 for x in ack_lat]
    print(f"ack latency ms: p50 {statistics.median(ams):.1f}  p99 {pct(ams, 99):.1f}")
    frames = sum(c.frames for c in clients)
    kind = "batch" if args.batch else "one per event"
    print(f"frames received {frames} for {len(latencies)} deliveries ({kind}; client {args.client})")
    for t in watchers:
        t.join()
    if cpu:
        print("over the sending:", end=" ")
        print_cpu(cpu)
    await asyncio.gather(*(c.ws.close() for c in clients if c.ws is not None), return_exceptions=True)
    await close_all()


async def connect_members(open_socket, url: str, members: list[tuple[str, str]]) -> list[Client]:
    """Open the members' live connections, 50 at a time, each read by a task of its own; returns once every one
    has had its ``ready``."""
    clients: list[Client] = []
    for i in range(0, len(members), 50):
        batch = members[i:i + 50]
        sockets = await asyncio.gather(*(open_socket(url, tok) for _, tok in batch))
        for (subject, _), ws in zip(batch, sockets, strict=True):
            c = Client(subject, ws)
            c.reader = asyncio.get_running_loop().create_task(c.read())
            clients.append(c)
        await asyncio.gather(*(c.ready.wait() for c in clients[i:]))
    return clients


async def drain(clients: list[Client], n: int, deadline: float) -> None:
    """Until every member has ``n`` messages, or the monotonic clock passes ``deadline``."""
    while any(len(c.got) < n for c in clients) and time.monotonic() < deadline:  # noqa: ASYNC110 - readers run
        await asyncio.sleep(0.2)


async def members_only(args: argparse.Namespace, url: str, members: list[tuple[str, str]], pipe) -> None:
    """A client process of ``--procs``: connect ``members``, say ready, take (start, n) from the first process,
    record deliveries until each member has ``n`` or the drain ends, send back what each member got."""
    open_socket, close_all = await opener(args)
    clients = await connect_members(open_socket, url, members)
    loop = asyncio.get_running_loop()
    pipe.send("ready")
    start, n = await loop.run_in_executor(None, pipe.recv)
    gc.disable()  # as in the first process: what the members keep has no cycles
    await drain(clients, n, start + n / args.rate + args.drain)
    pipe.send([(c.subject, c.frames, c.got) for c in clients])
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)
    await close_all()


def member_process(args: argparse.Namespace, url: str, members: list[tuple[str, str]], pipe) -> None:
    run_loop(args, members_only(args, url, members, pipe))


def run_loop(args: argparse.Namespace, main) -> None:
    if args.loop == "uvloop":  # the client shares the 2 cores with the platform: the cheaper loop
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    ap.add_argument("--clients", type=int, default=500)
    ap.add_argument("--senders", type=int, default=25)
    ap.add_argument("--rate", type=float, default=50.0, help="Messages per second into the room.")
    ap.add_argument("--duration", type=float, default=10.0, help="Seconds of sending.")
    ap.add_argument("--drain", type=float, default=30.0, help="Seconds to wait for the last deliveries.")
    ap.add_argument("--batch", action="store_true", help="Connect with ?batch=true (queued events in one frame).")
    ap.add_argument("--no-deflate", dest="compression", action="store_const", const=None, default="deflate",
                    help="Offer no permessage-deflate (browsers offer it; the server then compresses every frame).")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--client", choices=("websockets", "aiohttp"), default="websockets",
                    help="The members' WebSocket library (aiohttp's frame reader is compiled: a cheaper client).")
    ap.add_argument("--cpu", action="store_true", help="Print the CPU of every stack process over the sending.")
    ap.add_argument("--py-spy", help="Write a raw py-spy profile of one stack process over the sending here.")
    ap.add_argument("--spy-match", default="ServeReplica:platform")
    ap.add_argument("--procs", type=int, default=1, help="Client processes the members are spread over.")
    ap.add_argument("--dump", help="Write every delivery's and ack's latency to this file (one line each).")
    args = ap.parse_args()
    run_loop(args, run(args))


if __name__ == "__main__":
    main()
