"""The embedded object and the scan trajectories, with the inside-the-object check."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.physics.objects import default_object, resolution_target
from fly64.physics.scan import check_scan_inside, raster_positions, spiral_positions


@pytest.mark.parametrize("size_px", [16, 17, 128, 300])
def test_default_object_shape(size_px):
    obj = default_object(size_px)
    assert obj.shape == (size_px, size_px)
    assert obj.dtype == np.complex64


def test_default_object_ranges():
    obj = default_object(256)
    assert np.abs(obj).min() >= 0.3 - 1e-6
    assert np.abs(obj).max() <= 1.0 + 1e-6
    assert np.abs(np.angle(obj)).max() <= np.pi / 2 + 1e-6


def test_default_object_phase_structure():
    phase = np.angle(default_object(256))
    assert np.ptp(phase) > 2.5
    # Bars of 2 px period leave strong pixel-to-pixel phase steps.
    assert np.abs(np.diff(phase, axis=1)).max() > 1.0


def test_default_object_deterministic():
    assert np.array_equal(default_object(64), default_object(64))


def test_default_object_too_small():
    with pytest.raises(InputError, match="at least 16"):
        default_object(8)


def test_resolution_target_finest_bars():
    target = resolution_target(128)
    first_band = target[10, 64:70]
    assert np.array_equal(first_band, [1, 0, 1, 0, 1, 0])


def test_raster_inside_object():
    positions = raster_positions(128, 32, 8.0, 1.0, 2.0, seed=0)
    check_scan_inside((128, 128), positions, 32, source="test")
    assert positions.min() >= 16 + 2.0
    assert positions.max() <= 128 - 1 - 16 - 2.0


def test_raster_grid_size():
    positions = raster_positions(128, 32, 8.0, 0.0, 2.0, seed=0)
    # Allowed centres span 18 .. 109 (91 px), so floor(91 / 8) + 1 = 12 per side.
    assert positions.shape == (144, 2)
    assert positions.dtype == np.float64


def test_raster_row_order():
    positions = raster_positions(128, 32, 8.0, 0.0, 2.0, seed=0)
    assert np.all(np.diff(positions[:12, 0]) > 0)
    assert np.all(positions[:12, 1] == positions[0, 1])
    assert positions[12, 1] > positions[0, 1]


def test_raster_jitter_seeded():
    first = raster_positions(128, 32, 8.0, 1.0, 2.0, seed=3)
    assert np.array_equal(first, raster_positions(128, 32, 8.0, 1.0, 2.0, seed=3))
    assert not np.array_equal(first, raster_positions(128, 32, 8.0, 1.0, 2.0, seed=4))


def test_raster_object_too_small():
    with pytest.raises(InputError, match="cannot hold"):
        raster_positions(32, 32, 8.0, 0.0, 2.0, seed=0)


def test_spiral_inside_object():
    positions = spiral_positions(200, 32, 10.0, 2.0, seed=1)
    check_scan_inside((200, 200), positions, 32, source="test")
    assert positions.shape[1] == 2


def test_spiral_spacing():
    positions = spiral_positions(400, 32, 12.0, 2.0, seed=1)
    distances = np.hypot(*(positions[:, None, :] - positions[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1)
    assert 0.7 * 12.0 <= np.median(nearest) <= 1.2 * 12.0


def test_spiral_density():
    positions = spiral_positions(400, 32, 12.0, 2.0, seed=1)
    side = 400 - 1 - 32 - 4.0
    expected = side**2 / (np.sqrt(3) / 2 * 12.0**2)
    assert positions.shape[0] == pytest.approx(expected, rel=0.05)


def test_check_scan_edges_accepted():
    # For N = 32 on 64 px, x may range over [16, 48) because floor(x) - 16 + 32 <= 63.
    positions = np.array([[16.0, 16.0], [47.99, 47.99]])
    check_scan_inside((64, 64), positions, 32, source="test")


@pytest.mark.parametrize("position", [[15.99, 20.0], [20.0, 15.5], [48.0, 20.0], [20.0, 50.0]])
def test_check_scan_leaves_object(position):
    with pytest.raises(InputError, match="leaves the object") as error:
        check_scan_inside((64, 64), np.array([position]), 32, source="scan.npz")
    assert "scan.npz" in str(error.value)
    assert "(64, 64)" in str(error.value)


def test_check_scan_non_finite():
    with pytest.raises(InputError, match="NaN"):
        check_scan_inside((64, 64), np.array([[np.nan, 20.0]]), 32, source="test")


def test_check_scan_bad_shape():
    with pytest.raises(InputError, match=r"expected \(n, 2\)"):
        check_scan_inside((64, 64), np.zeros((3, 3)), 32, source="test")
