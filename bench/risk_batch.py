"""Batch scoring of risk-assessment: N synthetic applications read from PostgreSQL, scored with reasons and
written back (COPY), as a submitted Ray job (Ray tasks over chunks) and on one process without Ray.

Starts the embedded stores and a Ray head of its own under a private data dir, trains a model (fixed L2
strength: the model's quality is bench/risk_model.py's subject), stores N applications drawn from the
data's distribution with a seeded generator (``nexus_ray.compute.risk.synthetic``), then times

* ``one process``: the job's own code (``nexus_ray.jobs.score_risk --one-process``), chunks one after
  another in this process;
* ``ray job``: the job submitted through ``runtime.jobs`` (as ``POST /finance/v1/risk/batches`` does), from
  the submission until its record says succeeded (end to end: the job's start, ``ray.init``, every task
  and every write), and the job's own time from its first line to its last.

Run under the lock (it starts a Ray cluster)::

    flock /tmp/nexus-ray.lock /work/main/.venv/bin/python bench/risk_batch.py --n 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # for the Ray job
os.environ.setdefault("NEXUS_LOG_LEVEL", "WARNING")


async def _insert(n: int, seed: int) -> tuple[int, int, float]:
    import numpy as np

    from nexus_ray.compute import risk
    from nexus_ray.stores import postgres

    cols = risk.synthetic(n, seed=seed)
    t0 = time.perf_counter()
    p = await postgres.pool()
    data = [np.array(risk.VALUES[a], dtype=object)[cols[a].astype(np.intp)].tolist() if a in risk.CATEGORIES
            else cols[a].astype(np.int64).tolist() for a in risk.ATTRIBUTES]
    step = 200_000
    async with p.acquire() as conn:
        first = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM risk_applications")
        for lo in range(0, n, step):
            records = zip(["bench"] * min(step, n - lo), *(c[lo:lo + step] for c in data), strict=True)
            await conn.copy_records_to_table("risk_applications", columns=("owner", *risk.ATTRIBUTES),
                                             records=records)
        last = await conn.fetchval("SELECT max(id) FROM risk_applications")
        await conn.execute("ANALYZE risk_applications")
    return first, last, time.perf_counter() - t0


async def _online(n: int) -> None:
    """In-process closed loop over the export (validation, active model, scoring, reasons): no HTTP, no Ray."""
    import numpy as np

    from nexus_ray.compute import risk
    from nexus_ray.deployments.finance.risk import exports
    from nexus_ray.deployments.finance.risk.service import applications_of

    apps = applications_of(risk.synthetic(n, seed=7))
    for a in apps[:50]:
        await exports["score"](application=a)  # warm
    took = []
    for a in apps:
        t0 = time.perf_counter()
        await exports["score"](application=a)
        took.append(time.perf_counter() - t0)
    ms = np.array(took) * 1000
    print(f"online score, in-process closed loop over the export, {n} calls: p50 {np.percentile(ms, 50):.2f} ms, "
          f"p99 {np.percentile(ms, 99):.2f} ms, {n / ms.sum() * 1000:,.0f} calls/s")


async def _job(first: int, last: int, chunk: int, submit: bool) -> tuple[str, str]:
    from nexus_ray.deployments.finance.risk import service

    job = await service.start_job(kind="score", params={"from_id": first, "to_id": last, "chunk_size": chunk},
                                  requested_by="bench", submit=None if submit else (lambda *_: "local"))
    return str(job.id), job.submission_id


async def main_async(args: argparse.Namespace) -> None:
    from uuid import UUID

    from nexus_ray.deployments.finance.risk import service
    from nexus_ray.jobs import score_risk
    from nexus_ray.stores import postgres

    await service.train(sample=None, seed=0, trained_by="bench", c_grid=(0.1,))
    if args.online:
        await _online(args.online)
    first, last, secs = await _insert(args.n, args.seed)
    print(f"{args.n} applications stored (ids {first}..{last}) in {secs:.1f} s (COPY; not part of the figures)")

    if not args.skip_one_process:
        job_id, _ = await _job(first, last, args.chunk, submit=False)
        t0 = time.perf_counter()
        r = await score_risk.run(job_id=UUID(job_id), one_process=True)
        secs = time.perf_counter() - t0
        print(f"one process, no Ray: {r['scored']} in {secs:.2f} s = {r['scored'] / secs:,.0f} applications/s "
              f"({r['chunks']} chunks of {args.chunk})")

    if not args.skip_ray:
        from nexus_ray.runtime import jobs

        job_id, submission = await _job(first, last, args.chunk, submit=True)
        t0 = time.perf_counter()
        while True:
            rec = await service.get_job(job_id=UUID(job_id), with_ray=False)
            if rec.status in ("succeeded", "failed"):
                break
            await asyncio.sleep(0.05)
        secs = time.perf_counter() - t0
        if rec.status != "succeeded":
            print(jobs.logs(submission)[-3000:])
            raise SystemExit(f"ray job failed: {rec.error}")
        r = rec.result or {}
        print(f"ray job (submitted, {r['chunks']} tasks of {args.chunk}): {r['scored']} in {secs:.2f} s end to end "
              f"= {r['scored'] / secs:,.0f} applications/s; inside the job {r['seconds']:.2f} s = "
              f"{r['per_second']:,.0f}/s")
    await postgres.close_pool()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="applications (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the synthetic applications")
    ap.add_argument("--chunk", type=int, default=50_000, help="applications per Ray task (default 50,000)")
    ap.add_argument("--skip-one-process", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--online", type=int, default=0, help="also time N online scores in-process (closed loop)")
    args = ap.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="nexus-risk-bench-"))
    import secrets

    os.environ.update({"NEXUS_ENVIRONMENT": "test", "NEXUS_DATA_DIR": str(data_dir),
                       "NEXUS_MASTER_KEY": secrets.token_urlsafe(48)})
    from nexus_ray.config import get_settings
    from nexus_ray.runtime import cluster, embedded

    stores = embedded.start(data_dir)
    os.environ.update(stores.env())
    get_settings.cache_clear()
    head = None
    try:
        if not args.skip_ray:
            from nexus_ray.runtime.embedded import free_port

            env = {k: v for k, v in os.environ.items() if k.startswith("NEXUS_")}
            head = cluster.start_head(data_dir, env, dashboard_port=free_port(), metrics_export_port=free_port())
            os.environ["NEXUS_DASHBOARD_URL"] = head.dashboard_url
            cluster.connect(head.address, logging_level="WARNING", log_to_driver=False)
        print(f"cpus: {os.cpu_count()} (machine shared with other engineers' work: figures are noisy)")
        asyncio.run(main_async(args))
    finally:
        if head is not None:
            import ray

            ray.shutdown()
            cluster.stop_head(data_dir)
        embedded.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
