"""Quality metrics of amplitude and phase: perfect scores for the ground truth, sane degradation."""

import json
import math

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.metrics.quality import compare_images, json_ready, ms_ssim_level_count, psnr_db

COMPONENTS = ("amplitude", "phase")


def make_object(size_px: int = 96, seed: int = 0) -> np.ndarray:
    """Complex object with smooth random amplitude in about [0.5, 1] and phase in about [-2, 2] rad."""
    rng = np.random.default_rng(seed)
    frequency = np.fft.fftfreq(size_px)
    outside_band = np.hypot(frequency[:, None], frequency[None, :]) > 0.15

    def smooth_field() -> np.ndarray:
        spectrum = np.fft.fft2(rng.standard_normal((size_px, size_px)))
        spectrum[outside_band] = 0
        field = np.fft.ifft2(spectrum).real
        return field / np.abs(field).max()

    return (0.75 + 0.25 * smooth_field()) * np.exp(2j * smooth_field())


def with_noise(image: np.ndarray, noise_std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return image + noise_std * (rng.standard_normal(image.shape) + 1j * rng.standard_normal(image.shape))


@pytest.mark.parametrize("component", COMPONENTS)
def test_compare_identical_is_perfect(component):
    obj = make_object().astype(np.complex64)

    metrics = compare_images(obj, obj)[component]

    assert metrics["mae"] == 0.0
    assert metrics["mse"] == 0.0
    assert metrics["psnr"] == float("inf")
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["ms_ssim"] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(metrics["frc_curve"], 1.0, atol=1e-9)
    assert metrics["frc50"] == 2.0
    assert metrics["frc17"] == 2.0


def test_compare_reports_levels_and_sigma():
    metrics = compare_images(make_object(), make_object(), ms_ssim_sigma=1.0)

    assert metrics["ms_ssim_levels"] == 5
    assert metrics["ms_ssim_sigma"] == 1.0
    assert metrics["shape"] == [96, 96]


def test_json_ready_turns_infinity_into_none():
    metrics = compare_images(make_object(), make_object())

    document = json.loads(json.dumps(json_ready(metrics), allow_nan=False))

    assert document["phase"]["psnr"] is None
    assert document["phase"]["ssim"] == pytest.approx(1.0)


@pytest.mark.parametrize("component", COMPONENTS)
def test_compare_more_noise_scores_worse(component):
    obj = make_object()
    light = compare_images(with_noise(obj, 0.02, seed=1), obj)[component]
    heavy = compare_images(with_noise(obj, 0.1, seed=2), obj)[component]

    assert light["mae"] < heavy["mae"]
    assert light["mse"] < heavy["mse"]
    assert light["psnr"] > heavy["psnr"]
    assert light["ssim"] > heavy["ssim"]
    assert light["ms_ssim"] > heavy["ms_ssim"]
    assert heavy["ssim"] < 0.99


def test_compare_phase_across_pi_has_no_jump():
    phase_rad = np.full((32, 32), math.pi - 0.01)
    phase_rad[:, 16:] = math.pi - 0.03
    reference = np.exp(1j * phase_rad)
    reconstruction = reference * np.exp(0.02j)

    metrics = compare_images(reconstruction, reference)["phase"]

    assert metrics["mae"] == pytest.approx(0.02, abs=1e-9)


def test_compare_amplitude_range_of_reference():
    obj = make_object()

    metrics = compare_images(obj, obj)

    assert metrics["amplitude"]["data_range"] == pytest.approx(np.ptp(np.abs(obj)))
    assert metrics["phase"]["data_range"] == pytest.approx(np.ptp(np.angle(obj)))


def test_compare_constant_amplitude_falls_back_to_maximum():
    phase_only = np.exp(1j * np.angle(make_object()))
    reference = phase_only / np.abs(phase_only)

    metrics = compare_images(reference * 0.99, reference)

    assert metrics["amplitude"]["data_range"] == pytest.approx(1.0)
    assert metrics["amplitude"]["psnr"] == pytest.approx(40.0, abs=1e-6)


def test_psnr_formula():
    assert psnr_db(0.01, 2.0) == pytest.approx(10 * math.log10(4 / 0.01))


def test_ms_ssim_small_image_uses_fewer_levels():
    obj = make_object(20)

    metrics = compare_images(obj, obj)

    assert ms_ssim_level_count((20, 20)) == 3
    assert metrics["ms_ssim_levels"] == 3
    assert metrics["phase"]["ms_ssim"] == pytest.approx(1.0, abs=1e-9)


def test_ms_ssim_level_count_full_at_48():
    assert ms_ssim_level_count((48, 300)) == 5


def test_compare_rejects_shape_mismatch():
    with pytest.raises(InputError, match="equal shapes"):
        compare_images(np.ones((16, 16), complex), np.ones((16, 15), complex))


def test_compare_rejects_nan():
    image = np.ones((16, 16), complex)
    image[2, 2] = np.nan

    with pytest.raises(InputError, match="NaN"):
        compare_images(image, np.ones((16, 16), complex))


def test_compare_rejects_negative_sigma():
    image = np.ones((16, 16), complex)

    with pytest.raises(InputError, match="ms_ssim_sigma"):
        compare_images(image, image, ms_ssim_sigma=-1.0)
