"""Tests of overlap geometry: disc overlap, probe diameter, overlap metrics and subsampling."""

import math

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.physics.overlap import (
    disc_overlap_fraction,
    group_overlap,
    group_to_group_overlap,
    image_overlap,
    nearest_neighbour_distances_px,
    probe_diameter_px,
    spacing_for_overlap_px,
    subsample_for_spacing,
)


def raster_positions(side: int, step_px: float) -> np.ndarray:
    rows, columns = np.mgrid[0:side, 0:side] * step_px
    return np.stack([columns.ravel(), rows.ravel()], axis=1).astype(np.float64)


def disc_probe(size: int, radius_px: float, centre_rc: tuple[float, float]) -> np.ndarray:
    rows, columns = np.indices((size, size))
    inside = (rows - centre_rc[0]) ** 2 + (columns - centre_rc[1]) ** 2 <= radius_px**2
    return inside.astype(np.complex64)


def test_disc_overlap_at_zero_distance():
    assert disc_overlap_fraction(0.0, 10.0) == pytest.approx(1.0)


def test_disc_overlap_at_radius():
    assert disc_overlap_fraction(5.0, 10.0) == pytest.approx(0.391, abs=5e-4)


def test_disc_overlap_beyond_diameter():
    assert disc_overlap_fraction(10.0, 10.0) == 0.0
    assert disc_overlap_fraction(25.0, 10.0) == 0.0


def test_disc_overlap_matches_pixel_count():
    # Count grid points inside both of two discs of radius 200 whose centres are 150 apart.
    radius = 200.0
    distance = 150.0
    rows, columns = np.mgrid[-radius:radius + 1, -radius:distance + radius + 1]
    in_first = rows**2 + columns**2 <= radius**2
    in_second = rows**2 + (columns - distance) ** 2 <= radius**2
    counted_fraction = np.count_nonzero(in_first & in_second) / np.count_nonzero(in_first)

    assert disc_overlap_fraction(distance, 2 * radius) == pytest.approx(counted_fraction, abs=2e-3)


def test_disc_overlap_vectorised_shape():
    distances_px = np.linspace(0.0, 30.0, 12).reshape(3, 4)
    fractions = disc_overlap_fraction(distances_px, 20.0)

    assert fractions.shape == (3, 4)
    assert np.all(np.diff(fractions.ravel()) <= 0)


def test_disc_overlap_scalar_returns_float():
    assert isinstance(disc_overlap_fraction(3.0, 10.0), float)


def test_disc_overlap_bad_diameter_raises():
    with pytest.raises(InputError, match="diameter_px"):
        disc_overlap_fraction(1.0, 0.0)


def test_disc_overlap_negative_distance_raises():
    with pytest.raises(InputError, match="distance_px"):
        disc_overlap_fraction(np.array([1.0, -1.0]), 10.0)


def test_probe_diameter_uniform_disc():
    radius_px = 20.0
    probe = disc_probe(128, radius_px, (64.3, 63.6))

    assert probe_diameter_px(probe) == pytest.approx(2 * radius_px * math.sqrt(0.9), abs=0.2)


def test_probe_diameter_off_centre_disc():
    centred = probe_diameter_px(disc_probe(128, 15.0, (64.0, 64.0)))
    shifted = probe_diameter_px(disc_probe(128, 15.0, (40.0, 90.0)))

    assert shifted == pytest.approx(centred, abs=1e-9)


def test_probe_diameter_gaussian():
    # For intensity exp(-r² / 2 sigma²) the power inside r is 1 - exp(-r² / 2 sigma²).
    sigma_px = 8.0
    rows, columns = np.indices((128, 128)) - 64.0
    probe = np.exp(-(rows**2 + columns**2) / (4 * sigma_px**2)).astype(np.complex64)
    expected_px = 2 * sigma_px * math.sqrt(2 * math.log(10))

    assert probe_diameter_px(probe) == pytest.approx(expected_px, rel=0.01)


def test_probe_diameter_zero_probe_raises():
    with pytest.raises(InputError, match="probe"):
        probe_diameter_px(np.zeros((16, 16), dtype=np.complex64))


def test_image_overlap_raster_nearest():
    # On a square raster every position's nearest other position lies one step away.
    positions_xy = raster_positions(6, step_px=10.0)

    overlap = image_overlap(positions_xy, diameter_px=30.0, neighbor_count=1)

    assert overlap == pytest.approx(disc_overlap_fraction(10.0, 30.0))


def test_image_overlap_ignores_duplicates():
    positions_xy = raster_positions(6, step_px=10.0)
    doubled_xy = np.concatenate([positions_xy, positions_xy])

    assert image_overlap(doubled_xy, 30.0, 4) == pytest.approx(image_overlap(positions_xy, 30.0, 4))


def test_image_overlap_denser_is_larger():
    dense = image_overlap(raster_positions(6, step_px=10.0), 40.0, 7)
    sparse = image_overlap(raster_positions(6, step_px=25.0), 40.0, 7)

    assert dense > sparse


def test_image_overlap_single_position_is_zero():
    assert image_overlap(np.array([[3.0, 4.0]]), 10.0, 7) == 0.0


def test_group_overlap_pair():
    positions_xy = np.array([[0.0, 0.0], [6.0, 8.0]])

    overlap = group_overlap(positions_xy, np.array([[0, 1]]), diameter_px=20.0)

    assert overlap == pytest.approx(disc_overlap_fraction(10.0, 20.0))


def test_group_overlap_single_member_raises():
    with pytest.raises(InputError, match="groups"):
        group_overlap(np.zeros((3, 2)), np.array([[0], [1]]), 10.0)


def test_group_to_group_overlap_centres():
    # Group centres (1, 0) and (1, 12) lie 12 px apart.
    positions_xy = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 12.0], [2.0, 12.0]])
    groups = np.array([[0, 1], [2, 3]])

    overlap = group_to_group_overlap(positions_xy, groups, diameter_px=20.0, neighbor_count=7)

    assert overlap == pytest.approx(disc_overlap_fraction(12.0, 20.0))


def test_subsample_exact_count():
    positions_xy = raster_positions(20, step_px=10.0)
    spacing_px = 30.0
    # The raster's median nearest-neighbour distance is its step, 10 px.
    expected_count = math.floor((10.0 / spacing_px) ** 2 * len(positions_xy))

    indices = subsample_for_spacing(positions_xy, spacing_px, seed=456)

    assert indices.dtype == np.int64
    assert len(indices) == expected_count


def test_subsample_sorted_unique():
    indices = subsample_for_spacing(raster_positions(20, 10.0), 30.0, seed=456)

    assert np.all(np.diff(indices) > 0)


def test_subsample_seeded_determinism():
    positions_xy = np.random.default_rng(1).uniform(0, 400, size=(500, 2))

    first = subsample_for_spacing(positions_xy, 40.0, seed=456)
    second = subsample_for_spacing(positions_xy, 40.0, seed=456)
    other_seed = subsample_for_spacing(positions_xy, 40.0, seed=457)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_subsample_spreads_positions():
    positions_xy = np.random.default_rng(2).uniform(0, 400, size=(500, 2))
    indices = subsample_for_spacing(positions_xy, 40.0, seed=456)

    input_min_px = nearest_neighbour_distances_px(positions_xy).min()
    selected_min_px = nearest_neighbour_distances_px(positions_xy[indices]).min()

    assert selected_min_px > input_min_px
    assert selected_min_px > 10.0


def test_subsample_fine_spacing_keeps_all():
    positions_xy = raster_positions(5, step_px=10.0)

    indices = subsample_for_spacing(positions_xy, 8.0, seed=0)

    assert np.array_equal(indices, np.arange(25))


def test_subsample_keeps_at_least_one():
    indices = subsample_for_spacing(raster_positions(3, step_px=1.0), 1000.0, seed=0)

    assert len(indices) == 1


def test_subsample_bad_spacing_raises():
    with pytest.raises(InputError, match="spacing_px"):
        subsample_for_spacing(raster_positions(3, 1.0), -5.0, seed=0)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.391, 0.7, 0.95])
def test_spacing_for_overlap_inverts_disc_overlap(fraction):
    spacing_px = spacing_for_overlap_px(fraction, 26.0)
    assert disc_overlap_fraction(spacing_px, 26.0) == pytest.approx(fraction, abs=1e-9)


def test_spacing_for_overlap_zero_is_diameter():
    assert spacing_for_overlap_px(0.0, 26.0) == 26.0


def test_spacing_for_overlap_radius_case():
    # Two discs one radius apart overlap by about 0.391.
    assert spacing_for_overlap_px(0.391, 20.0) == pytest.approx(10.0, abs=0.01)


@pytest.mark.parametrize("fraction, diameter_px", [(1.0, 10.0), (-0.1, 10.0), (0.5, 0.0), (0.5, math.nan)])
def test_spacing_for_overlap_rejects_invalid(fraction, diameter_px):
    with pytest.raises(InputError):
        spacing_for_overlap_px(fraction, diameter_px)
