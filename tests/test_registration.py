"""Registration: sub-pixel shifts, phase offset and ramp removal, scanned region and alignment."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.metrics.registration import (
    CropBox,
    align_to_reference,
    apply_shift,
    bounding_box,
    fit_phase_ramp,
    register_shift,
    remove_phase_offset_and_ramp,
    scanned_region_mask,
)


def smooth_object(size_px: int, seed: int = 0, cutoff_cycles_per_px: float = 0.12) -> np.ndarray:
    """Complex object with amplitude in about [0.6, 1] and phase in about [-1.5, 1.5] rad, band-limited."""
    rng = np.random.default_rng(seed)
    frequency = np.fft.fftfreq(size_px)
    outside_band = np.hypot(frequency[:, None], frequency[None, :]) > cutoff_cycles_per_px

    def band_limited_field() -> np.ndarray:
        spectrum = np.fft.fft2(rng.standard_normal((size_px, size_px)))
        spectrum[outside_band] = 0
        field = np.fft.ifft2(spectrum).real
        return field / np.abs(field).max()

    amplitude = 0.8 + 0.2 * band_limited_field()
    phase = 1.5 * band_limited_field()
    return amplitude * np.exp(1j * phase)


def centred_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(shape[0]) - (shape[0] - 1) / 2
    columns = np.arange(shape[1]) - (shape[1] - 1) / 2
    return rows[:, None] * np.ones(shape), columns[None, :] * np.ones(shape)


@pytest.mark.parametrize("true_shift", [(0.37, -1.23), (2.71, 0.05), (-0.5, 0.5)])
def test_register_shift_subpixel(true_shift):
    obj = smooth_object(192)
    moved = apply_shift(obj, true_shift)
    interior = (slice(32, 160), slice(40, 150))

    dy, dx = register_shift(obj[interior], moved[interior])

    assert abs(dy + true_shift[0]) < 0.05
    assert abs(dx + true_shift[1]) < 0.05


def test_register_shift_ignores_phase_offset():
    obj = smooth_object(160, seed=1)
    moved = apply_shift(obj, (0.8, -0.3)) * np.exp(2.5j)
    interior = (slice(24, 136), slice(24, 136))

    dy, dx = register_shift(obj[interior], moved[interior])

    assert abs(dy + 0.8) < 0.05
    assert abs(dx - 0.3) < 0.05


def test_register_shift_rejects_shape_mismatch():
    with pytest.raises(InputError, match="equal shapes"):
        register_shift(np.ones((16, 16)), np.ones((16, 17)))


def test_apply_shift_integer_matches_roll():
    obj = smooth_object(96, seed=2)

    shifted = apply_shift(obj, (2.0, -3.0))

    interior = (slice(8, 88), slice(8, 88))
    np.testing.assert_allclose(shifted[interior], np.roll(obj, (2, -3), axis=(0, 1))[interior], atol=1e-9)


def test_apply_shift_round_trip():
    obj = smooth_object(128, seed=3)

    back = apply_shift(apply_shift(obj, (0.3, 1.7)), (-0.3, -1.7))

    interior = (slice(16, 112), slice(16, 112))
    np.testing.assert_allclose(back[interior], obj[interior], atol=2e-3)


def test_apply_shift_real_stays_real():
    shifted = apply_shift(np.ones((16, 16), dtype=np.float32), (0.5, 0.5))

    assert shifted.dtype == np.float64


def test_fit_phase_ramp_recovers_parameters():
    reference = smooth_object(128, seed=4)
    y, x = centred_grid(reference.shape)
    reconstruction = reference * np.exp(1j * (1.3 + 0.02 * x - 0.035 * y))

    ramp = fit_phase_ramp(reconstruction, reference)

    assert ramp.offset_rad == pytest.approx(1.3, abs=1e-6)
    assert ramp.slope_x_rad_per_px == pytest.approx(0.02, abs=1e-8)
    assert ramp.slope_y_rad_per_px == pytest.approx(-0.035, abs=1e-8)


def test_remove_phase_ramp_many_wraps():
    reference = smooth_object(128, seed=5)
    y, x = centred_grid(reference.shape)
    # 0.3 rad/px over 128 px wraps the phase difference about six times.
    reconstruction = reference * np.exp(1j * (-2.9 + 0.3 * x + 0.1 * y))

    corrected = remove_phase_offset_and_ramp(reconstruction, reference)

    np.testing.assert_allclose(corrected, reference, atol=1e-6)


def test_remove_phase_ramp_ignores_outside_mask():
    reference = smooth_object(96, seed=6)
    y, x = centred_grid(reference.shape)
    reconstruction = reference * np.exp(1j * (0.7 - 0.01 * x))
    mask = np.zeros(reference.shape, dtype=bool)
    mask[20:76, 20:76] = True
    reconstruction[~mask] = np.random.default_rng(0).standard_normal(int((~mask).sum()))

    corrected = remove_phase_offset_and_ramp(reconstruction, reference, mask)

    np.testing.assert_allclose(corrected[mask], reference[mask], atol=1e-6)


def test_fit_phase_ramp_rejects_empty_mask():
    image = np.ones((8, 8), dtype=np.complex64)

    with pytest.raises(InputError, match="no pixel"):
        fit_phase_ramp(image, image, np.zeros((8, 8), dtype=bool))


def test_scanned_region_mask_union_of_patches():
    positions_xy = np.array([[10.0, 10.0], [20.0, 12.0]])

    mask = scanned_region_mask((40, 40), positions_xy, patch_size=8)

    expected = np.zeros((40, 40), dtype=bool)
    expected[6:14, 6:14] = True
    expected[8:16, 16:24] = True
    np.testing.assert_array_equal(mask, expected)


def test_scanned_region_mask_margin_erodes():
    positions_xy = np.array([[20.0, 20.0]])

    mask = scanned_region_mask((40, 40), positions_xy, patch_size=10, margin_px=2)

    assert bounding_box(mask) == CropBox(17, 23, 17, 23)


def test_bounding_box_rejects_empty_mask():
    with pytest.raises(InputError, match="no pixel"):
        bounding_box(np.zeros((5, 5), dtype=bool))


def test_align_to_reference_recovers_truth():
    reference = smooth_object(160, seed=7)
    y, x = centred_grid(reference.shape)
    reconstruction = apply_shift(reference, (0.6, -0.4)) * np.exp(1j * (0.5 + 0.01 * x - 0.02 * y))
    scanned = np.zeros(reference.shape, dtype=bool)
    scanned[10:150, 10:150] = True
    # Outside the scan a reconstruction keeps its initial value.
    reconstruction[~scanned] = 1.0
    region = np.zeros(reference.shape, dtype=bool)
    region[30:130, 30:130] = True

    aligned, reference_crop, info = align_to_reference(reconstruction, reference, region)

    assert info["crop_box"] == [30, 130, 30, 130]
    assert info["shift_px"][0] == pytest.approx(-0.6, abs=0.02)
    assert info["shift_px"][1] == pytest.approx(0.4, abs=0.02)
    np.testing.assert_array_equal(reference_crop, reference[30:130, 30:130])
    assert np.max(np.abs(aligned - reference_crop)) < 0.01


def test_align_to_reference_accepts_crop_box():
    reference = smooth_object(64, seed=8)

    aligned, reference_crop, info = align_to_reference(reference, reference, CropBox(8, 56, 4, 60))

    assert aligned.shape == (48, 56)
    assert np.max(np.abs(aligned - reference_crop)) < 1e-6


def test_align_to_reference_rejects_shape_mismatch():
    with pytest.raises(InputError, match="equal shapes"):
        align_to_reference(np.ones((32, 32), complex), np.ones((32, 30), complex), CropBox(0, 8, 0, 8))


def test_align_to_reference_rejects_box_outside():
    image = np.ones((32, 32), complex)

    with pytest.raises(InputError, match="does not fit"):
        align_to_reference(image, image, CropBox(0, 40, 0, 8))
