"""The one compiled loop of the risk model: walk every tree of a forest for every row.

Kept apart from :mod:`nexus_ray.compute.risk` so that numba is imported (and the loop compiled, or
read from numba's cache beside this file) only by a process that scores with a forest.

The forest comes in the layout :meth:`nexus_ray.compute.risk.Forest._compiled` makes: a node's two
children are next to each other (the right one is ``left + 1``), and every tree is walked exactly
``depth`` steps, a leaf stepping to itself (its threshold is +inf). So one step is
``node = left[node] + (x[feature[node]] > threshold[node])``, with no branch to mispredict, and the
rows of a block take each step together, so their walks overlap instead of waiting on each other.
"""

from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 1024


@njit(cache=True, nogil=True)
def walk(x: np.ndarray, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, roots: np.ndarray,
         depth: int, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Add to ``out[i]`` the row of ``table`` of the leaf that row ``x[i]`` reaches in each tree.

    A node goes to its right child when ``x[i, feature[node]] > threshold[node]`` (scikit-learn's rule,
    on the same float32 values compared with the same float64 thresholds).
    """
    width = table.shape[1]
    n = x.shape[0]
    nodes = np.empty(BLOCK, np.int32)
    for start in range(0, n, BLOCK):
        m = min(n, start + BLOCK) - start
        for t in range(roots.shape[0]):
            for k in range(m):
                nodes[k] = roots[t]
            for _ in range(depth):
                for k in range(m):
                    node = nodes[k]
                    nodes[k] = left[node] + (x[start + k, feature[node]] > threshold[node])
            for k in range(m):
                node = nodes[k]
                for a in range(width):
                    out[start + k, a] += table[node, a]
