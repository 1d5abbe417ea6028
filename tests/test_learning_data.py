"""Framework-neutral learning pieces: training arrays, normalisation, split, spec, patch correlations."""

import numpy as np
import pytest

from fly64.errors import InputError, JobFailedError
from fly64.learning.data import (
    build_training_arrays,
    canvas_pad_px,
    normalisation_factor,
    split_validation,
)
from fly64.learning.evaluation import (
    assert_not_constant,
    footprint_mask,
    patch_correlations,
)
from fly64.learning.spec import ModelSpec
from fly64.learning.synthetic import make_synthetic_dataset

N = 32


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic_dataset(patch_size=N, scan_side=6, step_px=8, dose_photons=1e4, seed=0)


def test_arrays_gs1_shapes(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    n = dataset.n_patterns
    assert arrays.amplitude.shape == (n, 1, N, N)
    assert arrays.amplitude.dtype == np.float32
    assert arrays.counts.shape == (n, 1, N, N)
    assert arrays.offsets_px.shape == (n, 1, 2)
    assert arrays.patches.dtype == np.complex64
    assert arrays.indices.tolist() == [[index] for index in range(n)]


def test_arrays_gs1_normalised(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    assert np.mean(arrays.amplitude.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)


def test_arrays_counts_are_squared_amplitudes(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    np.testing.assert_allclose(arrays.counts[:, 0], dataset.diffraction**2, rtol=1e-6)
    np.testing.assert_allclose(arrays.amplitude * arrays.norm_factor, arrays.counts**0.5, rtol=1e-5)


def test_arrays_gs1_offsets_zero(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    assert not np.any(arrays.offsets_px)
    assert canvas_pad_px(arrays.offsets_px) == 0


def test_arrays_gs2_groups(dataset):
    arrays = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=1)
    assert arrays.amplitude.shape == (dataset.n_patterns, 4, N, N)
    assert arrays.offsets_px.shape == (dataset.n_patterns, 4, 2)
    np.testing.assert_allclose(arrays.offsets_px.sum(axis=1), 0.0, atol=1e-4)
    members_xy = dataset.positions_xy[arrays.indices]
    expected = members_xy - members_xy.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(arrays.offsets_px, expected, atol=1e-4)


def test_arrays_gs2_patches_follow_indices(dataset):
    arrays = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=1)
    np.testing.assert_array_equal(arrays.patches, dataset.patches[arrays.indices])
    np.testing.assert_array_equal(arrays.counts, dataset.diffraction[arrays.indices] ** 2)


def test_arrays_gs2_seeded(dataset):
    first = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=5)
    second = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=5)
    np.testing.assert_array_equal(first.indices, second.indices)


def test_arrays_given_norm_factor(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1, norm_factor=2.0)
    np.testing.assert_allclose(arrays.amplitude[:, 0], dataset.diffraction / 2.0, rtol=1e-6)
    assert arrays.norm_factor == 2.0


def test_arrays_max_groups_subset(dataset):
    arrays = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=1, max_groups=10)
    again = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=1, max_groups=10)
    full = build_training_arrays(dataset, gridsize=2, neighbor_count=7, seed=1)
    assert arrays.n_groups == 10
    np.testing.assert_array_equal(arrays.indices, again.indices)
    full_rows = {tuple(row) for row in full.indices.tolist()}
    assert all(tuple(row) in full_rows for row in arrays.indices.tolist())


def test_arrays_rejects_small_neighbor_count(dataset):
    with pytest.raises(InputError, match="neighbor_count"):
        build_training_arrays(dataset, gridsize=2, neighbor_count=3, seed=1)


def test_norm_factor_value():
    diffraction = np.full((3, 8, 8), 2.0, dtype=np.float32)
    # 4 photons per pixel, 256 per pattern: f = sqrt(256) / 8 = 2.
    assert normalisation_factor(diffraction) == pytest.approx(2.0)


def test_norm_factor_rejects_dark_data():
    with pytest.raises(InputError, match="no photons"):
        normalisation_factor(np.zeros((2, 8, 8), dtype=np.float32))


def test_split_sizes_and_disjoint(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    train, validation = split_validation(arrays, 0.25, seed=3)
    assert validation.n_groups == round(0.25 * arrays.n_groups)
    assert train.n_groups + validation.n_groups == arrays.n_groups
    assert not set(train.indices[:, 0]) & set(validation.indices[:, 0])


def test_split_seeded(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    first = split_validation(arrays, 0.25, seed=3)[1]
    second = split_validation(arrays, 0.25, seed=3)[1]
    other = split_validation(arrays, 0.25, seed=4)[1]
    np.testing.assert_array_equal(first.indices, second.indices)
    assert not np.array_equal(first.indices, other.indices)


def test_split_zero_fraction(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    train, validation = split_validation(arrays, 0.0, seed=3)
    assert train.n_groups == arrays.n_groups
    assert validation.n_groups == 0


def test_split_rejects_fraction_one(dataset):
    arrays = build_training_arrays(dataset, gridsize=1, neighbor_count=7, seed=1)
    with pytest.raises(InputError, match="validation fraction"):
        split_validation(arrays, 1.0, seed=3)


def test_canvas_pad_rounds_up():
    offsets = np.array([[[3.2, -1.0], [-3.2, 1.0]]], dtype=np.float32)
    assert canvas_pad_px(offsets) == 5


def test_spec_reference_size():
    # Encoder 1,144,256 plus two decoders of 553,921 weights and biases each.
    assert ModelSpec(64, 1, "pinn", "reference").parameter_count() == 2_252_098


def test_spec_compact_smaller():
    compact = ModelSpec(64, 2, "pinn", "compact").parameter_count()
    reference = ModelSpec(64, 2, "pinn", "reference").parameter_count()
    assert compact < reference / 10


def test_spec_rejects_patch_size():
    with pytest.raises(InputError, match="multiple of 8"):
        ModelSpec(60, 1, "pinn")


def test_spec_params_round_trip():
    spec = ModelSpec(64, 2, "pinn", "reference", canvas_pad_px=9)
    assert ModelSpec.from_params(spec.to_params(), source="test") == spec


def test_spec_params_filter_mismatch():
    params = {**ModelSpec(64, 1, "pinn", "compact").to_params(), "encoder_filters": [64, 128, 256]}
    with pytest.raises(InputError, match="encoder_filters"):
        ModelSpec.from_params(params, source="test")


def test_correlations_identical(dataset):
    mask = footprint_mask(dataset.probe)
    figures = patch_correlations(dataset.patches, dataset.patches, mask)
    assert figures["amplitude_correlation"] == pytest.approx(1.0)
    assert figures["phase_correlation"] == pytest.approx(1.0)


def test_correlations_ignore_phase_offsets(dataset):
    mask = footprint_mask(dataset.probe)
    offsets = np.exp(1j * np.linspace(-3.0, 3.0, dataset.n_patterns))[:, None, None]
    shifted = (dataset.patches * 0.5 * offsets).astype(np.complex64)
    figures = patch_correlations(shifted, dataset.patches, mask)
    assert figures["amplitude_correlation"] == pytest.approx(1.0)
    assert figures["phase_correlation"] == pytest.approx(1.0, abs=1e-6)


def test_correlations_unrelated_low(dataset):
    mask = footprint_mask(dataset.probe)
    shuffled = dataset.patches[np.random.default_rng(0).permutation(dataset.n_patterns)]
    rng = np.random.default_rng(1)
    noise = (rng.random(shuffled.shape) * np.exp(2j * np.pi * rng.random(shuffled.shape))).astype(np.complex64)
    figures = patch_correlations(noise, dataset.patches, mask)
    assert abs(figures["amplitude_correlation"]) < 0.1
    assert abs(figures["phase_correlation"]) < 0.1


def test_correlations_constant_prediction_nan(dataset):
    mask = footprint_mask(dataset.probe)
    constant = np.full(dataset.patches.shape, 0.5 + 0.5j, dtype=np.complex64)
    figures = patch_correlations(constant, dataset.patches, mask)
    assert np.isnan(figures["amplitude_correlation"])
    assert np.isnan(figures["phase_correlation"])


def test_not_constant_rejects_constant():
    with pytest.raises(JobFailedError, match="constant"):
        assert_not_constant(np.full((2, 1, 8, 8), 0.3 + 0.1j, dtype=np.complex64))


def test_not_constant_rejects_nan():
    values = np.ones((2, 1, 8, 8), dtype=np.complex64)
    values[0, 0, 0, 0] = np.nan
    with pytest.raises(JobFailedError, match="NaN"):
        assert_not_constant(values)


def test_not_constant_accepts_varying(dataset):
    assert_not_constant(dataset.patches, footprint_mask(dataset.probe))
