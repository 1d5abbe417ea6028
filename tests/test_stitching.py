"""Tests of the central-crop stitching of predicted patches."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.inference.stitching import (
    PatchStitcher,
    central_window,
    stitch_patches_windowed,
)
from fly64.physics.patches import extract_patches

PATCH_SIZE = 16
OBJECT_SIDE = 64


def random_object(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amplitude = rng.uniform(0.3, 1.0, (OBJECT_SIDE, OBJECT_SIDE))
    phase = rng.uniform(-np.pi / 2, np.pi / 2, (OBJECT_SIDE, OBJECT_SIDE))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def smooth_object() -> np.ndarray:
    rows, columns = np.indices((OBJECT_SIDE, OBJECT_SIDE)) / OBJECT_SIDE
    amplitude = 0.7 + 0.2 * np.sin(2 * np.pi * rows) * np.cos(2 * np.pi * columns)
    phase = 0.8 * np.cos(2 * np.pi * (rows + 0.5 * columns))
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def raster_positions(step_px: float, jitter_px: float = 0.0, seed: int = 0) -> np.ndarray:
    centres = np.arange(12.0, OBJECT_SIDE - 12.0, step_px)
    x, y = np.meshgrid(centres, centres)
    positions = np.stack([x.ravel(), y.ravel()], axis=1)
    rng = np.random.default_rng(seed)
    return positions + rng.uniform(-jitter_px, jitter_px, positions.shape)


def test_window_centre_is_one():
    window = central_window(PATCH_SIZE)
    centre = slice(PATCH_SIZE // 2 - PATCH_SIZE // 4, PATCH_SIZE // 2 + PATCH_SIZE // 4 + 1)
    assert np.all(window[centre, centre] == 1.0)


def test_window_edge_is_zero():
    window = central_window(PATCH_SIZE)
    assert window[0, PATCH_SIZE // 2] == pytest.approx(0.0, abs=1e-12)


def test_window_tapers_monotonically():
    profile = central_window(PATCH_SIZE)[PATCH_SIZE // 2, : PATCH_SIZE // 2 + 1]
    assert np.all(np.diff(profile) >= 0)


def test_window_rejects_bad_fraction():
    with pytest.raises(InputError, match="central_fraction"):
        central_window(PATCH_SIZE, central_fraction=1.5)


def test_stitch_integer_positions_recovers_object():
    obj = random_object()
    positions = raster_positions(step_px=4.0)
    patches = extract_patches(obj, positions, PATCH_SIZE)
    stitched = stitch_patches_windowed(obj.shape, patches, positions)
    covered = stitched.coverage >= 1e-3
    np.testing.assert_allclose(stitched.object[covered], obj[covered], atol=1e-5)


def test_stitch_covers_scanned_interior():
    positions = raster_positions(step_px=4.0)
    patches = extract_patches(random_object(), positions, PATCH_SIZE)
    stitched = stitch_patches_windowed((OBJECT_SIDE, OBJECT_SIDE), patches, positions)
    interior = (slice(8, OBJECT_SIDE - 16), slice(8, OBJECT_SIDE - 16))
    assert np.all(stitched.coverage[interior] >= 1e-3)


def test_stitch_subpixel_positions_close_to_smooth_object():
    obj = smooth_object()
    positions = raster_positions(step_px=4.0, jitter_px=0.5, seed=1)
    patches = extract_patches(obj, positions, PATCH_SIZE)
    stitched = stitch_patches_windowed(obj.shape, patches, positions)
    interior = (slice(12, OBJECT_SIDE - 20), slice(12, OBJECT_SIDE - 20))
    np.testing.assert_allclose(stitched.object[interior], obj[interior], atol=5e-3)


def test_stitch_fills_uncovered_pixels_with_one():
    positions = np.array([[32.0, 32.0]])
    patches = extract_patches(random_object(), positions, PATCH_SIZE)
    stitched = stitch_patches_windowed((OBJECT_SIDE, OBJECT_SIDE), patches, positions)
    assert np.all(stitched.object[:10, :] == 1.0 + 0.0j)


def test_stitch_output_dtypes():
    positions = raster_positions(step_px=8.0)
    patches = extract_patches(random_object(), positions, PATCH_SIZE)
    stitched = stitch_patches_windowed((OBJECT_SIDE, OBJECT_SIDE), patches, positions)
    assert (stitched.object.dtype, stitched.coverage.dtype) == (np.complex64, np.float32)


def test_stitcher_batches_equal_single_call():
    positions = raster_positions(step_px=4.0, jitter_px=0.5, seed=2)
    patches = extract_patches(random_object(), positions, PATCH_SIZE)
    stitcher = PatchStitcher((OBJECT_SIDE, OBJECT_SIDE), PATCH_SIZE)
    for start in range(0, positions.shape[0], 7):
        stitcher.add(patches[start : start + 7], positions[start : start + 7])
    batched = stitcher.result()
    single = stitch_patches_windowed((OBJECT_SIDE, OBJECT_SIDE), patches, positions)
    np.testing.assert_allclose(batched.object, single.object, atol=1e-6)


def test_stitcher_rejects_wrong_patch_size():
    stitcher = PatchStitcher((OBJECT_SIDE, OBJECT_SIDE), PATCH_SIZE)
    with pytest.raises(InputError, match="expected"):
        stitcher.add(np.ones((2, 8, 8), dtype=np.complex64), np.full((2, 2), 32.0))


def test_stitcher_rejects_nonfinite_patches():
    stitcher = PatchStitcher((OBJECT_SIDE, OBJECT_SIDE), PATCH_SIZE)
    patches = np.full((1, PATCH_SIZE, PATCH_SIZE), np.nan, dtype=np.complex64)
    with pytest.raises(InputError, match="NaN"):
        stitcher.add(patches, np.array([[32.0, 32.0]]))


def test_stitcher_rejects_patch_outside_object():
    stitcher = PatchStitcher((OBJECT_SIDE, OBJECT_SIDE), PATCH_SIZE)
    with pytest.raises(InputError):
        stitcher.add(np.ones((1, PATCH_SIZE, PATCH_SIZE), dtype=np.complex64), np.array([[2.0, 32.0]]))
