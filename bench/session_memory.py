"""Memory of session-mgr's state: sharded entities against one actor per user.

    .venv/bin/python bench/session_memory.py --users 10000 --shards 2

Starts throwaway stores and a Ray head, opens one session for each of ``--users`` users
through the shard client (what session-mgr's routes call), and reports the shard
processes' memory (USS/PSS) before and after; then, for comparison, the processes and
memory that the former design took: one detached actor per user, for 10 users.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import scratch_stores

from nexus_ray.runtime.embedded import free_port


def _mem(pids: list[int]) -> dict[str, float]:
    uss = pss = 0
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        uss += info.uss
        pss += info.pss
    return {"processes": len(pids), "uss_mib": round(uss / 2**20, 1), "pss_mib": round(pss / 2**20, 1)}


async def run(users: int, shards: int) -> dict:
    import ray

    from nexus_ray.actors import get_or_create
    from nexus_ray.actors.client import EntityClient
    from nexus_ray.actors.session import UserSessions

    client = EntityClient(UserSessions, shards=shards, timeout_s=60)
    now = time.time()

    def session(user: str) -> dict:
        return {"session_id": uuid.uuid4().hex, "user_id": user, "device": "phone", "ip": "203.0.113.9",
                "user_agent": "NexusApp/3.1 (bench)", "created_at": now, "last_used_at": now,
                "idle_timeout_s": 1800, "absolute_timeout_s": 604800}

    # One user per shard first, so every shard process exists before the baseline.
    warm = []
    while len({client.actor_name(u) for u in warm}) < shards:
        warm.append(f"warm-{uuid.uuid4().hex[:8]}")
    for u in warm:
        await client.call(u, "create", session(u), 100)
    pids = sorted({await client.call_shard(u, "pid") for u in warm})
    before = _mem(pids)
    t0 = time.monotonic()
    names = [f"user-{i:06d}-{uuid.uuid4().hex[:6]}" for i in range(users)]
    for start in range(0, users, 500):
        await asyncio.gather(*(client.call(u, "create", session(u), 100) for u in names[start:start + 500]))
    elapsed = time.monotonic() - t0
    after = _mem(pids)
    resident = [await client.call_shard(u, "stats") for u in warm]

    per_user = [get_or_create(UserSessions, f"solo-{uuid.uuid4().hex[:8]}") for _ in range(10)]
    for h in per_user:
        await h.create.remote(session("solo"), 100)
    solo_pids = [await h.pid.remote() for h in per_user]
    solo = _mem(solo_pids)
    for h in per_user:
        await h.erase.remote()
        ray.kill(h, no_restart=True)
    return {
        "users": users, "shards": shards, "create_s": round(elapsed, 1),
        "sessions_per_s": round(users / elapsed),
        "shards_before": before, "shards_after": after,
        "added_uss_mib_per_10k_sessions": round((after["uss_mib"] - before["uss_mib"]) * 10_000 / users, 1),
        "resident_per_shard": [r["resident"] for r in resident],
        "one_actor_per_user_10_users": solo,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()
    with scratch_stores("nexus-sessmem-") as data_dir:
        import ray

        from nexus_ray.runtime import cluster

        # The stores' URLs are in this process's environment (scratch_stores): the head's workers inherit them.
        head = cluster.start_head(data_dir, {}, dashboard_port=free_port(),
                                  metrics_export_port=free_port())
        try:
            cluster.connect(head.address, logging_level="WARNING", log_to_driver=False)
            print(json.dumps(asyncio.run(run(args.users, args.shards)), indent=2))
        finally:
            ray.shutdown()
            cluster.stop_head(data_dir)


if __name__ == "__main__":
    main()
