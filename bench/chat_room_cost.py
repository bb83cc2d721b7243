"""What a chat room's write path costs per post: the room entity in one process, on the real embedded stores.

    .venv/bin/python bench/chat_room_cost.py [--members 500] [--posts 500] [--rate 50] [--senders 25]

Starts the embedded stores in a fresh temporary directory (stopped at the end), opens one
:class:`~nexus_ray.actors.chat_room.ChatRoom` in this process (no Ray, no Serve, no WebSocket: the
room's group commit, its journal, the document store and the publications only), makes it a room of
``--members``, then posts ``--posts`` messages at ``--rate`` a second from ``--senders`` members, open
loop, as bench/chat.py does through the entrypoint. Prints the CPU milliseconds per post of this process
and of each store server process (from /proc), and the post latency p50/p99.

To compare two versions of the code, run it with ``PYTHONPATH`` pointing at each checkout in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from on_stores import on_stores, private_stores

DIR = private_stores("nexus-bench-room-")

from rate_cpu import cpu_of  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    await on_stores(DIR, lambda store_pids: run(args, store_pids))


async def run(args: argparse.Namespace, store_pids: list[int]) -> None:
    from nexus_ray.actors.chat_room import ChatRoom
    from nexus_ray.deployments.platform.chat.service import ensure_indexes

    await ensure_indexes()
    room = await ChatRoom.open("bench-room")
    await room.create("m0", "bench", {"blocked_words": [], "block_links": False})
    for i in range(1, args.members):
        await room.set_member("m0", f"m{i}", "member")

    pids = [os.getpid(), *store_pids]
    before = cpu_of(pids)
    t0 = time.monotonic() + 0.1
    waits: list[float] = []

    async def post(k: int) -> None:
        due = t0 + k / args.rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        answer = await room.post(f"m{k % args.senders}", f"c{k}", f"message {k}", time.time())
        assert "error" not in answer and answer["duplicate"] is False, answer
        waits.append((time.monotonic() - due) * 1000)

    await asyncio.gather(*(post(k) for k in range(args.posts)))
    elapsed = time.monotonic() - t0
    after = cpu_of(pids)
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    print(f"{args.posts} posts at {args.rate}/s in {elapsed:.1f} s; post latency ms: p50 "
          f"{statistics.median(waits):.1f}, p99 {sorted(waits)[round(0.99 * (len(waits) - 1))]:.1f}")
    print(f"CPU per post, ms: all {sum(spent.values()) / args.posts * 1000:.2f}")
    me = f"{os.getpid()}:"
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {seconds / args.posts * 1000:6.2f}  {name}{'  (the room)' if name.startswith(me) else ''}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--posts", type=int, default=500)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--senders", type=int, default=25)
    asyncio.run(main(ap.parse_args()))
