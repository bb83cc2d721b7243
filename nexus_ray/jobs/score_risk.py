"""Ray job: score stored applications of risk-assessment in chunks, each chunk a Ray task.

    python -m nexus_ray.jobs.score_risk --job-id <risk_jobs id>            # as POST /finance/v1/risk/batches submits it
    python -m nexus_ray.jobs.score_risk --job-id <id> --one-process        # the same chunks, one after another, no Ray

Each task reads its chunk (binary COPY), scores it with reasons (numpy) and writes the scores
back (COPY) with the job's progress counter, once (:func:`...risk.service.score_chunk`). While
the tasks run, this prints the progress every half second; the last line is the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any
from uuid import UUID

from nexus_ray.deployments.finance.risk import service
from nexus_ray.runtime.jobs import report
from nexus_ray.stores import postgres


async def _report_progress(job_id: UUID, total: int, every_s: float = 0.5) -> None:
    while True:
        done = await service.job_done(job_id=job_id)
        report(progress=round(done / total, 4) if total else 1.0, done=done, total=total)
        await asyncio.sleep(every_s)


async def run(*, job_id: UUID, one_process: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    params, _ = await service.claim_job(job_id=job_id, kind="score")
    first, last, total = await service.batch_bounds(first_id=int(params["from_id"]), last_id=params.get("to_id"))
    await service.set_total(job_id=job_id, total=total)
    parts = service.chunks(job_id=job_id, model_id=UUID(params["model_id"]), first_id=first, last_id=last,
                           size=int(params["chunk_size"]))
    reporter = asyncio.create_task(_report_progress(job_id, total))
    try:
        if one_process:
            scored = [await service.score_chunk_async(c) for c in parts]
        else:
            from nexus_ray.compute import amap_tasks

            scored = await amap_tasks(service.score_chunk, parts, num_cpus=1)
    except Exception as exc:
        await service.finish_job(job_id=job_id, error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    seconds = time.perf_counter() - t0
    result = {"scored": sum(scored), "chunks": len(parts), "seconds": round(seconds, 3),
              "per_second": round(sum(scored) / seconds, 1) if seconds else None, "ray": not one_process}
    await service.finish_job(job_id=job_id, result=result)
    report(progress=1.0, done=sum(scored), total=total)
    report(result=result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job-id", type=UUID, required=True, help="the risk_jobs record to run")
    ap.add_argument("--one-process", action="store_true", help="score the chunks here, one after another, no Ray")
    args = ap.parse_args(argv)
    if not args.one_process:
        import ray

        from nexus_ray.runtime.cluster import enable_token_auth

        enable_token_auth()
        ray.init(namespace="nexus")

    async def go() -> None:
        try:
            await run(job_id=args.job_id, one_process=args.one_process)
        finally:
            await postgres.close_pool()

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
