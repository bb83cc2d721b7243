"""route-optimizer's solvers: each back end's routes on small Solomon and CVRP instances pass an independent
feasibility check (every customer once, capacity, time windows, depot hours); readers and GeoJSON."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from nexus_ray.compute import vrp

DATA = Path(__file__).resolve().parent.parent / "data"


def solomon(name: str, customers: int) -> vrp.VrpProblem:
    problem = vrp.read_solomon((DATA / "solomon" / f"{name}.txt").read_text())
    return problem.model_copy(update={"customers": problem.customers[:customers]})


def check(problem: vrp.VrpProblem, solution: vrp.VrpSolution) -> float:
    """Independent of vrp.evaluate: replay each route from the raw data; returns the total distance."""
    nodes = {n.id: n for n in problem.nodes}
    depot = problem.depot
    served: list[str] = []
    total = 0.0
    for route in solution.routes:
        ids = [v.id for v in route.visits]
        served += ids
        assert sum(nodes[i].demand for i in ids) <= problem.capacity, f"route {route.vehicle} overloaded"
        t, here = depot.ready, depot
        for i in ids:
            node = nodes[i]
            leg = math.hypot(node.x - here.x, node.y - here.y)
            total += leg
            t = max(t + leg, node.ready)
            assert t <= node.due + 1e-6, f"customer {i} served at {t} after {node.due}"
            t += node.service
            here = node
        back = math.hypot(depot.x - here.x, depot.y - here.y)
        total += back
        assert t + back <= depot.due + 1e-6, f"route {route.vehicle} back at {t + back} after {depot.due}"
    assert sorted(served) == sorted(c.id for c in problem.customers), "each customer exactly once"
    assert len(solution.routes) <= problem.vehicles
    return total


@pytest.mark.parametrize("backend", ["pyvrp", "ortools"])
@pytest.mark.parametrize("name", ["C101", "RC201"])
def test_each_backend_solves_25_customers_feasibly(backend, name):
    problem = solomon(name, 25)
    solution = vrp.solve(problem, backend=backend, time_limit_s=0.5)
    assert solution.feasible, solution.violations
    distance = check(problem, solution)
    assert solution.distance == pytest.approx(distance)
    assert solution.vehicles == len(solution.routes)
    # The arrival times the solution reports are the ones the check replays (service starts inside windows).
    for route in solution.routes:
        for v in route.visits:
            node = next(c for c in problem.customers if c.id == v.id)
            assert node.ready - 1e-9 <= v.start <= node.due + 1e-6 and v.start >= v.arrival - 1e-9


def test_c101_25_reaches_the_known_fleet_of_three():
    # C101 with its first 25 customers is solved with 3 vehicles (distance 191.3 in the literature).
    solution = vrp.solve(solomon("C101", 25), time_limit_s=1.0)
    assert solution.feasible and solution.vehicles == 3
    assert solution.distance == pytest.approx(191.81, abs=0.6)


def test_cvrp_instance_is_read_and_solved_within_capacity():
    problem = vrp.read_tsplib_cvrp((DATA / "cvrp" / "A-n32-k5.vrp").read_text())
    assert (len(problem.customers), problem.capacity, problem.rounding) == (31, 100, "nint")
    solution = vrp.solve(problem, time_limit_s=1.0)
    assert solution.feasible, solution.violations
    assert solution.vehicles == 5
    assert all(r.load <= 100 for r in solution.routes)


def test_evaluate_reports_what_makes_routes_infeasible():
    problem = solomon("C101", 5)
    everything_on_one_late_route = [list(range(5, 0, -1))]
    result = vrp.evaluate(problem, everything_on_one_late_route)
    assert not result.feasible and any("after due" in v for v in result.violations)
    missing = vrp.evaluate(problem, [[1, 2]])
    assert missing.unassigned == ["3", "4", "5"] and not missing.feasible


def test_json_problem_refuses_inconsistent_input():
    depot = {"id": "d", "x": 0, "y": 0}
    with pytest.raises(ValidationError, match="unique"):
        vrp.VrpProblem(vehicles=1, capacity=10, depot=depot, customers=[{"id": "d", "x": 1, "y": 1}])
    with pytest.raises(ValidationError, match="capacity"):
        vrp.VrpProblem(vehicles=1, capacity=10, depot=depot, customers=[{"id": "a", "x": 1, "y": 1, "demand": 11}])
    with pytest.raises(ValueError, match="Solomon"):
        vrp.read_solomon("not an instance")


def test_geojson_has_the_depot_stops_and_one_line_per_route():
    problem = solomon("C101", 10)
    solution = vrp.solve(problem, time_limit_s=0.5)
    geo = vrp.to_geojson(problem, solution, anchor=(45.0, 4.0), unit_km=0.1)
    assert geo["type"] == "FeatureCollection"
    kinds = [f["properties"]["kind"] for f in geo["features"]]
    assert kinds.count("depot") == 1 and kinds.count("stop") == 10 and kinds.count("route") == solution.vehicles
    for f in geo["features"]:
        if f["geometry"]["type"] == "LineString":
            line = f["geometry"]["coordinates"]
            assert line[0] == line[-1] and len(line) == f["properties"]["stops"] + 2
        else:
            lon, lat = f["geometry"]["coordinates"]
            # 0.1 km per unit around (45, 4): the planar square of side ~70 stays within a few km.
            assert 44.9 < lat < 45.2 and 3.9 < lon < 4.2


def test_wgs84_problems_use_great_circle_kilometres():
    problem = vrp.VrpProblem(
        coordinates="wgs84", speed=0.5, vehicles=2, capacity=10,
        depot={"id": "hub", "x": 4.85, "y": 45.76, "due": 600},
        customers=[{"id": "a", "x": 4.80, "y": 45.76, "demand": 4}, {"id": "b", "x": 4.90, "y": 45.76, "demand": 4}],
    )
    solution = vrp.solve(problem, backend="ortools", time_limit_s=0.5)
    assert solution.feasible and solution.vehicles == 1
    assert solution.distance == pytest.approx(4 * 3.88, rel=0.02)  # 0.05 degrees of longitude at 45.76 N
    geo = vrp.to_geojson(problem, solution)
    assert geo["features"][0]["geometry"]["coordinates"] == [4.85, 45.76]
