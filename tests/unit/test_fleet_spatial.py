"""The fleet's grid index against brute force: nearest k (filters, distance bound, far queries), boxes, polygons."""

from __future__ import annotations

import numpy as np

from nexus_ray.compute.spatial import GridIndex, haversine_to_km, points_in_polygon


def _points(n: int = 3000, seed: int = 3) -> tuple[np.ndarray, np.ndarray, GridIndex]:
    rng = np.random.default_rng(seed)
    lat, lon = rng.uniform(40.5, 40.9, n), rng.uniform(-74.2, -73.7, n)
    index = GridIndex(0.01)
    index.place_many(np.arange(n), lat, lon)
    return lat, lon, index


def test_nearest_matches_brute_force_with_a_filter_and_a_bound():
    lat, lon, index = _points()
    rng = np.random.default_rng(5)
    allowed = rng.random(len(lat)) < 0.3
    for q in [(40.7, -73.95), (40.5, -74.2), (41.5, -73.0), (40.55, -73.71)]:  # inside, corner, far outside
        dist = haversine_to_km(*q, lat, lon)
        got = index.nearest(*q, 6, lat, lon, accept=lambda s: allowed[s])
        assert [s for s, _ in got] == list(np.argsort(np.where(allowed, dist, np.inf))[:6])
        assert [round(km, 9) for _, km in got] == [round(float(dist[s]), 9) for s, _ in got]
        bounded = index.nearest(*q, 50, lat, lon, max_km=2.0)
        assert {s for s, _ in bounded} == set(np.argsort(dist)[:50][dist[np.argsort(dist)[:50]] <= 2.0])


def test_moving_a_point_moves_it_in_the_index():
    lat, lon, index = _points(50)
    lat[7], lon[7] = 10.0, 10.0
    index.place(7, 10.0, 10.0)
    assert index.nearest(10.001, 10.001, 1, lat, lon)[0][0] == 7
    index.remove(7)
    assert index.nearest(10.001, 10.001, 1, lat, lon)[0][0] != 7
    assert len(index) == 49


def test_box_and_concave_polygon_match_brute_force():
    lat, lon, index = _points()
    box = (40.6, -74.0, 40.75, -73.85)
    expected = np.nonzero((lat >= box[0]) & (lat <= box[2]) & (lon >= box[1]) & (lon <= box[3]))[0]
    assert sorted(index.in_bbox(*box, lat, lon).tolist()) == expected.tolist()
    # An L shape: concave, so a bounding-box test alone would be wrong.
    shape = [(40.55, -74.15), (40.85, -74.15), (40.85, -74.05), (40.65, -74.05), (40.65, -73.75), (40.55, -73.75)]
    inside = points_in_polygon(lat, lon, shape)
    assert sorted(index.in_polygon(shape, lat, lon).tolist()) == np.nonzero(inside)[0].tolist()
    assert not points_in_polygon(np.array([40.8]), np.array([-73.8]), shape)[0]  # in the box, outside the L
    assert points_in_polygon(np.array([40.6]), np.array([-73.8]), shape)[0]
