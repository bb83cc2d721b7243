"""Minimum-cost assignment of drivers (rows) to jobs (columns), for dispatch.

``cost[i, j]`` is the cost of driver ``i`` taking job ``j`` (travel time to the pickup) and
``numpy.inf`` where the pair is infeasible (capacity, shift end, vehicle type, too far). The
result assigns as many jobs as possible and, among such assignments, one of minimum total
cost; no driver or job appears twice and no infeasible pair is ever returned.

How: a driver far from a job is rarely in an optimal assignment, so the problem is first solved
*exactly on a sparse graph* that keeps, for every job, its ``k`` cheapest feasible drivers and,
for every driver, its ``k`` cheapest feasible jobs (SciPy's LAPJVsp,
:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching`). That is used when it serves as
many pairs as the full problem can (a Hopcroft-Karp maximum matching over all feasible pairs
says how many). When the neighbours alone cannot (supply and demand out of balance by district,
so the optimum sends far drivers to busy areas), the answer falls back to the exact dense
assignment (:func:`assign_exact`), which is always correct and slower (bench/dispatch.py
measures both). When not every driver or job can be matched at all, the graph is doubled, the
textbook reduction of a maximum-cardinality minimum-cost matching to a perfect one: each real
row gets a "stay unmatched" column and each real column a "stay unmatched" row at a penalty
larger than any total cost (so cardinality comes first), and a shadow edge at cost 0 pairs
those two dummies for every real edge. Small problems (or ``k=None``) use every feasible pair.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching, min_weight_full_bipartite_matching

DEFAULT_K = 8
"""Neighbours per job and per driver kept in the sparse graph (bench/dispatch.py measured it)."""

EXACT_BELOW = 40_000
"""Matrices with fewer cells than this are solved on all their feasible pairs (exact)."""

Pairs = list[tuple[int, int]]


def assign(cost: NDArray[np.float64], *, k: int | None = DEFAULT_K, exact_below: int = EXACT_BELOW) -> Pairs:
    """A maximum-cardinality, minimum-cost set of ``(row, col)`` pairs (see the module's rules).

    ``k`` is the number of neighbours kept per row and column; ``None`` keeps every feasible
    pair (exact, slower on large matrices), as does a matrix of fewer than ``exact_below``
    cells. Negative costs and NaN are refused.
    """
    cost = _checked(cost)
    n, m = cost.shape
    feasible = np.isfinite(cost)
    if n == 0 or m == 0 or not feasible.any():
        return []
    if k is None or cost.size < exact_below or k >= min(n, m):
        return _sparse_matching(cost, feasible)
    # How many pairs a maximum matching has (Hopcroft-Karp over the feasible pairs: milliseconds).
    most = int((maximum_bipartite_matching(csr_matrix(feasible), perm_type="column") >= 0).sum())
    keep = _nearest(cost, k) & feasible
    if most == min(n, m):
        # Whether the neighbours alone can serve as many (Hopcroft-Karp again, on the sparse graph):
        # LAPJVsp takes long to find out that they cannot.
        if int((maximum_bipartite_matching(csr_matrix(keep), perm_type="column") >= 0).sum()) < most:
            return assign_exact(cost)
        rows, cols = np.nonzero(keep)
        graph = csr_matrix((cost[rows, cols] + 1.0, (rows, cols)), shape=(n, m))
        row_ind, col_ind = min_weight_full_bipartite_matching(graph)
        return [(int(i), int(j)) for i, j in zip(row_ind, col_ind, strict=True)]
    pairs = _sparse_matching(cost, keep)
    return pairs if len(pairs) == most else _sparse_matching(cost, feasible)


def assign_exact(cost: NDArray[np.float64]) -> Pairs:
    """The exact optimum by a dense assignment (the reference of tests and bench/dispatch.py)."""
    cost = _checked(cost)
    feasible = np.isfinite(cost)
    if cost.size == 0 or not feasible.any():
        return []
    most = int((maximum_bipartite_matching(csr_matrix(feasible), perm_type="column") >= 0).sum())
    if most == min(cost.shape):
        rows, cols = linear_sum_assignment(cost)  # infinities allowed when a full matching exists
        return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    return _sparse_matching(cost, feasible)


def total(cost: NDArray[np.float64], pairs: Pairs) -> float:
    """The cost of ``pairs`` under ``cost``."""
    return float(sum(cost[r, c] for r, c in pairs))


def _checked(cost: NDArray[np.float64]) -> NDArray[np.float64]:
    array = np.asarray(cost, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"cost must be a 2-D matrix, got shape {array.shape}")
    if np.isnan(array).any() or (array < 0).any():
        raise ValueError("cost must be non-negative, with inf for infeasible pairs (no NaN)")
    return array


def _penalty(cost: NDArray[np.float64], feasible: NDArray[np.bool_]) -> float:
    # More than any set of feasible pairs costs: one more pair always beats a cheaper, smaller matching.
    top = float(cost[feasible].max()) if feasible.any() else 0.0
    return (top + 1.0) * (min(cost.shape) + 1)


def _nearest(cost: NDArray[np.float64], k: int) -> NDArray[np.bool_]:
    """Mask of each column's ``k`` cheapest rows and each row's ``k`` cheapest columns."""
    n, m = cost.shape
    keep = np.zeros((n, m), dtype=bool)
    rows = np.argpartition(cost, k - 1, axis=0)[:k]  # (k, m): the k cheapest drivers of each job
    keep[rows, np.arange(m)[None, :]] = True
    cols = np.argpartition(cost, k - 1, axis=1)[:, :k]  # (n, k): the k cheapest jobs of each driver
    keep[np.arange(n)[:, None], cols] = True
    return keep


def _sparse_matching(cost: NDArray[np.float64], keep: NDArray[np.bool_]) -> Pairs:
    n, m = cost.shape
    r, c = np.nonzero(keep)
    w = cost[r, c]
    big = _penalty(cost, keep)
    # Nodes: rows 0..n-1 real drivers, n..n+m-1 "job j unmatched"; columns 0..m-1 real jobs,
    # m..m+n-1 "driver i unmatched". LAPJVsp takes no zero weights as edges, so every weight
    # is shifted by one; all perfect matchings have n + m edges, so the shift changes no choice.
    rows = np.concatenate([r, np.arange(n), n + np.arange(m), n + c])
    cols = np.concatenate([c, m + np.arange(n), np.arange(m), m + r])
    weights = np.concatenate([w, np.full(n, big), np.full(m, big), np.zeros(len(r))]) + 1.0
    graph = csr_matrix((weights, (rows, cols)), shape=(n + m, n + m))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < n) & (col_ind < m)
    return [(int(i), int(j)) for i, j in zip(row_ind[real], col_ind[real], strict=True)]
