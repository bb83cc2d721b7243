"""Dispatch's assignment: the optimum cost among assignments of the most jobs, never an infeasible pair."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nexus_ray.compute.assignment import Prices, _solve, assign, assign_exact, total


def brute_force(cost: np.ndarray) -> tuple[int, float]:
    """(most pairs, least cost with that many) over every injective map of rows to columns or nothing."""
    n, m = cost.shape
    best = (0, 0.0)
    for choice in itertools.product(range(-1, m), repeat=n):
        cols = [c for c in choice if c >= 0]
        if len(cols) != len(set(cols)):
            continue
        pairs = [(i, c) for i, c in enumerate(choice) if c >= 0]
        if any(not np.isfinite(cost[i, c]) for i, c in pairs):
            continue
        value = (len(pairs), -sum(cost[i, c] for i, c in pairs))
        if value > (best[0], -best[1]):
            best = (len(pairs), -value[1])
    return best


def valid(cost: np.ndarray, pairs: list[tuple[int, int]]) -> None:
    rows = [i for i, _ in pairs]
    cols = [j for _, j in pairs]
    assert len(set(rows)) == len(rows) and len(set(cols)) == len(cols), "a driver or a job twice"
    assert all(np.isfinite(cost[i, j]) for i, j in pairs), "an infeasible pair"


@pytest.mark.parametrize("seed", range(40))
def test_small_instances_get_the_optimum_of_the_most_jobs(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 6, size=2)
    cost = rng.uniform(0, 100, (n, m)).round(1)
    cost[rng.random((n, m)) < rng.uniform(0, 0.7)] = np.inf
    most, least = brute_force(cost)
    for pairs in (assign(cost), assign_exact(cost)):
        valid(cost, pairs)
        assert len(pairs) == most
        assert total(cost, pairs) == pytest.approx(least)


@pytest.mark.parametrize("seed", range(5))
def test_sparse_path_keeps_the_most_jobs_and_only_feasible_pairs(seed):
    rng = np.random.default_rng(100 + seed)
    n, m = 60, 50
    drivers, jobs = rng.uniform(0, 10, (n, 2)), rng.uniform(0, 10, (m, 2))
    cost = np.linalg.norm(drivers[:, None, :] - jobs[None, :, :], axis=2)
    cost[cost > 4] = np.inf  # too far
    cost[rng.random((n, m)) < 0.1] = np.inf  # vehicle type, capacity
    exact = assign_exact(cost)
    pairs = assign(cost, k=3, exact_below=0)  # a graph of each one's 3 nearest, then the fallbacks
    valid(cost, pairs)
    assert len(pairs) == len(exact)
    assert total(cost, pairs) >= total(cost, exact) - 1e-9


def test_nothing_feasible_and_bad_input():
    assert assign(np.full((3, 2), np.inf)) == []
    assert assign(np.zeros((0, 4))) == []
    with pytest.raises(ValueError):
        assign(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError):
        assign(np.array([[-1.0]]))


def city(rng: np.random.Generator, n: int, m: int, job_hot: float, reach: float = 0.45) -> np.ndarray:
    """Drivers and jobs in a unit square, 40 % of drivers and ``job_hot`` of jobs at 4 hot spots."""
    hot = rng.uniform(0.2, 0.8, (4, 2))

    def points(count: int, share: float) -> np.ndarray:
        p = rng.uniform(0, 1, (count, 2))
        h = rng.random(count) < share
        p[h] = hot[rng.integers(0, 4, h.sum())] + rng.normal(0, 0.02, (h.sum(), 2))
        return p

    drivers, jobs = points(n, 0.4), points(m, job_hot)
    cost = np.linalg.norm(drivers[:, None, :] - jobs[None, :, :], axis=2) * 1000
    cost[cost > reach * 1000] = np.inf  # too far
    cost[rng.random((n, m)) < 0.05] = np.inf  # vehicle type, capacity, shift
    return cost


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("job_hot", [0.4, 0.8])
def test_auction_graph_path_is_within_one_percent_with_the_most_jobs(seed, job_hot):
    # 0.8: most jobs at the hot spots but few drivers there, so the optimum sends far drivers to
    # them, pairs far down everyone's list of nearest (what the auction's prices are for).
    rng = np.random.default_rng(200 + seed)
    cost = city(rng, 240, 240, job_hot)
    exact = assign_exact(cost)
    pairs = assign(cost, exact_below=0)
    valid(cost, pairs)
    assert len(pairs) == len(exact)
    assert total(cost, pairs) <= 1.01 * total(cost, exact) + 1e-9


@pytest.mark.parametrize("shape", [(150, 260), (260, 150)])
def test_rectangular_matrices_serve_the_smaller_side_at_near_optimal_cost(shape):
    rng = np.random.default_rng(7)
    cost = city(rng, *shape, job_hot=0.7)
    exact = assign_exact(cost)
    pairs = assign(cost, exact_below=0)
    valid(cost, pairs)
    assert len(pairs) == len(exact)
    assert total(cost, pairs) <= 1.01 * total(cost, exact) + 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_when_not_everyone_can_be_matched_the_most_possible_are(seed):
    rng = np.random.default_rng(300 + seed)
    cost = city(rng, 200, 200, job_hot=0.5, reach=0.3)
    # 30 jobs in a corner that only 5 drivers reach, and a driver and a job with nothing feasible.
    cost[:, :30] = np.inf
    cost[:5, :30] = rng.uniform(100, 400, (5, 30))
    cost[199, :] = np.inf
    cost[:, 199] = np.inf
    exact = assign_exact(cost)
    assert len(exact) < 200
    pairs = assign(cost, exact_below=0)
    valid(cost, pairs)
    assert len(pairs) == len(exact)
    assert total(cost, pairs) <= 1.01 * total(cost, exact) + 1e-9


def test_a_graph_without_a_maximum_matching_gets_one_added():
    # The graph offers only job 0, which all three drivers want; every pair is feasible.
    cost = np.array([[1.0, 5.0, 9.0], [1.0, 5.0, 9.0], [1.0, 9.0, 5.0]])
    rows, cols = np.array([0, 1, 2]), np.array([0, 0, 0])
    assert len(_solve(cost, rows, cols)) == 1  # the graph is taken as every feasible pair
    pairs = _solve(cost, rows, cols, Prices(np.zeros(3), np.ones(3)))
    valid(cost, pairs)
    assert len(pairs) == 3


def test_every_pair_mode_is_exact_on_a_larger_matrix():
    rng = np.random.default_rng(11)
    cost = city(rng, 120, 130, job_hot=0.7)
    exact = assign_exact(cost)
    pairs = assign(cost, k=None)
    valid(cost, pairs)
    assert len(pairs) == len(exact)
    assert total(cost, pairs) == pytest.approx(total(cost, exact), rel=1e-6)


def test_when_widening_is_not_enough_a_maximum_matching_over_all_pairs_is_added(monkeypatch):
    monkeypatch.setattr("nexus_ray.compute.assignment.FREE_EXTRA", 1)
    cost = np.array([[1.0, 5.0, 9.0], [1.0, 5.0, 9.0], [1.0, 9.0, 5.0]])
    rows, cols = np.array([0, 1, 2]), np.array([0, 0, 0])
    # Prices that make driver 0 the best for both jobs left out: widening adds (0, 1) and (0, 2),
    # which still match only two; the maximum matching over all pairs then makes it three.
    pairs = _solve(cost, rows, cols, Prices(np.zeros(3), np.array([10.0, 0.0, 0.0])))
    valid(cost, pairs)
    assert len(pairs) == 3
