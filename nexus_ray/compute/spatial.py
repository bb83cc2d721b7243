"""A grid bucket index over moving points: nearest k, points in a box, points in a polygon.

The fleet's positions live in flat arrays (slot ``i``: ``lat[i]``, ``lon[i]``); the index
keeps, per grid cell of ``cell_deg`` degrees, the set of slots inside it, and moves a slot
only when its point changes cell (most telemetry updates stay in their cell). Queries:

* **nearest k**: cells are visited in square rings around the query's cell; after ring
  ``r`` every point closer than ``r`` cells' width (the narrow side: a cell's east-west
  width shrinks with the cosine of the latitude) has been seen, so the search stops once
  the k-th best distance is within that radius. With a few points per cell it reads a few
  dozen cells whatever the fleet's size.
* **box / polygon**: the cells overlapping the box (or, when they outnumber the occupied
  cells, the occupied cells inside it), then an exact test of the candidates, vectorised.

Plain numpy and Python, no Ray: the FleetActor holds one (:mod:`nexus_ray.actors.fleet`).
Points are ``(lat, lon)`` in degrees; polygons are lists of ``(lat, lon)`` vertices. The
grid does not wrap at the antimeridian (a fleet spans a city or a country, not 180°).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from nexus_ray.compute.geo import EARTH_RADIUS_KM

_KM_PER_DEG = math.pi * EARTH_RADIUS_KM / 180.0

Polygon = Sequence[Sequence[float]]


def haversine_to_km(
    lat: float, lon: float, lats: NDArray[np.float64], lons: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Great-circle distances from one point to many, kilometres."""
    p1, p2 = math.radians(lat), np.radians(lats)
    h = np.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * np.cos(p2) * np.sin((np.radians(lons) - math.radians(lon)) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def points_in_polygon(lats: NDArray[np.float64], lons: NDArray[np.float64], polygon: Polygon) -> NDArray[np.bool_]:
    """Which points lie inside ``polygon`` (even-odd rule, vectorised ray casting; edges may go either way)."""
    inside = np.zeros(len(lats), dtype=bool)
    vertices = list(polygon)
    n = len(vertices)
    for i in range(n):
        (ay, ax), (by, bx) = vertices[i - 1], vertices[i]
        crosses = (ay > lats) != (by > lats)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (lats - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (lons < x_at)
    return inside


def bbox_of(polygon: Polygon) -> tuple[float, float, float, float]:
    """``(min_lat, min_lon, max_lat, max_lon)`` of a polygon."""
    lats = [p[0] for p in polygon]
    lons = [p[1] for p in polygon]
    return min(lats), min(lons), max(lats), max(lons)


class GridIndex:
    """Slots of points bucketed by grid cell; the caller owns the coordinate arrays and says when a slot moves."""

    def __init__(self, cell_deg: float = 0.01) -> None:
        if not cell_deg > 0:
            raise ValueError("cell_deg must be positive")
        self.cell_deg = cell_deg
        self._cells: dict[tuple[int, int], set[int]] = {}
        self._cell_of: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._cell_of)

    def cell(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self.cell_deg), math.floor(lon / self.cell_deg)

    def place(self, slot: int, lat: float, lon: float) -> None:
        """Put ``slot`` in the cell of ``(lat, lon)`` (moving it if it was elsewhere)."""
        new = self.cell(lat, lon)
        old = self._cell_of.get(slot)
        if old == new:
            return
        if old is not None:
            self._drop_from(old, slot)
        self._cells.setdefault(new, set()).add(slot)
        self._cell_of[slot] = new

    def place_many(self, slots: NDArray[np.int64], lats: NDArray[np.float64], lons: NDArray[np.float64]) -> None:
        """:meth:`place` for many slots; only the ones that change cell touch the buckets."""
        rows = np.floor(lats / self.cell_deg).astype(np.int64)
        cols = np.floor(lons / self.cell_deg).astype(np.int64)
        cell_of, cells = self._cell_of, self._cells
        for slot, r, c in zip(slots.tolist(), rows.tolist(), cols.tolist(), strict=True):
            new = (r, c)
            old = cell_of.get(slot)
            if old == new:
                continue
            if old is not None:
                self._drop_from(old, slot)
            bucket = cells.get(new)
            if bucket is None:
                cells[new] = {slot}
            else:
                bucket.add(slot)
            cell_of[slot] = new

    def remove(self, slot: int) -> None:
        old = self._cell_of.pop(slot, None)
        if old is not None:
            self._drop_from(old, slot)

    def _drop_from(self, cell: tuple[int, int], slot: int) -> None:
        bucket = self._cells[cell]
        bucket.discard(slot)
        if not bucket:
            del self._cells[cell]

    # -- queries --------------------------------------------------------------------------

    def nearest(
        self, lat: float, lon: float, k: int, lats: NDArray[np.float64], lons: NDArray[np.float64],
        accept: Callable[[NDArray[np.int64]], NDArray[np.bool_]] | None = None, max_km: float | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` slots nearest ``(lat, lon)`` as ``(slot, km)``, nearest first.

        ``accept(slots)`` filters candidates (available vehicles only, say); ``max_km`` bounds the search.
        """
        if k < 1 or not self._cells:
            return []
        r0, c0 = self.cell(lat, lon)
        rows = [r for r, _ in self._cells]
        cols = [c for _, c in self._cells]
        last_ring = max(abs(min(rows) - r0), abs(max(rows) - r0), abs(min(cols) - c0), abs(max(cols) - c0))
        # Distance surely covered after ring r: r whole cells on the narrowest side within reach.
        lat_far = min(89.9, abs(lat) + self.cell_deg * (last_ring + 1))
        cell_km = self.cell_deg * _KM_PER_DEG * max(math.cos(math.radians(lat_far)), 1e-3)
        found_slots: list[NDArray[np.int64]] = []
        found_km: list[NDArray[np.float64]] = []
        best: NDArray[np.float64] = np.empty(0)
        bounds = (min(rows), max(rows), min(cols), max(cols))
        # Rings nearer than the occupied cells' box hold nothing: start at the first that reaches it.
        first_ring = max(0, bounds[0] - r0, r0 - bounds[1], bounds[2] - c0, c0 - bounds[3])
        for ring in range(first_ring, last_ring + 1):
            slots = self._ring(r0, c0, ring, bounds)
            if slots:
                candidates = np.fromiter(slots, dtype=np.int64, count=len(slots))
                if accept is not None:
                    candidates = candidates[accept(candidates)]
                if len(candidates):
                    found_slots.append(candidates)
                    found_km.append(haversine_to_km(lat, lon, lats[candidates], lons[candidates]))
                    best = np.concatenate(found_km)
            covered = ring * cell_km
            if max_km is not None and covered >= max_km:
                break
            if len(best) >= k and np.partition(best, k - 1)[k - 1] <= covered:
                break
        if not len(best):
            return []
        all_slots = np.concatenate(found_slots)
        order = np.argsort(best, kind="stable")
        if max_km is not None:
            order = order[best[order] <= max_km]
        order = order[:k]
        return [(int(all_slots[i]), float(best[i])) for i in order]

    def _ring(self, r0: int, c0: int, ring: int, bounds: tuple[int, int, int, int]) -> list[int]:
        """Slots in the cells at Chebyshev distance ``ring`` from ``(r0, c0)``, within the occupied ``bounds``."""
        cells = self._cells
        if ring == 0:
            return list(cells.get((r0, c0), ()))
        r_min, r_max, c_min, c_max = bounds
        out: list[int] = []
        for r in (r0 - ring, r0 + ring):  # top and bottom rows of the ring
            if r_min <= r <= r_max:
                for c in range(max(c0 - ring, c_min), min(c0 + ring, c_max) + 1):
                    bucket = cells.get((r, c))
                    if bucket:
                        out.extend(bucket)
        for c in (c0 - ring, c0 + ring):  # left and right columns, corners excluded
            if c_min <= c <= c_max:
                for r in range(max(r0 - ring + 1, r_min), min(r0 + ring - 1, r_max) + 1):
                    bucket = cells.get((r, c))
                    if bucket:
                        out.extend(bucket)
        return out

    def in_bbox(
        self, min_lat: float, min_lon: float, max_lat: float, max_lon: float,
        lats: NDArray[np.float64], lons: NDArray[np.float64],
    ) -> NDArray[np.int64]:
        """Slots whose point lies in the box (edges included)."""
        r1, c1 = self.cell(min_lat, min_lon)
        r2, c2 = self.cell(max_lat, max_lon)
        if (r2 - r1 + 1) * (c2 - c1 + 1) <= len(self._cells):
            buckets = (self._cells.get((r, c)) for r in range(r1, r2 + 1) for c in range(c1, c2 + 1))
        else:
            buckets = (b for (r, c), b in self._cells.items() if r1 <= r <= r2 and c1 <= c <= c2)
        slots: list[int] = []
        for bucket in buckets:
            if bucket:
                slots.extend(bucket)
        if not slots:
            return np.empty(0, dtype=np.int64)
        candidates = np.asarray(slots, dtype=np.int64)
        la, lo = lats[candidates], lons[candidates]
        keep = (la >= min_lat) & (la <= max_lat) & (lo >= min_lon) & (lo <= max_lon)
        return candidates[keep]

    def in_polygon(self, polygon: Polygon, lats: NDArray[np.float64], lons: NDArray[np.float64]) -> NDArray[np.int64]:
        """Slots whose point lies inside ``polygon``."""
        candidates = self.in_bbox(*bbox_of(polygon), lats, lons)
        if not len(candidates):
            return candidates
        return candidates[points_in_polygon(lats[candidates], lons[candidates], polygon)]
