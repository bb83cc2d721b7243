"""Route quality on the Solomon VRPTW benchmark (and Augerat CVRP): both back ends side by side.

Every instance is solved by each back end in turn, in this process, one after another, with the
same wall-clock time limit, under the benchmark's objective (fewest vehicles first, then
distance). Per instance: vehicles and distance against ``bks.csv``; over the 56 instances the
cumulative vehicle number (CVN, best-known 405) and cumulative total distance (CTD, best-known
57,186.89). Every solution is re-checked by the exact evaluation (capacity, time windows, each
customer once). Results are appended to a JSON-lines file as they come, so an interrupted run
resumes where it stopped; ``--report`` prints the Markdown tables from that file.

    nice python bench/route_quality.py --time-limit 10 --out bench/route_quality.jsonl
    python bench/route_quality.py --report --out bench/route_quality.jsonl
    python bench/route_quality.py --plot RC201 --backend pyvrp --png bench/route_rc201.png

No Ray: this is the sequential reference (bench/route_parallel.py runs the same solves as tasks).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from nexus_ray.compute import vrp  # noqa: E402

SOLOMON = ROOT / "data" / "solomon"
CVRP = ROOT / "data" / "cvrp"
BKS_CVN, BKS_CTD = 405, 57186.89


def solomon_names() -> list[str]:
    return sorted(p.stem for p in SOLOMON.glob("*.txt"))


def bks() -> dict[str, tuple[int, float]]:
    with open(SOLOMON / "bks.csv") as f:
        return {r["instance"]: (int(r["vehicles"]), float(r["distance"])) for r in csv.DictReader(f)}


def cvrp_optimal() -> dict[str, tuple[int, float]]:
    with open(CVRP / "optimal.csv") as f:
        return {r["instance"]: (int(r["vehicles"]), float(r["optimal"])) for r in csv.DictReader(f)}


def load(name: str) -> vrp.VrpProblem:
    if (SOLOMON / f"{name}.txt").exists():
        return vrp.read_solomon((SOLOMON / f"{name}.txt").read_text())
    return vrp.read_tsplib_cvrp((CVRP / f"{name}.vrp").read_text())


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    done = set()
    if out.exists():
        done = {(r["instance"], r["backend"], r["objective"]) for r in map(json.loads, out.read_text().splitlines())}
    names = args.instances.split(",") if args.instances else solomon_names()
    if args.cvrp:
        names += sorted(p.stem for p in CVRP.glob("*.vrp"))
    todo = [(name, backend, args.time_limit, args.objective) for name in names
            for backend in args.backends.split(",") if (name, backend, args.objective) not in done]
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.workers) as pool:
            for future in as_completed([pool.submit(solve_row, *item) for item in todo]):
                record(out, future.result())
    else:
        for item in todo:
            record(out, solve_row(*item))


def solve_row(name: str, backend: str, time_limit: float, objective: str) -> dict:
    """One instance by one back end, as a result row."""
    began = time.perf_counter()
    sol = vrp.solve(load(name), backend=backend, time_limit_s=time_limit, objective=objective)  # type: ignore[arg-type]
    return {
        "instance": name, "backend": backend, "objective": objective, "time_limit_s": time_limit,
        "feasible": sol.feasible, "vehicles": sol.vehicles, "distance": round(sol.distance, 4),
        "wall_s": round(time.perf_counter() - began, 2), "violations": sol.violations[:3],
    }


def record(out: Path, row: dict) -> None:
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()]
    rows = [r for r in rows if r["objective"] == args.objective]
    backends = sorted({r["backend"] for r in rows})
    best = {**bks(), **cvrp_optimal()}
    by = {(r["instance"], r["backend"]): r for r in rows}
    for family, names in (("Solomon", solomon_names()), ("CVRP", sorted(p.stem for p in CVRP.glob("*.vrp")))):
        names = [n for n in names if all((n, b) in by for b in backends)]
        if not names:
            continue
        print(f"\n#### {family} ({len(names)} instances, objective {args.objective})\n")
        head = "| instance | best known |" + "".join(f" {b} vehicles / distance (gap) |" for b in backends)
        print(head)
        print("|---|---|" + "---|" * len(backends))
        totals = {b: [0, 0.0, 0, 0] for b in backends}  # CVN, CTD, infeasible, at best-known vehicles
        for n in names:
            kv, kd = best[n]
            cells = []
            for b in backends:
                r = by[(n, b)]
                gap = 100 * (r["distance"] - kd) / kd
                mark = "" if r["feasible"] else " INFEASIBLE"
                cells.append(f" {r['vehicles']} / {r['distance']:.2f} ({gap:+.2f}%){mark} |")
                t = totals[b]
                t[0] += r["vehicles"]
                t[1] += r["distance"]
                t[2] += not r["feasible"]
                t[3] += r["feasible"] and r["vehicles"] <= kv
            print(f"| {n} | {kv} / {kd:.2f} |" + "".join(cells))
        cvn = sum(best[n][0] for n in names)
        ctd = sum(best[n][1] for n in names)
        print(f"\n| {family} totals | best known |" + "".join(f" {b} |" for b in backends))
        print("|---|---|" + "---|" * len(backends))
        na = " n/a (some infeasible) |"
        cvns = [na if totals[b][2] else f" {totals[b][0]} ({totals[b][0] - cvn:+d}) |" for b in backends]
        ctds = [na if totals[b][2] else f" {totals[b][1]:,.2f} ({100 * (totals[b][1] - ctd) / ctd:+.2f}%) |"
                for b in backends]
        print("| CVN | " + f"{cvn} |" + "".join(cvns))
        print("| CTD | " + f"{ctd:,.2f} |" + "".join(ctds))
        at_best = "".join(f" {totals[b][3]} |" for b in backends)
        print(f"| instances at best-known vehicles | {len(names)} |" + at_best)
        print("| infeasible | 0 |" + "".join(f" {totals[b][2]} |" for b in backends))


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problem = load(args.plot)
    sol = vrp.solve(problem, backend=args.backend, time_limit_s=args.time_limit)
    geo = vrp.to_geojson(problem, sol)
    fig, ax = plt.subplots(figsize=(8, 8))
    by_id = {n.id: n for n in problem.nodes}
    for route in sol.routes:
        xs = [problem.depot.x, *(by_id[v.id].x for v in route.visits), problem.depot.x]
        ys = [problem.depot.y, *(by_id[v.id].y for v in route.visits), problem.depot.y]
        ax.plot(xs, ys, "-o", markersize=3, linewidth=1.2, label=f"route {route.vehicle} ({len(route.visits)})")
    ax.plot([problem.depot.x], [problem.depot.y], "ks", markersize=10, label="depot")
    kv, kd = bks().get(args.plot, (0, 0.0))
    ax.set_title(
        f"{args.plot} by {args.backend} in {args.time_limit:g} s: {sol.vehicles} vehicles, {sol.distance:.2f}"
        + (f" (best known {kv} / {kd:.2f})" if kv else "")
    )
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    fig.savefig(args.png, dpi=110, bbox_inches="tight")
    print(f"{args.png}: feasible={sol.feasible} vehicles={sol.vehicles} distance={sol.distance:.2f}, "
          f"{len(geo['features'])} GeoJSON features")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "route_quality.jsonl"), help="JSON-lines results file")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per instance and back end")
    ap.add_argument("--backends", default="pyvrp,ortools")
    ap.add_argument("--objective", default="vehicles", choices=["vehicles", "distance"])
    ap.add_argument("--instances", default="", help="comma-separated names (default: all 56 Solomon)")
    ap.add_argument("--cvrp", action="store_true", help="also the Augerat CVRP instances")
    ap.add_argument("--workers", type=int, default=1, help="solves at once, one process each (one per idle core)")
    ap.add_argument("--report", action="store_true", help="print the Markdown tables of --out")
    ap.add_argument("--plot", default="", help="solve this instance and draw it to --png")
    ap.add_argument("--backend", default=vrp.DEFAULT_BACKEND)
    ap.add_argument("--png", default=str(ROOT / "route_example.png"))
    args = ap.parse_args()
    if args.report:
        report(args)
    elif args.plot:
        plot(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
