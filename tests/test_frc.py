"""Fourier ring correlation and the resolution at the 0.5 and 1/7 thresholds."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.metrics.frc import THRESHOLD_HALF, THRESHOLD_ONE_SEVENTH, fourier_ring_correlation, frc_resolution


def pink_noise_image(size_px: int, seed: int) -> np.ndarray:
    """Real image whose power falls as 1 / frequency^2, like natural images."""
    rng = np.random.default_rng(seed)
    frequency = np.fft.fftfreq(size_px)
    radius = np.hypot(frequency[:, None], frequency[None, :])
    radius[0, 0] = 1.0
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal((size_px, size_px))) / radius).real


def test_frc_self_is_one():
    image = pink_noise_image(64, seed=0)

    _, frc = fourier_ring_correlation(image, image)

    np.testing.assert_allclose(frc, 1.0, atol=1e-12)


def test_frc_self_complex_is_one():
    image = np.exp(1j * pink_noise_image(48, seed=1))

    _, frc = fourier_ring_correlation(image, image)

    np.testing.assert_allclose(frc, 1.0, atol=1e-12)


def test_frc_constant_images_is_one():
    image = np.full((32, 32), 0.7)

    _, frc = fourier_ring_correlation(image, image)

    np.testing.assert_allclose(frc, 1.0, atol=1e-12)


def test_frc_frequency_axis_non_square():
    frequency, frc = fourier_ring_correlation(np.ones((40, 64)), np.ones((40, 64)))

    assert frequency.shape == (21,)
    assert frc.shape == (21,)
    assert frequency[0] == 0.0
    assert frequency[-1] == pytest.approx(0.5)


def test_frc_independent_noise_is_low():
    rng = np.random.default_rng(2)

    _, frc = fourier_ring_correlation(rng.standard_normal((128, 128)), rng.standard_normal((128, 128)))

    assert np.mean(np.abs(frc[4:])) < 0.1


def test_frc_noisy_copy_decays():
    rng = np.random.default_rng(3)
    signal = pink_noise_image(128, seed=4)
    noise_std = signal.std()
    noisy_a = signal + noise_std * rng.standard_normal(signal.shape)
    noisy_b = signal + noise_std * rng.standard_normal(signal.shape)

    frequency, frc = fourier_ring_correlation(noisy_a, noisy_b)

    assert np.mean(frc[1:6]) > 0.9
    assert np.mean(frc[-10:]) < 0.3
    assert 0.02 < frc_resolution(frequency, frc, THRESHOLD_HALF) < 0.45


def test_frc_resolution_interpolates():
    frequency = np.array([0.0, 0.1, 0.2, 0.3])
    frc = np.array([1.0, 0.8, 0.4, 0.1])

    assert frc_resolution(frequency, frc, THRESHOLD_HALF) == pytest.approx(0.175)


def test_frc_resolution_one_seventh():
    frequency = np.array([0.0, 0.1, 0.2, 0.3])
    frc = np.array([1.0, 0.8, 0.4, 0.1])
    expected = 0.2 + (0.4 - 1 / 7) / (0.4 - 0.1) * 0.1

    assert frc_resolution(frequency, frc, THRESHOLD_ONE_SEVENTH) == pytest.approx(expected)


def test_frc_resolution_first_crossing_wins():
    frequency = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    frc = np.array([1.0, 0.9, 0.3, 0.9, 0.2])

    assert frc_resolution(frequency, frc, THRESHOLD_HALF) == pytest.approx(0.1 + 0.1 * 0.4 / 0.6)


def test_frc_resolution_below_at_first_ring_is_zero():
    """No interpolation towards the zero-frequency ring, which would give a resolution coarser than the image."""
    frequency = np.array([0.0, 0.1, 0.2, 0.3])
    frc = np.array([1.0, 0.3, 0.2, 0.1])

    assert frc_resolution(frequency, frc, THRESHOLD_HALF) == 0.0


def test_frc_resolution_never_crossed_is_nyquist():
    frequency = np.linspace(0.0, 0.5, 11)

    assert frc_resolution(frequency, np.ones(11), THRESHOLD_HALF) == 0.5


def test_frc_resolution_rejects_bad_threshold():
    with pytest.raises(InputError, match="threshold"):
        frc_resolution(np.array([0.0, 0.5]), np.array([1.0, 1.0]), 1.5)


def test_frc_rejects_shape_mismatch():
    with pytest.raises(InputError, match="equal shapes"):
        fourier_ring_correlation(np.ones((16, 16)), np.ones((16, 18)))


def test_frc_rejects_nan():
    image = np.ones((16, 16))
    image[3, 3] = np.nan

    with pytest.raises(InputError, match="NaN"):
        fourier_ring_correlation(image, np.ones((16, 16)))
