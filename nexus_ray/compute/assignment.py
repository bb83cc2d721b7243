"""Minimum-cost assignment of drivers (rows) to jobs (columns), for dispatch.

``cost[i, j]`` is the cost of driver ``i`` taking job ``j`` (travel time to the pickup) and
``numpy.inf`` where the pair is infeasible (capacity, shift end, vehicle type, too far). The
result always assigns as many jobs as any assignment can (maximum cardinality over all feasible
pairs); no driver or job appears twice and no infeasible pair is ever returned. Its total cost
is the least among such assignments on a sparse graph of the promising pairs: not a proven
optimum: on the dispatch bench 0.3 to 0.4 % above it on average and at most 0.9 % in any of its
40 rounds (bench/dispatch.py measures it against :func:`assign_exact` every round, and
bench/RESULTS.md gives the figures). Small matrices, and ``k=None``, are solved on every feasible
pair (exact).

How, for a large matrix:

1. *Prices* (an auction, in NumPy). The nearest pairs are not enough: where supply and demand
   are out of balance by district, the optimum sends far drivers to the busy areas, pairs that
   are hundreds of places down either one's list of nearest. At most :data:`ROUNDS` of a forward
   auction (Bertsekas; Jacobi variant: every unassigned driver bids at once for the job of least
   ``cost + price``, raising its price by the gap to its second-best plus ``epsilon``) give each
   job a price that says how much it is wanted. Each driver keeps a candidate list of its jobs of
   least ``cost + price`` and a bound below which no other job can be (prices only rise), and
   recomputes the list from its dense row only when the bound says it may be stale, so a round
   costs what the bidders' lists cost. The first rounds bid a larger epsilon (prices rise faster),
   and the auction is stopped early (a round limit, or when 1 % of the drivers are left): prices
   only choose the graph, they need not be exact.
2. *Graph*: each driver's ``k`` jobs of least ``cost + price`` (the reduced cost that an optimal
   assignment's pairs minimise), the auction's pairs, and for each driver left unassigned by the
   auction its :data:`FREE_EXTRA` best jobs at those prices.
3. *Cardinality*: a maximum flow on that graph (OR-Tools) says how many pairs it holds. When
   fewer than every driver (or job), the drivers and jobs that its maximum matching leaves out
   get their :data:`FREE_EXTRA` best pairs at the auction's prices, and the flow is run again;
   if still fewer, and fewer than a maximum flow over all feasible pairs (only then computed),
   the pairs of that maximum matching are added: the graph then holds a maximum-cardinality
   assignment of the whole problem.
4. *Exact solve on the graph* (OR-Tools, C++): a square problem whose graph holds a perfect
   matching goes to the cost-scaling linear sum assignment (tried first, before step 3: it says
   itself when there is no perfect matching, and usually there is one); any other (rectangular, or where not
   everyone can be matched) to a minimum-cost maximum flow, which puts cardinality first.
   Costs are scaled to integers (``INT_RANGE`` steps up to the largest cost), so "exact" is
   exact to one part in ``INT_RANGE`` of the largest cost per pair. (OR-Tools is already a
   dependency, for routing; SciPy's sparse LAPJVsp took seconds on these graphs, and its dense
   assignment, :func:`assign_exact`, takes 1 to 2 s at 2,000 by 2,000.)

Rows or columns with no feasible pair are set aside first, and the matrix is transposed when it
has more rows than columns (the auction's bidders are the smaller side).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from ortools.graph.python import linear_sum_assignment as or_assignment
from ortools.graph.python import max_flow as or_max_flow
from ortools.graph.python import min_cost_flow as or_min_cost_flow
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

DEFAULT_K = 48
"""Jobs of least reduced cost kept per driver in the graph (bench/dispatch.py measured it)."""

EXACT_BELOW = 40_000
"""Matrices with fewer cells than this are solved on all their feasible pairs (exact)."""

CANDIDATES = 96
"""Length of each bidder's candidate list in the auction."""

ROUNDS = 150
"""Most auction rounds; the auction also stops when at most 1 % of the bidders are unassigned."""

FREE_EXTRA = 256
"""Jobs of least reduced cost added to the graph for each driver the auction left unassigned."""

EPSILON_SHARE = 1 / 12
"""The auction's epsilon, as a share of the largest finite cost among the candidate lists."""

EARLY_ROUNDS = 30
"""The first rounds bid :data:`EARLY_BOOST` times epsilon more: prices rise faster to where they go."""

EARLY_BOOST = 3.0

INT_RANGE = 10_000_000
"""The largest cost becomes this integer for the OR-Tools solvers (which take integer costs)."""

Pairs = list[tuple[int, int]]
Ints = NDArray[np.intp]


def assign(cost: NDArray[np.float64], *, k: int | None = DEFAULT_K, exact_below: int = EXACT_BELOW) -> Pairs:
    """A maximum-cardinality set of ``(row, col)`` pairs of least cost (see the module's rules).

    ``k`` is the number of jobs of least reduced cost kept per row in the sparse graph; ``None``
    keeps every feasible pair (exact, slower on large matrices), as does a matrix of fewer than
    ``exact_below`` cells. Negative costs and NaN are refused.
    """
    cost = _checked(cost)
    n, m = cost.shape
    if n == 0 or m == 0:
        return []
    if k is None or cost.size < exact_below:
        rows, cols = np.nonzero(np.isfinite(cost))
        return _solve(cost, rows, cols) if len(rows) else []
    # Set aside rows and columns with nothing feasible, and let the smaller side bid.
    keep_rows = np.flatnonzero(np.isfinite(cost.min(axis=1)))
    keep_cols = np.flatnonzero(np.isfinite(cost.min(axis=0)))
    if not len(keep_rows):
        return []
    sub = cost if (len(keep_rows), len(keep_cols)) == (n, m) else cost[np.ix_(keep_rows, keep_cols)]
    flipped = sub.shape[0] > sub.shape[1]
    if flipped:
        sub = np.ascontiguousarray(sub.T)
    rows, cols, prices = _graph(sub, k)
    pairs = _solve(sub, rows, cols, prices)
    if flipped:
        pairs = [(c, r) for r, c in pairs]
    return sorted((int(keep_rows[r]), int(keep_cols[c])) for r, c in pairs)


def assign_exact(cost: NDArray[np.float64]) -> Pairs:
    """The exact optimum by SciPy alone (the reference of tests and bench/dispatch.py).

    A dense assignment; when not every row or every column can be matched, each infeasible pair
    costs a penalty larger than any total of feasible pairs instead, so the assignment first has
    as few of them as possible (as many real pairs), then the least cost; they are left out.
    """
    cost = _checked(cost)
    feasible = np.isfinite(cost)
    if cost.size == 0 or not feasible.any():
        return []
    most = int((maximum_bipartite_matching(csr_matrix(feasible), perm_type="column") >= 0).sum())
    if most == min(cost.shape):
        rows, cols = linear_sum_assignment(cost)  # infinities allowed when a full matching exists
    else:
        penalty = (float(cost[feasible].max()) + 1.0) * (min(cost.shape) + 1)
        rows, cols = linear_sum_assignment(np.where(feasible, cost, penalty))
        real = feasible[rows, cols]
        rows, cols = rows[real], cols[real]
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]


def total(cost: NDArray[np.float64], pairs: Pairs) -> float:
    """The cost of ``pairs`` under ``cost``."""
    return float(sum(cost[r, c] for r, c in pairs))


def _checked(cost: NDArray[np.float64]) -> NDArray[np.float64]:
    array = np.asarray(cost, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {array.shape}")
    if not (array >= 0).all():  # NaN compares false too
        raise ValueError("cost must be non-negative, with inf for infeasible pairs (no NaN)")
    return array


def _graph(cost: NDArray[np.float64], k: int) -> tuple[Ints, Ints, Prices | None]:
    """The sparse graph's pairs (rows <= columns, each row and column with a feasible pair).

    With them, the auction's prices and each row's least ``cost + price`` (to widen the graph
    where it lacks a maximum matching), or None when the graph is every feasible pair.
    """
    n, m = cost.shape
    width = min(CANDIDATES, m - 1)
    if width < 2 or k >= width:
        every_r, every_c = np.nonzero(np.isfinite(cost))
        return every_r, every_c, None
    col_of, price, cand, cand_cost = _auction(cost, width)
    value = cand_cost + price[cand]
    best = np.take_along_axis(cand, np.argpartition(value, k - 1, axis=1)[:, :k], axis=1)
    parts_r = [np.repeat(np.arange(n), k)]
    parts_c = [best.ravel()]
    assigned = np.flatnonzero(col_of >= 0)
    parts_r.append(assigned)
    parts_c.append(col_of[assigned])
    free = np.flatnonzero(col_of < 0)
    prices = Prices(price, value.min(axis=1))
    if free.size:
        extra_r, extra_c = prices.rows_best(cost, free)
        parts_r.append(extra_r)
        parts_c.append(extra_c)
    # A pair listed twice is two parallel arcs, which no solver below minds.
    rows = np.concatenate(parts_r)
    cols = np.concatenate(parts_c)
    ok = np.isfinite(cost[rows, cols])
    return rows[ok], cols[ok], prices


class Prices:
    """The auction's job prices and each driver's least ``cost + price`` (its dual, roughly)."""

    def __init__(self, price: NDArray[np.float64], value: NDArray[np.float64]) -> None:
        self.price = price
        self.value = value

    def rows_best(self, cost: NDArray[np.float64], rows: Ints) -> tuple[Ints, Ints]:
        """The :data:`FREE_EXTRA` jobs of least reduced cost of each of ``rows``."""
        extra = min(FREE_EXTRA, cost.shape[1] - 1)
        top = np.argpartition(cost[rows] + self.price, extra, axis=1)[:, :extra]
        return np.repeat(rows, extra), top.ravel()

    def cols_best(self, cost: NDArray[np.float64], cols: Ints) -> tuple[Ints, Ints]:
        """The :data:`FREE_EXTRA` drivers of least reduced cost of each of ``cols``."""
        extra = min(FREE_EXTRA, cost.shape[0] - 1)
        top = np.argpartition(cost[:, cols].T - self.value, extra, axis=1)[:, :extra]
        return top.ravel(), np.repeat(cols, extra)


def _auction(
    cost: NDArray[np.float64], width: int
) -> tuple[Ints, NDArray[np.float64], Ints, NDArray[np.float64]]:
    """Jacobi forward auction, stopped early: (column of each row or -1, prices, candidate lists).

    Invariant of the candidate lists: ``bound[i]`` is at most ``cost[i, j] + price[j]`` for every
    job ``j`` not in row ``i``'s list (it was the least such value when the list was made, and
    prices only rise), so a row whose best candidate is within its bound knows its best job.
    """
    n, m = cost.shape
    # In single precision: prices only choose the graph (the solve below is on the float64 costs), and
    # the auction's selections and sums over the dense matrix take half the memory traffic.
    single = cost.astype(np.float32)
    price = np.zeros(m, dtype=np.float32)
    order = np.argpartition(single, width, axis=1)
    cand = order[:, :width].copy()
    flat = single.ravel()
    start = (np.arange(n) * m)[:, None]
    cand_cost = flat[cand + start]
    bound = flat[order[:, width] + start[:, 0]]
    # The scale of the costs that compete: the largest finite one among the lists and the bounds.
    ends = np.concatenate([bound, cand_cost.max(axis=1, initial=0.0, where=np.isfinite(cand_cost))])
    top = float(ends[np.isfinite(ends)].max())
    eps = top * EPSILON_SHARE if top > 0 else 1.0
    cap = top + eps  # the largest raise (a driver with one feasible job would otherwise bid inf)
    owner = np.full(m, -1)
    col_of = np.full(n, -1)
    free = np.arange(n)
    stop = n // 100
    for round_ in range(ROUNDS):
        if free.size <= stop:
            break
        cf = cand[free]
        first, w1, w2 = _two_least(cand_cost[free] + price[cf])
        limit = bound[free]
        stale = w1 > limit  # a job outside the list may now be better: rebuild from the dense row
        if stale.any():
            rows = free[stale]
            dense = single[rows] + price
            fresh = np.argpartition(dense, width, axis=1)
            new = fresh[:, :width]
            cand[rows] = new
            cf[stale] = new
            cand_cost[rows] = flat[new + start[rows]]
            bound[rows] = limit[stale] = np.take_along_axis(dense, fresh[:, width : width + 1], axis=1)[:, 0]
            first[stale], w1[stale], w2[stale] = _two_least(np.take_along_axis(dense, new, axis=1))
        # The second best is at most the bound; bidding to it keeps epsilon-complementary slackness.
        raise_by = np.minimum(np.minimum(w2, limit) - w1, cap)
        raise_by[~np.isfinite(raise_by)] = cap
        job = cf[np.arange(free.size), first]
        bid = price[job] + raise_by + (eps * EARLY_BOOST if round_ < EARLY_ROUNDS else eps)
        # The highest bid for each job wins it.
        ranked = np.lexsort((-bid, job))
        jobs = job[ranked]
        head = np.ones(jobs.size, dtype=bool)
        np.not_equal(jobs[1:], jobs[:-1], out=head[1:])
        winners = ranked[head]
        won = jobs[head]
        bidders = free[winners]
        evicted = owner[won]
        price[won] = bid[winners]
        owner[won] = bidders
        col_of[bidders] = won
        evicted = evicted[evicted >= 0]
        col_of[evicted] = -1
        losing = np.ones(free.size, dtype=bool)
        losing[winners] = False
        free = np.concatenate([free[losing], evicted])
    return col_of, price.astype(np.float64), cand, cand_cost.astype(np.float64)


def _two_least(value: NDArray[np.float64]) -> tuple[Ints, NDArray[np.float64], NDArray[np.float64]]:
    """Per row: where the least value is, the least and the second least (``value`` is consumed)."""
    at = np.arange(len(value))
    first = value.argmin(axis=1)
    least = value[at, first]
    value[at, first] = np.inf
    return first, least, value.min(axis=1)


def _solve(cost: NDArray[np.float64], rows: Ints, cols: Ints, prices: Prices | None = None) -> Pairs:
    """Maximum-cardinality pairs of least cost on the graph ``(rows, cols)`` (feasible pairs only).

    Without ``prices`` the graph is every feasible pair. With them, when the graph's maximum
    matching is smaller than every row and every column, the rows and columns it leaves out get
    their best pairs at those prices; if still smaller, a maximum matching over all feasible
    pairs is computed and, when larger, its pairs are added.
    """
    n, m = cost.shape
    if n == m and (pairs := _perfect_assignment(n, rows, cols, _integer_costs(cost[rows, cols]))) is not None:
        return pairs  # the usual case: the graph holds a perfect matching, so no flow is needed to say so
    size, used = _max_matching(n, m, rows, cols)
    if size < min(n, m) and prices is not None:
        alone_r = np.ones(n, dtype=bool)
        alone_r[rows[used]] = False
        alone_c = np.ones(m, dtype=bool)
        alone_c[cols[used]] = False
        more_r, more_c = prices.rows_best(cost, np.flatnonzero(alone_r))
        also_r, also_c = prices.cols_best(cost, np.flatnonzero(alone_c))
        more_r, more_c = np.concatenate([more_r, also_r]), np.concatenate([more_c, also_c])
        ok = np.isfinite(cost[more_r, more_c])
        rows, cols = np.concatenate([rows, more_r[ok]]), np.concatenate([cols, more_c[ok]])
        size, used = _max_matching(n, m, rows, cols)
    if size < min(n, m) and prices is not None:
        all_r, all_c = np.nonzero(np.isfinite(cost))
        most, used = _max_matching(n, m, all_r, all_c)
        if most > size:
            rows = np.concatenate([rows, all_r[used]])
            cols = np.concatenate([cols, all_c[used]])
            size = most
    weights = _integer_costs(cost[rows, cols])
    if n == m and size == n:
        pairs = _perfect_assignment(n, rows, cols, weights)
        if pairs is None:  # cannot happen: the graph holds a perfect matching
            raise RuntimeError("assignment solver failed on a graph with a perfect matching")
        return pairs
    return _min_cost_max_flow(n, m, rows, cols, weights)


def _perfect_assignment(n: int, rows: Ints, cols: Ints, weights: NDArray[np.int64]) -> Pairs | None:
    """The least-cost perfect matching of the square graph (OR-Tools' cost scaling), or None without one."""
    solver = or_assignment.SimpleLinearSumAssignment()
    solver.add_arcs_with_cost(rows.astype(np.int32), cols.astype(np.int32), weights)
    status = solver.solve()
    if status == solver.INFEASIBLE:
        return None
    if status != solver.OPTIMAL:
        raise RuntimeError(f"assignment solver failed: {status}")
    return [(i, solver.right_mate(i)) for i in range(n)]


def _integer_costs(weights: NDArray[np.float64]) -> NDArray[np.int64]:
    top = float(weights.max()) if weights.size else 0.0
    scale = INT_RANGE / top if top > 0 else 1.0
    return np.rint(weights * scale).astype(np.int64)


def _flow_arcs(n: int, m: int, rows: Ints, cols: Ints) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    # Nodes: rows 0..n-1, columns n..n+m-1, source n+m, sink n+m+1; the row-column arcs come first.
    tails = np.concatenate([rows, np.full(n, n + m), n + np.arange(m)]).astype(np.int32)
    heads = np.concatenate([n + cols, np.arange(n), np.full(m, n + m + 1)]).astype(np.int32)
    return tails, heads


def _max_matching(n: int, m: int, rows: Ints, cols: Ints) -> tuple[int, NDArray[np.bool_]]:
    """Size of a maximum matching on the graph, and which of its pairs one uses (OR-Tools max flow)."""
    tails, heads = _flow_arcs(n, m, rows, cols)
    flow = or_max_flow.SimpleMaxFlow()
    flow.add_arcs_with_capacity(tails, heads, np.ones(len(tails), dtype=np.int64))
    if flow.solve(n + m, n + m + 1) != flow.OPTIMAL:
        raise RuntimeError("maximum flow failed")
    used = np.asarray(flow.flows(np.arange(len(rows), dtype=np.int32))) > 0
    return int(flow.optimal_flow()), used


def _min_cost_max_flow(n: int, m: int, rows: Ints, cols: Ints, weights: NDArray[np.int64]) -> Pairs:
    tails, heads = _flow_arcs(n, m, rows, cols)
    flow = or_min_cost_flow.SimpleMinCostFlow()
    costs = np.concatenate([weights, np.zeros(n + m, dtype=np.int64)])
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, np.ones(len(tails), dtype=np.int64), costs)
    flow.set_node_supply(n + m, min(n, m))
    flow.set_node_supply(n + m + 1, -min(n, m))
    if flow.solve_max_flow_with_min_cost() != flow.OPTIMAL:
        raise RuntimeError("minimum-cost flow failed")
    used = np.asarray(flow.flows(np.arange(len(rows), dtype=np.int32))) > 0
    return [(int(r), int(c)) for r, c in zip(rows[used], cols[used], strict=True)]
