"""Great-circle distances between points on Earth, for routing and dispatch.

Points are ``(latitude, longitude)`` in decimal degrees, in that order (the order of
GeoJSON is the reverse: convert at the edge). Distances are in kilometres on a sphere
of the Earth's mean radius: within about 0.5 % of the ellipsoidal distance, which is
finer than the road-network detour that any routing cost adds on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), kilometres."""

Point = Sequence[float]


def haversine_km(a: Point, b: Point) -> float:
    """Great-circle distance between two ``(lat, lon)`` points, in kilometres."""
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    # Rounding can push h a hair above 1 for antipodal points; asin would then fail.
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(h, 1.0)))


def distance_matrix_km(points: ArrayLike, destinations: ArrayLike | None = None) -> NDArray[np.float64]:
    """Pairwise great-circle distances in kilometres, computed in one vectorised pass.

    ``points`` is an ``(n, 2)`` array-like of ``(lat, lon)``. Returns an ``(n, n)`` array
    whose ``[i, j]`` is the distance from point ``i`` to point ``j``: symmetric, with a
    zero diagonal. With ``destinations`` (``(m, 2)``), returns the ``(n, m)`` distances
    from each point to each destination (e.g. vehicles to orders).

    Memory is ``8 * n * m`` bytes for the result plus a few temporaries of that size:
    split larger problems into blocks of rows and run them as tasks.
    """
    origins = _as_points(points, "points")
    targets = origins if destinations is None else _as_points(destinations, "destinations")
    lat1, lon1 = np.radians(origins[:, 0])[:, None], np.radians(origins[:, 1])[:, None]
    lat2, lon2 = np.radians(targets[:, 0])[None, :], np.radians(targets[:, 1])[None, :]
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def _as_points(value: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) of (lat, lon), got {array.shape}")
    return array
