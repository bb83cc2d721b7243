"""Geo compute functions against known distances, and the matrix against the pairwise function."""

from __future__ import annotations

import numpy as np
import pytest

from nexus_ray.compute.geo import EARTH_RADIUS_KM, distance_matrix_km, haversine_km

PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)
NEW_YORK = (40.7128, -74.0060)
SYDNEY = (-33.8688, 151.2093)
QUITO = (-0.1807, -78.4678)


@pytest.mark.parametrize(
    ("a", "b", "km"),
    [
        (PARIS, LONDON, 343.5),
        (LONDON, NEW_YORK, 5570.2),
        (NEW_YORK, SYDNEY, 15988.8),
    ],
)
def test_haversine_matches_known_distances(a, b, km):
    assert haversine_km(a, b) == pytest.approx(km, abs=0.5)
    assert haversine_km(b, a) == pytest.approx(haversine_km(a, b))


def test_haversine_edge_cases():
    assert haversine_km(PARIS, PARIS) == 0.0
    # A quarter meridian, and half the circumference between antipodes.
    assert haversine_km((0, 0), (90, 0)) == pytest.approx(np.pi / 2 * EARTH_RADIUS_KM)
    assert haversine_km((0, 0), (0, 180)) == pytest.approx(np.pi * EARTH_RADIUS_KM)
    # Crossing the antimeridian is short, not the long way round.
    assert haversine_km((0, 179.5), (0, -179.5)) == pytest.approx(haversine_km((0, 0), (0, 1)))


def test_distance_matrix_is_symmetric_with_zero_diagonal_and_equals_pairwise():
    points = [PARIS, LONDON, NEW_YORK, SYDNEY, QUITO]
    matrix = distance_matrix_km(points)

    assert matrix.shape == (5, 5)
    np.testing.assert_array_equal(np.diag(matrix), 0.0)
    np.testing.assert_allclose(matrix, matrix.T, rtol=0, atol=1e-9)
    expected = np.array([[haversine_km(a, b) for b in points] for a in points])
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, atol=1e-9)


def test_distance_matrix_to_destinations_is_rectangular():
    origins, destinations = [PARIS, LONDON], [NEW_YORK, SYDNEY, QUITO]
    matrix = distance_matrix_km(np.array(origins), destinations)

    assert matrix.shape == (2, 3)
    expected = np.array([[haversine_km(a, b) for b in destinations] for a in origins])
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, atol=1e-9)


def test_distance_matrix_of_random_points_is_a_metric():
    rng = np.random.default_rng(7)
    points = np.column_stack([rng.uniform(-90, 90, 60), rng.uniform(-180, 180, 60)])
    matrix = distance_matrix_km(points)

    assert (matrix >= 0).all() and (matrix <= np.pi * EARTH_RADIUS_KM + 1e-6).all()
    # Triangle inequality d(i, k) <= d(i, j) + d(j, k) for every triple.
    assert (matrix[:, None, :] <= matrix[:, :, None] + matrix[None, :, :] + 1e-6).all()


@pytest.mark.parametrize("bad", [[1.0, 2.0], [[1.0, 2.0, 3.0]], np.zeros((2, 2, 2))])
def test_distance_matrix_refuses_wrong_shapes(bad):
    with pytest.raises(ValueError, match="shape"):
        distance_matrix_km(bad)
