"""The far field, dose scaling, Poisson noise and determinism of the simulation."""

import numpy as np
import pytest
import scipy.fft

from fly64.errors import InputError
from fly64.physics.forward import _spectrum_shifting_probe, far_field, simulate_diffraction
from fly64.physics.objects import default_object
from fly64.physics.patches import extract_patches
from fly64.physics.probe import default_probe
from fly64.physics.scan import raster_positions

N = 32
OBJECT_SIZE_PX = 128


@pytest.fixture(scope="module")
def scene():
    obj = default_object(OBJECT_SIZE_PX)
    probe = default_probe(N)
    positions = raster_positions(OBJECT_SIZE_PX, N, 5.0, 1.0, 2.0, seed=0)
    return obj, probe, positions


def test_far_field_parseval():
    rng = np.random.default_rng(0)
    waves = (rng.standard_normal((5, 16, 16)) + 1j * rng.standard_normal((5, 16, 16))).astype(np.complex64)
    spectrum = far_field(waves)
    assert spectrum.dtype == np.complex64
    assert np.allclose(np.sum(np.abs(spectrum) ** 2, axis=(1, 2)), np.sum(np.abs(waves) ** 2, axis=(1, 2)), rtol=1e-5)


def test_far_field_zero_frequency_centred():
    waves = np.ones((1, 16, 16), np.complex64)
    spectrum = far_field(waves)
    assert abs(spectrum[0, 8, 8]) == pytest.approx(16.0, rel=1e-6)
    assert np.abs(spectrum[0]).sum() == pytest.approx(16.0, rel=1e-6)


def test_simulate_outputs(scene):
    obj, probe, positions = scene
    simulation = simulate_diffraction(obj, probe, positions, 1e4, seed=1, chunk_patterns=64)
    assert simulation.amplitude.shape == (positions.shape[0], N, N)
    assert simulation.amplitude.dtype == np.float32
    assert simulation.patches.dtype == np.complex64
    assert np.array_equal(simulation.patches, extract_patches(obj, positions, N))


def test_simulate_amplitudes_are_root_counts(scene):
    obj, probe, positions = scene
    simulation = simulate_diffraction(obj, probe, positions[:20], 1e3, seed=1)
    counts = np.square(simulation.amplitude.astype(np.float64))
    assert np.allclose(counts, np.round(counts), atol=1e-3)
    assert np.array_equal(np.round(counts).sum(axis=(1, 2)), simulation.photons_per_pattern)


@pytest.mark.parametrize("dose_photons", [1e3, 1e5])
def test_simulate_dose_scaling(scene, dose_photons):
    obj, probe, positions = scene
    simulation = simulate_diffraction(obj, probe, positions, dose_photons, seed=2, chunk_patterns=100)
    deviation = abs(simulation.mean_photons_per_pattern - dose_photons)
    assert deviation <= 4 * simulation.photons_standard_error
    assert simulation.nominal_dose_photons == dose_photons


def test_simulate_scale_factor(scene):
    obj, probe, positions = scene
    simulation = simulate_diffraction(obj, probe, positions, 1e4, seed=2)
    exit_power = np.sum(np.abs(simulation.patches * probe) ** 2, dtype=np.float64)
    assert simulation.scale_factor * exit_power / positions.shape[0] == pytest.approx(1e4, rel=1e-4)


def test_simulate_noise_follows_poisson(scene):
    obj, probe, positions = scene
    simulation = simulate_diffraction(obj, probe, positions, 1e4, seed=3)
    expected = simulation.scale_factor * np.abs(far_field(simulation.patches * probe)) ** 2
    counts = np.square(simulation.amplitude.astype(np.float64))
    bright = expected > 50
    # Poisson counts have variance equal to their mean, so these residuals have unit variance.
    residuals = (counts[bright] - expected[bright]) / np.sqrt(expected[bright])
    assert abs(residuals.mean()) < 0.05
    assert residuals.std() == pytest.approx(1.0, abs=0.05)


def test_simulate_same_seed_same_arrays(scene):
    obj, probe, positions = scene
    first = simulate_diffraction(obj, probe, positions, 1e4, seed=5, chunk_patterns=50)
    second = simulate_diffraction(obj, probe, positions, 1e4, seed=5, chunk_patterns=50)
    assert np.array_equal(first.amplitude, second.amplitude)


def test_simulate_workers_same_arrays(scene):
    obj, probe, positions = scene
    single = simulate_diffraction(obj, probe, positions, 1e4, seed=5, chunk_patterns=50, workers=1)
    three = simulate_diffraction(obj, probe, positions, 1e4, seed=5, chunk_patterns=50, workers=3)
    assert np.array_equal(single.amplitude, three.amplitude)
    assert single.scale_factor == three.scale_factor


def test_simulate_different_seed(scene):
    obj, probe, positions = scene
    first = simulate_diffraction(obj, probe, positions[:30], 1e4, seed=5)
    second = simulate_diffraction(obj, probe, positions[:30], 1e4, seed=6)
    assert not np.array_equal(first.amplitude, second.amplitude)


def test_simulate_different_doses(scene):
    obj, probe, positions = scene
    low = simulate_diffraction(obj, probe, positions[:30], 1e3, seed=5)
    high = simulate_diffraction(obj, probe, positions[:30], 1e4, seed=5)
    assert not np.array_equal(low.amplitude, high.amplitude)
    assert high.scale_factor == pytest.approx(10 * low.scale_factor)


@pytest.mark.parametrize("dose_photons", [0.0, -5.0, float("nan")])
def test_simulate_rejects_dose(scene, dose_photons):
    obj, probe, positions = scene
    with pytest.raises(InputError, match="must be a positive number"):
        simulate_diffraction(obj, probe, positions, dose_photons, seed=0)


def test_simulate_rejects_scan_outside(scene):
    obj, probe, _ = scene
    with pytest.raises(InputError, match="leaves the object"):
        simulate_diffraction(obj, probe, np.array([[120.0, 60.0]]), 1e3, seed=0)


def test_simulate_rejects_zero_object(scene):
    _, probe, positions = scene
    with pytest.raises(InputError, match="every exit wave is zero"):
        simulate_diffraction(
            np.zeros((OBJECT_SIZE_PX, OBJECT_SIZE_PX), np.complex64), probe, positions[:4], 1e3, seed=0
        )


def test_shifting_probe_matches_fftshift():
    rng = np.random.default_rng(7)
    patches = (rng.standard_normal((3, 16, 16)) + 1j * rng.standard_normal((3, 16, 16))).astype(np.complex64)
    probe = default_probe(16)
    shifted = scipy.fft.fft2(patches * _spectrum_shifting_probe(probe), norm="ortho")
    assert np.allclose(np.abs(shifted) ** 2, np.abs(far_field(patches * probe)) ** 2, atol=1e-6)


def test_simulate_odd_patch_size(scene):
    obj, _, positions = scene
    probe = np.ones((31, 31), np.complex64)
    simulation = simulate_diffraction(obj, probe, positions, 1e4, seed=1)
    assert simulation.amplitude.shape == (positions.shape[0], 31, 31)
    assert abs(simulation.mean_photons_per_pattern - 1e4) <= 4 * simulation.photons_standard_error


def test_simulate_rejects_negative_workers(scene):
    obj, probe, positions = scene
    with pytest.raises(InputError, match="workers = -1"):
        simulate_diffraction(obj, probe, positions, 1e3, seed=0, workers=-1)
