"""Ray job: train a credit-risk model for risk-assessment and store it (immutable, with its metrics).

    python -m nexus_ray.jobs.train_risk --job-id <risk_jobs id>     # as POST /finance/v1/risk/training submits it
    python -m nexus_ray.jobs.train_risk --sample 300 --seed 7       # by hand, no job record

The five cross-validation folds that measure the model are Ray tasks; the final fit runs here.
What is fitted and how: :mod:`nexus_ray.compute.risk`; how it is stored: :func:`...risk.service.train`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from nexus_ray.compute import risk
from nexus_ray.deployments.finance.risk import service
from nexus_ray.runtime.jobs import report
from nexus_ray.stores import postgres


def _on_ray(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    from nexus_ray.compute import map_tasks

    return map_tasks(fn, items, num_cpus=1)


async def run(*, job_id: UUID | None, sample: int | None, seed: int, trained_by: str, c: float | None = None
              ) -> dict[str, Any]:
    t0 = time.perf_counter()
    if job_id is not None:
        params, trained_by = await service.claim_job(job_id=job_id, kind="train")
        sample, seed, c = params.get("sample"), int(params.get("seed", 0)), params.get("c")
    report(progress=0.0, stage="cross-validation and fit", sample=sample, seed=seed)
    try:
        model = await service.train(sample=sample, seed=seed, trained_by=trained_by, job_id=job_id, mapper=_on_ray,
                                    c_grid=(float(c),) if c else risk.C_GRID)
    except Exception as exc:
        if job_id is not None:
            await service.finish_job(job_id=job_id, error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    result = {"model_id": str(model.id), "version": model.version, "active": model.active,
              "cv_auc": model.metrics["cv"]["auc"], "cv_brier": model.metrics["cv"]["brier"],
              "seconds": round(time.perf_counter() - t0, 2)}
    report(progress=1.0, stage="stored")
    report(result=result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job-id", type=UUID, help="the risk_jobs record to run (its params win)")
    ap.add_argument("--sample", type=int, help="train on this many rows of the data (seeded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--c", type=float, help="fix the L2 strength instead of choosing it by inner CV")
    ap.add_argument("--trained-by", default="operator", help="who is recorded as the trainer without a job record")
    args = ap.parse_args(argv)

    import ray

    from nexus_ray.runtime.cluster import enable_token_auth

    enable_token_auth()
    ray.init(namespace="nexus")

    async def go() -> None:
        try:
            await run(job_id=args.job_id, sample=args.sample, seed=args.seed, trained_by=args.trained_by, c=args.c)
        finally:
            await postgres.close_pool()

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
