"""Vehicle routing with capacities and time windows (VRPTW) and plain capacitated routing (CVRP).

One problem model (:class:`VrpProblem`, also the JSON format of route-optimizer), readers for
the Solomon text format and TSPLIB/CVRPLIB ``.vrp`` files, two solver back ends behind one
function (:func:`solve`), an exact evaluation of routes (:func:`evaluate`: arrival times, loads,
feasibility in double precision) and a GeoJSON rendering (:func:`to_geojson`). No Ray in here:
route-optimizer runs :func:`solve` as a Ray task.

Rules, stated once:

* **Distances and times.** ``planar`` coordinates: Euclidean distance in double precision
  (``rounding="nint"``: rounded to the nearest integer, as TSPLIB ``EUC_2D``); ``wgs84``
  (``x`` = longitude, ``y`` = latitude): great-circle kilometres. Travel time is distance
  divided by ``speed`` (Solomon: 1, so travel time equals distance).
* **Time windows** bound the start of service: a vehicle that arrives early waits until
  ``ready``; it may not start after ``due``; it returns to the depot by the depot's ``due``.
* **Objective.** ``"vehicles"`` (default, the Solomon benchmark's): fewest vehicles first, then
  total distance. ``"distance"``: total distance alone (it may use more vehicles).
* **Integers inside the solvers.** Both back ends work on integers: values times ``SCALE``,
  with travel and service times rounded *up* and windows rounded inwards, so a schedule that
  the solver finds feasible is feasible in exact arithmetic too. Reported distances and times
  are recomputed exactly from the routes (:func:`evaluate`).
* **Back ends.** ``"pyvrp"``: PyVRP's iterated local search, with a fleet-minimisation phase
  (fewer vehicles until no feasible solution is found in half the time) and a distance phase
  started from the best feasible solution. ``"ortools"``: OR-Tools routing, parallel cheapest
  insertion then guided local search, with a fixed cost per vehicle larger than any distance
  a vehicle can save.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nexus_ray.compute.geo import EARTH_RADIUS_KM, distance_matrix_km

SCALE = 1000
"""Integer units per distance or time unit inside the solvers (three decimals)."""

Backend = Literal["pyvrp", "ortools"]
Objective = Literal["vehicles", "distance"]
DEFAULT_BACKEND: Backend = "pyvrp"
"""The back end that measured better on the Solomon benchmark (bench/RESULTS.md)."""

_EPS = 1e-6


class Node(BaseModel):
    """The depot or a customer: where it is, what it needs, when it may be served."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="Identifier, unique in the problem.")
    x: float = Field(description="Planar x, or longitude in degrees for wgs84 problems.")
    y: float = Field(description="Planar y, or latitude in degrees for wgs84 problems.")
    demand: int = Field(default=0, ge=0, description="Load delivered here (0 at the depot).")
    ready: float = Field(default=0.0, ge=0, description="Earliest start of service (time units).")
    due: float | None = Field(
        default=None, ge=0, description="Latest start of service; at the depot, latest return. None: no limit."
    )
    service: float = Field(default=0.0, ge=0, description="Service duration (time units).")


class VrpProblem(BaseModel):
    """A routing problem: one depot, customers, a homogeneous fleet (route-optimizer's JSON format)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="problem", max_length=120, description="A label for the problem.")
    coordinates: Literal["planar", "wgs84"] = Field(
        default="planar", description="planar: x/y in distance units; wgs84: x = longitude, y = latitude (km)."
    )
    rounding: Literal["exact", "nint"] = Field(
        default="exact", description="Distances in double precision, or rounded to integers (TSPLIB EUC_2D)."
    )
    speed: float = Field(default=1.0, gt=0, description="Distance units per time unit (Solomon: 1).")
    vehicles: int = Field(ge=1, le=1000, description="Vehicles available (an upper bound).")
    capacity: int = Field(ge=1, description="Capacity of each vehicle, in demand units.")
    depot: Node = Field(description="Where every route starts and ends; its due is the latest return.")
    customers: list[Node] = Field(min_length=1, max_length=2000, description="Customers, each visited once.")

    @model_validator(mode="after")
    def _consistent(self) -> VrpProblem:
        ids = [self.depot.id, *(c.id for c in self.customers)]
        if len(set(ids)) != len(ids):
            raise ValueError("node ids must be unique")
        for node in (self.depot, *self.customers):
            if node.due is not None and node.due < node.ready:
                raise ValueError(f"node {node.id}: due is before ready")
            if node.demand > self.capacity:
                raise ValueError(f"node {node.id}: demand exceeds the vehicle capacity")
        if self.coordinates == "wgs84":
            for node in (self.depot, *self.customers):
                if not (-90 <= node.y <= 90 and -180 <= node.x <= 180):
                    raise ValueError(f"node {node.id}: not a longitude/latitude")
        return self

    @property
    def nodes(self) -> list[Node]:
        """The depot (index 0), then the customers (indices 1..n): the indices routes use."""
        return [self.depot, *self.customers]


class Visit(BaseModel):
    """A stop on a route, with its schedule."""

    id: str = Field(description="The customer's id.")
    arrival: float = Field(description="Arrival time.")
    start: float = Field(description="Start of service (arrival, or ready when early).")
    departure: float = Field(description="End of service.")
    load: int = Field(description="Load on board when leaving (delivered so far subtracted).")


class Route(BaseModel):
    """One vehicle's tour from the depot through its visits back to the depot."""

    vehicle: int = Field(description="0-based vehicle number.")
    visits: list[Visit]
    distance: float = Field(description="Length of the tour, exact.")
    load: int = Field(description="Total demand served.")
    start: float = Field(description="Departure from the depot.")
    end: float = Field(description="Return to the depot.")


class VrpSolution(BaseModel):
    """Routes of a solved problem, their schedule and totals."""

    name: str
    backend: str
    objective: str
    feasible: bool = Field(description="Every customer once, capacity and time windows respected.")
    vehicles: int = Field(description="Routes used.")
    distance: float = Field(description="Total distance, exact (double precision).")
    routes: list[Route]
    unassigned: list[str] = Field(default_factory=list, description="Customers on no route.")
    violations: list[str] = Field(default_factory=list, description="What makes it infeasible, if anything.")
    runtime_s: float = 0.0


# -- readers -------------------------------------------------------------------------------------


def read_solomon(text: str) -> VrpProblem:
    """A problem from the Solomon text format (name; VEHICLE NUMBER CAPACITY; CUSTOMER rows)."""
    lines = [line.strip() for line in text.splitlines()]
    name = next((line for line in lines if line), "solomon")
    vehicles = capacity = None
    rows: list[list[float]] = []
    for i, line in enumerate(lines):
        if line.upper().startswith("NUMBER") and "CAPACITY" in line.upper():
            numbers = next(n for n in lines[i + 1 :] if n).split()
            vehicles, capacity = int(numbers[0]), int(numbers[1])
        parts = line.split()
        if len(parts) == 7 and all(_is_number(p) for p in parts):
            rows.append([float(p) for p in parts])
    if vehicles is None or capacity is None or len(rows) < 2:
        raise ValueError("not a Solomon instance: need a VEHICLE block and customer rows")
    nodes = [
        Node(id=str(int(r[0])), x=r[1], y=r[2], demand=int(r[3]), ready=r[4], due=r[5], service=r[6]) for r in rows
    ]
    return VrpProblem(name=name, vehicles=vehicles, capacity=capacity, depot=nodes[0], customers=nodes[1:])


def read_tsplib_cvrp(text: str) -> VrpProblem:
    """A CVRP from TSPLIB/CVRPLIB text (``EUC_2D``, one depot); the fleet is one vehicle per customer."""
    header: dict[str, str] = {}
    coords: dict[int, tuple[float, float]] = {}
    demands: dict[int, int] = {}
    depot = 1
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line == "EOF":
            continue
        if line.endswith("SECTION"):
            section = line
            continue
        if ":" in line and not section:
            key, value = line.split(":", 1)
            header[key.strip().upper()] = value.strip()
            continue
        parts = line.split()
        if section == "NODE_COORD_SECTION":
            coords[int(parts[0])] = (float(parts[1]), float(parts[2]))
        elif section == "DEMAND_SECTION":
            demands[int(parts[0])] = int(parts[1])
        elif section == "DEPOT_SECTION" and int(parts[0]) > 0:
            depot = int(parts[0])
    if header.get("EDGE_WEIGHT_TYPE", "EUC_2D") != "EUC_2D" or not coords:
        raise ValueError("only EUC_2D instances with NODE_COORD_SECTION are read")
    capacity = int(header["CAPACITY"])
    nodes = {i: Node(id=str(i), x=x, y=y, demand=demands.get(i, 0)) for i, (x, y) in coords.items()}
    customers = [nodes[i] for i in sorted(nodes) if i != depot]
    return VrpProblem(
        name=header.get("NAME", "cvrp"), rounding="nint", vehicles=len(customers), capacity=capacity,
        depot=nodes[depot], customers=customers,
    )


def _is_number(text: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d*)?", text) is not None


# -- exact evaluation ----------------------------------------------------------------------------


def distance_matrix(problem: VrpProblem) -> NDArray[np.float64]:
    """``[i, j]``: distance from node ``i`` to node ``j`` (0 = depot) under the problem's rules."""
    xy = np.array([(n.x, n.y) for n in problem.nodes], dtype=np.float64)
    if problem.coordinates == "wgs84":
        matrix = distance_matrix_km(xy[:, ::-1])
    else:
        matrix = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2))
    return np.rint(matrix) if problem.rounding == "nint" else matrix


def evaluate(
    problem: VrpProblem,
    routes: Sequence[Sequence[int]],
    *,
    backend: str = "",
    objective: str = "vehicles",
    runtime_s: float = 0.0,
    matrix: NDArray[np.float64] | None = None,
) -> VrpSolution:
    """Schedule ``routes`` (lists of customer indices 1..n) exactly and check them."""
    d = distance_matrix(problem) if matrix is None else matrix
    nodes = problem.nodes
    depot_due = math.inf if problem.depot.due is None else problem.depot.due
    violations: list[str] = []
    seen: set[int] = set()
    out: list[Route] = []
    for vehicle, route in enumerate(r for r in routes if r):
        load = sum(nodes[i].demand for i in route)
        if load > problem.capacity:
            violations.append(f"route {vehicle}: load {load} exceeds capacity {problem.capacity}")
        t = problem.depot.ready
        start = t
        prev = 0
        onboard = load
        visits: list[Visit] = []
        length = 0.0
        for i in route:
            if i in seen or not 1 <= i < len(nodes):
                violations.append(f"route {vehicle}: node index {i} repeated or unknown")
            seen.add(i)
            node = nodes[i]
            length += d[prev, i]
            arrival = t + d[prev, i] / problem.speed
            begin = max(arrival, node.ready)
            if node.due is not None and begin > node.due + _EPS:
                violations.append(f"route {vehicle}: {node.id} served at {begin:.3f} after due {node.due}")
            onboard -= node.demand
            t = begin + node.service
            visits.append(Visit(id=node.id, arrival=arrival, start=begin, departure=t, load=onboard))
            prev = i
        length += d[prev, 0]
        end = t + d[prev, 0] / problem.speed
        if end > depot_due + _EPS:
            violations.append(f"route {vehicle}: returns at {end:.3f} after the depot closes at {depot_due}")
        out.append(Route(vehicle=vehicle, visits=visits, distance=length, load=load, start=start, end=end))
    unassigned = [nodes[i].id for i in range(1, len(nodes)) if i not in seen]
    if len(out) > problem.vehicles:
        violations.append(f"{len(out)} routes for {problem.vehicles} vehicles")
    if unassigned:
        violations.append(f"{len(unassigned)} customers unassigned")
    return VrpSolution(
        name=problem.name, backend=backend, objective=objective, feasible=not violations, vehicles=len(out),
        distance=sum(r.distance for r in out), routes=out, unassigned=unassigned, violations=violations,
        runtime_s=runtime_s,
    )


# -- the solvers ---------------------------------------------------------------------------------


class _Integers:
    """The problem in the solvers' integer units (see the module's rules)."""

    def __init__(self, problem: VrpProblem, matrix: NDArray[np.float64], objective: Objective) -> None:
        nodes = problem.nodes
        self.n = len(nodes)
        self.distance = np.rint(matrix * SCALE).astype(np.int64)
        self.travel = np.ceil(matrix * SCALE / problem.speed - 1e-9).astype(np.int64)
        np.fill_diagonal(self.travel, 0)
        horizon = max(
            (n.due for n in nodes if n.due is not None),
            default=problem.depot.ready + sum(n.service for n in nodes) + float(matrix.max()) * self.n / problem.speed,
        )
        self.horizon = math.floor(horizon * SCALE)
        self.ready = [math.ceil(n.ready * SCALE) for n in nodes]
        self.due = [self.horizon if n.due is None else math.floor(n.due * SCALE) for n in nodes]
        self.service = [math.ceil(n.service * SCALE) for n in nodes]
        self.demand = [n.demand for n in nodes]
        self.capacity = problem.capacity
        self.vehicles = problem.vehicles
        # More than any distance one vehicle fewer can cost: every customer on a route of its own.
        self.fixed_cost = int(2 * self.distance[0].sum()) + 1 if objective == "vehicles" else 0


#: PyVRP iterations without a better solution, per client, after which a solve ends before its time limit.
_STALL_PER_CLIENT = 1_000

RoutesSolver = Callable[[_Integers, float, Objective, int], list[list[int]]]


def _solve_pyvrp(ints: _Integers, time_limit_s: float, objective: Objective, seed: int) -> list[list[int]]:
    import pyvrp
    from pyvrp.stop import FirstFeasible, MaxRuntime, MultipleCriteria, NoImprovement, StoppingCriterion

    deadline = time.monotonic() + time_limit_s
    # Locations carry no coordinates here: the matrices are given (location i = node i).
    locations = [pyvrp.Location(x=0.0, y=0.0) for _ in range(ints.n)]
    depot = [pyvrp.Depot(location=0, tw_early=ints.ready[0], tw_late=ints.due[0])]
    clients = [
        pyvrp.Client(
            location=i, delivery=[ints.demand[i]], service_duration=ints.service[i],
            tw_early=ints.ready[i], tw_late=ints.due[i],
        )
        for i in range(1, ints.n)
    ]

    # The fleet phase below bounds the number of vehicles, so a modest cost per vehicle is enough to
    # prefer fewer; the "larger than anything" cost would outweigh PyVRP's capped penalties for
    # excess load and let infeasible one-route solutions win.
    fixed_cost = min(ints.fixed_cost, 2 * int(ints.distance.max()))

    # PyVRP's stubs type its matrices more narrowly than the int64 arrays it accepts.
    distances: Any = ints.distance
    durations: Any = ints.travel

    def data(fleet: int) -> pyvrp.ProblemData:
        vehicle = pyvrp.VehicleType(
            num_available=fleet, capacity=[ints.capacity], fixed_cost=fixed_cost,
            tw_early=ints.ready[0], tw_late=ints.due[0],
        )
        return pyvrp.ProblemData(
            locations=locations, clients=clients, depots=depot, vehicle_types=[vehicle],
            distance_matrices=[distances], duration_matrices=[durations],
        )

    def routes_of(solution: Any) -> list[list[int]]:
        # PyVRP numbers clients from 0; node i is client i - 1.
        return [[a.idx + 1 for a in route.schedule() if a.is_client()] for route in solution.routes()]

    def run(fleet: int, seconds: float, first_feasible: bool, start: list[list[int]] | None) -> Any:
        problem = data(fleet)
        # The time limit, or a search that has stopped improving, whichever comes first: a small
        # problem is solved in a fraction of its limit. The stall scales with the size, so that it
        # does not cut a benchmark-sized search short: a 100-customer instance would have to stall
        # for 100,000 iterations, more than the 10 s of bench/route_quality.py run on one core.
        stops: list[StoppingCriterion] = [MaxRuntime(max(seconds, 0.01)),
                                          NoImprovement(_STALL_PER_CLIENT * max(1, ints.n - 1))]
        if first_feasible:
            stops.append(FirstFeasible())
        initial = pyvrp.Solution(problem, [[i - 1 for i in r] for r in start]) if start is not None else None
        return pyvrp.solve(
            problem, stop=MultipleCriteria(stops),
            seed=seed, collect_stats=False, display=False, initial_solution=initial,
        ).best

    if objective == "distance":
        return routes_of(run(ints.vehicles, time_limit_s, False, None))
    # Fleet minimisation, as pyvrp.minimise_fleet does, but keeping each feasible solution.
    fleet_until = time.monotonic() + time_limit_s / 2
    best = run(ints.vehicles, fleet_until - time.monotonic(), True, None)
    if not best.is_feasible():
        return routes_of(run(ints.vehicles, deadline - time.monotonic(), False, routes_of(best)))
    lower = max(1, math.ceil(sum(ints.demand) / ints.capacity))
    while best.num_routes() > lower and time.monotonic() < fleet_until:
        attempt = run(best.num_routes() - 1, fleet_until - time.monotonic(), True, None)
        if not attempt.is_feasible():
            break
        best = attempt
    fleet = best.num_routes()
    final = run(fleet, deadline - time.monotonic(), False, routes_of(best))
    return routes_of(final if final.is_feasible() else best)


def _solve_ortools(ints: _Integers, time_limit_s: float, objective: Objective, seed: int) -> list[list[int]]:
    from ortools.constraint_solver import pywrapcp, routing_enums_pb2

    manager = pywrapcp.RoutingIndexManager(ints.n, ints.vehicles, 0)
    model = pywrapcp.RoutingModel(manager)
    distance = ints.distance.tolist()
    travel = ints.travel.tolist()
    node = manager.IndexToNode

    arc = model.RegisterTransitCallback(lambda a, b: distance[node(a)][node(b)])
    model.SetArcCostEvaluatorOfAllVehicles(arc)
    demand = model.RegisterUnaryTransitCallback(lambda a: ints.demand[node(a)])
    model.AddDimensionWithVehicleCapacity(demand, 0, [ints.capacity] * ints.vehicles, True, "load")
    duration = model.RegisterTransitCallback(lambda a, b: ints.service[node(a)] + travel[node(a)][node(b)])
    model.AddDimension(duration, ints.horizon, ints.horizon, False, "time")
    times = model.GetDimensionOrDie("time")
    for i in range(1, ints.n):
        times.CumulVar(manager.NodeToIndex(i)).SetRange(ints.ready[i], ints.due[i])
    for v in range(ints.vehicles):
        times.CumulVar(model.Start(v)).SetRange(ints.ready[0], ints.due[0])
        times.CumulVar(model.End(v)).SetRange(ints.ready[0], ints.due[0])
    if ints.fixed_cost:
        model.SetFixedCostOfAllVehicles(ints.fixed_cost)

    params = pywrapcp.DefaultRoutingSearchParameters()
    params.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.PARALLEL_CHEAPEST_INSERTION
    params.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
    params.time_limit.FromMilliseconds(max(1, int(time_limit_s * 1000)))
    solution = model.SolveWithParameters(params)
    if solution is None:
        return []
    routes = []
    for v in range(ints.vehicles):
        index = solution.Value(model.NextVar(model.Start(v)))
        route = []
        while not model.IsEnd(index):
            route.append(node(index))
            index = solution.Value(model.NextVar(index))
        if route:
            routes.append(route)
    return routes


BACKENDS: dict[str, RoutesSolver] = {"pyvrp": _solve_pyvrp, "ortools": _solve_ortools}


def solve(
    problem: VrpProblem,
    *,
    backend: Backend = DEFAULT_BACKEND,
    time_limit_s: float = 10.0,
    objective: Objective = "vehicles",
    seed: int = 0,
) -> VrpSolution:
    """Routes for ``problem`` found by ``backend`` within ``time_limit_s`` (wall clock), exactly evaluated.

    An infeasible result (no back end found one in time) comes back with ``feasible=False`` and
    the reasons in ``violations``: the caller decides whether that is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    began = time.monotonic()
    matrix = distance_matrix(problem)
    routes = BACKENDS[backend](_Integers(problem, matrix, objective), time_limit_s, objective, seed)
    return evaluate(
        problem, routes, backend=backend, objective=objective, runtime_s=time.monotonic() - began, matrix=matrix
    )


# -- GeoJSON -------------------------------------------------------------------------------------

_KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180


def to_geojson(
    problem: VrpProblem,
    solution: VrpSolution,
    *,
    anchor: tuple[float, float] = (0.0, 0.0),
    unit_km: float = 1.0,
) -> dict[str, Any]:
    """The solution as a GeoJSON FeatureCollection: depot and stops as Points, routes as LineStrings.

    GeoJSON positions are ``[longitude, latitude]`` (RFC 7946). ``wgs84`` problems are drawn where
    they are. ``planar`` ones (Solomon) are placed by an equirectangular mapping: one unit is
    ``unit_km`` kilometres, x to the east and y to the north of ``anchor`` (``(lat, lon)`` of the
    planar origin); each feature keeps its planar ``x``/``y`` in its properties.
    """

    def position(node: Node) -> list[float]:
        if problem.coordinates == "wgs84":
            return [node.x, node.y]
        lat = anchor[0] + node.y * unit_km / _KM_PER_DEGREE
        lon = anchor[1] + node.x * unit_km / (_KM_PER_DEGREE * math.cos(math.radians(anchor[0])))
        return [round(lon, 7), round(lat, 7)]

    by_id = {n.id: n for n in problem.nodes}
    depot = problem.depot
    features: list[dict[str, Any]] = [
        _point(position(depot), {"kind": "depot", "id": depot.id, "x": depot.x, "y": depot.y})
    ]
    for route in solution.routes:
        for order, visit in enumerate(route.visits):
            node = by_id[visit.id]
            props = {
                "kind": "stop", "id": node.id, "route": route.vehicle, "order": order, "demand": node.demand,
                "arrival": visit.arrival, "start": visit.start, "x": node.x, "y": node.y,
            }
            features.append(_point(position(node), props))
    for node in problem.customers:
        if node.id in solution.unassigned:
            features.append(_point(position(node), {"kind": "unassigned", "id": node.id, "x": node.x, "y": node.y}))
    for route in solution.routes:
        line = [position(depot), *(position(by_id[v.id]) for v in route.visits), position(depot)]
        props = {"kind": "route", "route": route.vehicle, "distance": route.distance, "load": route.load,
                 "start": route.start, "end": route.end, "stops": len(route.visits)}
        geometry = {"type": "LineString", "coordinates": line}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})
    return {
        "type": "FeatureCollection",
        "features": features,
        "properties": {"name": solution.name, "vehicles": solution.vehicles, "distance": solution.distance,
                       "coordinates": problem.coordinates, "anchor": list(anchor), "unit_km": unit_km},
    }


def _point(position: list[float], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": position}, "properties": properties}
