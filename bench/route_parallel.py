"""The 56 Solomon instances solved one after another, then as parallel Ray tasks, then on a 2-node cluster.

Three runs of the same solves (back end and time limit fixed by the flags):

* ``sequential``: a plain loop in this process (no Ray);
* ``local``: ``nexus_ray.compute.map_tasks`` over a local Ray started with ``--cpus`` CPUs;
* ``cluster``: the same ``map_tasks`` call, unchanged, against a multi-node cluster described in code
  (``ray.cluster_utils.Cluster``: a head and a second node, each with half the CPUs, started locally); the
  nodes the tasks ran on are counted to show that both took work. On a real cluster the same code runs
  with ``ray.init(address="auto")`` (see ``ray_cluster.yaml``).

Each solve is bounded by its wall-clock time limit, so the ideal speed-up is the number of CPUs.

    nice flock /tmp/nexus-ray.lock python bench/route_parallel.py --time-limit 1 --cpus 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from nexus_ray.compute import map_tasks, vrp  # noqa: E402

SOLOMON = ROOT / "data" / "solomon"


def solve_one(item: tuple[str, str, str, float]) -> dict[str, Any]:
    """One instance: (name, text, backend, time limit) -> its result and the node that solved it."""
    import ray

    name, text, backend, limit = item
    sol = vrp.solve(vrp.read_solomon(text), backend=backend, time_limit_s=limit)  # type: ignore[arg-type]
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "this process"
    return {"instance": name, "vehicles": sol.vehicles, "distance": sol.distance, "feasible": sol.feasible,
            "node": node}


def run(mode: str, items: list[tuple[str, str, str, float]], cpus: int) -> dict[str, Any]:
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import bench/
    cluster = None
    if mode == "local":
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    elif mode == "cluster":
        from ray.cluster_utils import Cluster

        half = max(1, cpus // 2)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": half, "include_dashboard": False})
        cluster.add_node(num_cpus=half)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        cluster.wait_for_nodes()
    try:
        began = time.perf_counter()
        results = [solve_one(i) for i in items] if mode == "sequential" else map_tasks(solve_one, items)
        wall = time.perf_counter() - began
    finally:
        if mode != "sequential":
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return {
        "mode": mode, "instances": len(results), "wall_s": round(wall, 1),
        "feasible": sum(r["feasible"] for r in results), "cvn": sum(r["vehicles"] for r in results),
        "nodes": len({r["node"] for r in results}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=1.0, help="seconds per instance")
    ap.add_argument("--backend", default=vrp.DEFAULT_BACKEND)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray and of the 2-node cluster together")
    ap.add_argument("--modes", default="sequential,local,cluster")
    args = ap.parse_args()
    items = [(p.stem, p.read_text(), args.backend, args.time_limit) for p in sorted(SOLOMON.glob("*.txt"))]
    for mode in args.modes.split(","):
        print(json.dumps(run(mode, items, args.cpus)), flush=True)


if __name__ == "__main__":
    main()
