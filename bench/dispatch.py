"""Dispatch rounds: 2,000 drivers by 2,000 jobs, time per round and cost against the exact optimum.

Geography: a city of about 22 by 22 km (Lyon's coordinates). Drivers and jobs are points;
the cost of a pair is the travel time to the pickup in seconds (great-circle km times a 1.35
road detour at 25 km/h); a pair is infeasible beyond 10 km, and 5 % of pairs at random are
infeasible for capacity, shift end or vehicle type. Two layouts:

* ``balanced``: drivers and jobs drawn from the same mix (40 % around 12 hot spots, the rest
  spread over the city);
* ``hotspots``: jobs 70 % at the hot spots (restaurants), drivers only 40 %: supply and demand
  are out of balance by district, so the optimum sends far drivers to the hot spots.

Per round: :func:`nexus_ray.compute.assignment.assign` (wall and CPU time), the exact optimum
(``assign_exact``) and a greedy nearest-driver baseline for comparison; then one table row per
layout: p95 wall and CPU of ``assign``, its cost against the optimum (mean and worst round), its
number of pairs against the most possible (worst round: 0 is equal), the exact solve's p95 and the
greedy baseline's. The load average is printed before and after (the machine may be shared: then
read the CPU column).

    python bench/dispatch.py --rounds 10 --size 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexus_ray.compute import assignment
from nexus_ray.compute.geo import distance_matrix_km

CENTRE = np.array([45.76, 4.85])


def problem(rng: np.random.Generator, n: int, layout: str) -> np.ndarray:
    hot = CENTRE + rng.normal(0, 0.04, (12, 2))

    def points(count: int, hot_share: float) -> np.ndarray:
        p = CENTRE + rng.uniform(-0.1, 0.1, (count, 2)) * [1, 1.4]
        h = rng.random(count) < hot_share
        p[h] = hot[rng.integers(0, len(hot), h.sum())] + rng.normal(0, 0.01, (h.sum(), 2))
        return p

    drivers = points(n, 0.4)
    jobs = points(n, 0.4 if layout == "balanced" else 0.7)
    km = distance_matrix_km(drivers, jobs)
    cost = km * 1.35 / 25 * 3600
    cost[km > 10] = np.inf
    cost[rng.random(cost.shape) < 0.05] = np.inf
    return cost


def greedy(cost: np.ndarray) -> list[tuple[int, int]]:
    """Each job in turn takes its nearest free driver (the baseline)."""
    free = np.ones(cost.shape[0], dtype=bool)
    pairs = []
    for j in range(cost.shape[1]):
        column = np.where(free, cost[:, j], np.inf)
        i = int(np.argmin(column))
        if np.isfinite(column[i]):
            free[i] = False
            pairs.append((i, j))
    return pairs


def timed(fn, cost):  # type: ignore[no-untyped-def]
    wall, cpu = time.perf_counter(), time.process_time()
    pairs = fn(cost)
    return pairs, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--k", type=int, default=assignment.DEFAULT_K)
    ap.add_argument("--layouts", default="balanced,hotspots")
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    for layout in args.layouts.split(","):
        rows = []
        for r in range(args.rounds):
            cost = problem(rng, args.size, layout)
            fast, wall, cpu = timed(lambda c: assignment.assign(c, k=args.k), cost)
            exact, ewall, ecpu = timed(assignment.assign_exact, cost)
            base, gwall, _ = timed(greedy, cost)
            opt = assignment.total(cost, exact)
            row = {
                "layout": layout, "round": r, "wall_ms": 1000 * wall, "cpu_ms": 1000 * cpu,
                "gap_pct": 100 * (assignment.total(cost, fast) / opt - 1), "pairs": len(fast), "max_pairs": len(exact),
                "exact_wall_ms": 1000 * ewall, "exact_cpu_ms": 1000 * ecpu,
                "greedy_ms": 1000 * gwall, "greedy_gap_pct": 100 * (assignment.total(cost, base) / opt - 1),
                "infeasible_pairs": sum(not np.isfinite(cost[i, j]) for i, j in fast),
            }
            rows.append(row)
            print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

        def p95(key: str, rows: list[dict] = rows) -> float:
            return float(np.percentile([x[key] for x in rows], 95))

        print(
            f"| {layout} | {p95('wall_ms'):.0f} ms | {p95('cpu_ms'):.0f} ms | "
            f"{np.mean([x['gap_pct'] for x in rows]):+.2f}% (max {max(x['gap_pct'] for x in rows):+.2f}%) | "
            f"{min(x['pairs'] - x['max_pairs'] for x in rows)} | "
            f"{p95('exact_wall_ms'):.0f} / {p95('exact_cpu_ms'):.0f} ms | "
            f"{p95('greedy_ms'):.0f} ms, {np.mean([x['greedy_gap_pct'] for x in rows]):+.1f}% |",
            flush=True,
        )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
