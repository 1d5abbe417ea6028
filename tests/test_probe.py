"""Probe reading, padding, normalisation, the modelled default probe and its footprint."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.physics.probe import (
    default_probe,
    load_probe,
    normalise_probe,
    pad_probe,
    probe_footprint_mask,
)


def write_probe(path, **arrays):
    np.savez(path, **arrays)
    return path


def power_diameter_px(probe, fraction):
    """Diameter of the disc around the power centroid that contains `fraction` of the power."""
    power = np.abs(probe) ** 2
    rows, columns = np.indices(power.shape)
    centre_row = (power * rows).sum() / power.sum()
    centre_column = (power * columns).sum() / power.sum()
    radius = np.hypot(rows - centre_row, columns - centre_column).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(power.ravel()[order]) / power.sum()
    return 2 * radius[order][np.searchsorted(cumulative, fraction)]


def test_load_probe_real_file(fly64_probe_path):
    probe = load_probe(fly64_probe_path, 64)
    assert probe.shape == (64, 64)
    assert probe.dtype == np.complex64
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-5)


def test_load_probe_real_file_padded(fly64_probe_path):
    probe = load_probe(fly64_probe_path, 128)
    assert probe.shape == (128, 128)
    assert np.sum(np.abs(probe[32:96, 32:96]) ** 2) == pytest.approx(1.0, rel=1e-5)
    assert not np.any(probe[:32])


def test_load_probe_normalises(tmp_path):
    path = write_probe(tmp_path / "probe.npz", probeGuess=np.full((8, 8), 3 + 4j, np.complex64))
    probe = load_probe(path, 8)
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(probe, (3 + 4j) / 5 / 8)


def test_pad_probe_centred():
    padded = pad_probe(np.ones((4, 4), np.complex64), 8)
    assert padded.dtype == np.complex64
    assert np.array_equal(np.nonzero(padded.any(axis=0))[0], np.arange(2, 6))
    assert np.array_equal(np.nonzero(padded.any(axis=1))[0], np.arange(2, 6))


def test_pad_probe_odd_size():
    padded = pad_probe(np.ones((3, 3), np.complex64), 8)
    assert np.array_equal(np.nonzero(padded.any(axis=0))[0], np.arange(2, 5))


def test_normalise_probe_unit_power():
    probe = normalise_probe(np.arange(16, dtype=np.complex64).reshape(4, 4))
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    "case, arrays, fragment",
    [
        ("no key", {"other": np.ones((8, 8), np.complex64)}, "missing key probeGuess"),
        ("real", {"probeGuess": np.ones((8, 8), np.float32)}, "real dtype"),
        ("three axes", {"probeGuess": np.ones((2, 8, 8), np.complex64)}, "square 2-D"),
        ("not square", {"probeGuess": np.ones((8, 6), np.complex64)}, "square 2-D"),
        ("larger than N", {"probeGuess": np.ones((16, 16), np.complex64)}, "larger than the patch size"),
        ("non-finite", {"probeGuess": np.full((8, 8), np.nan, np.complex64)}, "NaN or infinite"),
        ("all zeros", {"probeGuess": np.zeros((8, 8), np.complex64)}, "all zeros"),
    ],
)
def test_load_probe_rejects(tmp_path, case, arrays, fragment):
    path = write_probe(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as error:
        load_probe(path, 8)
    assert str(path) in str(error.value)
    assert fragment in str(error.value)


def test_load_probe_missing_file(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(InputError, match="probe file not found") as error:
        load_probe(path, 8)
    assert str(path) in str(error.value)


def test_load_probe_unreadable_file(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("not an archive")
    with pytest.raises(InputError, match="not a readable NPZ") as error:
        load_probe(path, 8)
    assert str(path) in str(error.value)


def test_load_probe_pickled_array(tmp_path):
    path = write_probe(tmp_path / "pickled.npz", probeGuess=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="not a readable NPZ"):
        load_probe(path, 8)


@pytest.mark.parametrize("patch_size", [32, 64, 128])
def test_default_probe_shape(patch_size):
    probe = default_probe(patch_size)
    assert probe.shape == (patch_size, patch_size)
    assert probe.dtype == np.complex64
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-5)


def test_default_probe_deterministic():
    assert np.array_equal(default_probe(64), default_probe(64))


@pytest.mark.parametrize("patch_size", [64, 128])
def test_default_probe_footprint(patch_size):
    diameter_px = power_diameter_px(default_probe(patch_size), 0.86)
    assert diameter_px >= patch_size / 3
    assert diameter_px <= patch_size / 2


def test_default_probe_has_structured_phase():
    probe = default_probe(64)
    phase = np.angle(probe[probe_footprint_mask(probe)])
    assert np.std(phase) > 0.5


def test_footprint_mask_threshold():
    probe = np.zeros((4, 4), np.complex64)
    probe[1, 1] = 10
    probe[2, 2] = 1j
    probe[3, 3] = 0.5
    mask = probe_footprint_mask(probe, amplitude_fraction=0.1)
    assert mask.dtype == bool
    assert np.array_equal(np.argwhere(mask), [[1, 1], [2, 2]])
