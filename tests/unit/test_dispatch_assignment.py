"""Dispatch's assignment: the optimum cost among assignments of the most jobs, never an infeasible pair."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nexus_ray.compute.assignment import assign, assign_exact, total


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
