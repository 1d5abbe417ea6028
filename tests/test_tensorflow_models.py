"""Keras layers and models of the TensorFlow backend.

TensorFlow runs in a subprocess, never in the test process: importing it before
torchvision, Lightning or pty-chi in one process crashes Python, and other test modules
import those. The subprocess runs this file as a script (`compute_figures`). It checks
the layers on small inputs and writes one JSON figure per check, and each test asserts
on one figure.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fly64.learning.seeding import epoch_order
from fly64.learning.spec import ModelSpec

N = 32
REFERENCE_PATCH_SIZE = 64

# Validation losses for the learning-rate schedule: flat, improving by less than the
# relative threshold, negative (the PINN's Poisson loss), and recovering after a plateau.
PLATEAU_LOSS_SEQUENCES = {
    "flat": [1.0] * 10,
    "below_threshold": [1.0, 0.99999, 0.99998, 0.99997, 0.99996, 0.99995, 0.99994, 0.99993],
    "negative": [-20.0, -25.0, -25.001, -24.0, -24.5, -24.9, -26.0, -26.0, -25.0, -25.0, -25.0, -25.0],
    "recovering": [0.9, 0.8, 0.8, 0.8, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6],
}
PLATEAU_START_RATE = 1e-3
# Training groups, batch size, seed and epochs of the batch-order check.
ORDER_GROUPS = 21
ORDER_BATCH_SIZE = 8
ORDER_SEED = 4
ORDER_EPOCHS = 3


def compute_figures() -> dict:
    """Run every check with TensorFlow and return the figures (runs in the subprocess only)."""
    import io
    import tempfile
    import zipfile

    import keras
    import tensorflow as tf

    from fly64.backends.base import TrainingSettings
    from fly64.backends.tensorflow import layers
    from fly64.backends.tensorflow.keras_archive import (
        keras_model_bytes,
        load_keras_model,
    )
    from fly64.backends.tensorflow.models import build_models, network_parameter_count
    from fly64.backends.tensorflow.training import calibrate_intensity_scale, fit_models, model_inputs
    from fly64.errors import JobFailedError
    from fly64.learning.data import TrainingArrays
    from fly64.learning.seeding import batches_per_epoch
    from fly64.learning.synthetic import disc_probe
    from fly64.physics.forward import far_field

    tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    figures: dict = {}

    # Translation: a linear ramp is reproduced exactly by bilinear interpolation, so the
    # interior of a translated ramp shows the convention out[i, j] = in(i - dy, j - dx).
    rows, columns = np.meshgrid(np.arange(N, dtype=np.float32), np.arange(N, dtype=np.float32), indexing="ij")
    ramp = (0.5 * columns + 0.25 * rows)[None]
    dx_px, dy_px = 2.5, -1.25
    moved = layers.translate(tf.constant(ramp), tf.constant([dx_px]), tf.constant([dy_px])).numpy()[0]
    expected = 0.5 * (columns - dx_px) + 0.25 * (rows - dy_px)
    interior = (slice(4, N - 4), slice(4, N - 4))
    figures["ramp_translation_error"] = float(np.max(np.abs(moved[interior] - expected[interior])))

    image = rng.standard_normal((1, N, N)).astype(np.float32)
    shifted = layers.translate(tf.constant(image), tf.constant([3.0]), tf.constant([-2.0])).numpy()[0]
    rolled = np.zeros_like(image[0])
    rolled[: N - 2, 3:] = image[0, 2:, : N - 3]
    figures["integer_translation_error"] = float(np.max(np.abs(shifted - rolled)))

    back = layers.translate(tf.constant(shifted[None]), tf.constant([-3.0]), tf.constant([2.0])).numpy()[0]
    # Pixels that stayed on the image through both shifts come back exactly.
    figures["round_trip_error"] = float(np.max(np.abs(back[2:, : N - 3] - image[0, 2:, : N - 3])))

    # Overlap constraint: patches cut at integer offsets from one object agree wherever
    # they overlap, so averaging them on the canvas gives them back unchanged.
    canvas_object = (rng.uniform(0.5, 1.0, (N + 16, N + 16)) * np.exp(1j * rng.uniform(-2, 2, (N + 16, N + 16)))).astype(np.complex64)
    offsets_px = np.array([[[-3.0, -2.0], [4.0, -1.0], [-2.0, 5.0], [1.0, -2.0]]], dtype=np.float32)
    offsets_px -= offsets_px.mean(axis=1, keepdims=True).round()
    centre = 8
    consistent = np.stack(
        [canvas_object[centre + int(y) : centre + int(y) + N, centre + int(x) : centre + int(x) + N] for x, y in offsets_px[0]]
    )[None]
    constrained = layers.overlap_constraint(tf.constant(consistent), tf.constant(offsets_px), 7).numpy()
    figures["consistent_patches_error"] = float(np.max(np.abs(constrained - consistent)))

    different = (rng.uniform(0.5, 1.0, (1, 4, N, N)) * np.exp(1j * rng.uniform(-2, 2, (1, 4, N, N)))).astype(np.complex64)
    averaged = layers.overlap_constraint(tf.constant(different), tf.constant(offsets_px), 7).numpy()
    figures["inconsistent_patches_change"] = float(np.max(np.abs(averaged - different)))

    fractional = rng.uniform(-4.5, 4.5, (2, 4, 2)).astype(np.float32)
    patches = (rng.uniform(0.2, 1, (2, 4, N, N)) * np.exp(1j * rng.uniform(-3, 3, (2, 4, N, N)))).astype(np.complex64)
    narrow = layers.overlap_constraint(tf.constant(patches), tf.constant(fractional), 6).numpy()
    wide = layers.overlap_constraint(tf.constant(patches), tf.constant(fractional), 11).numpy()
    figures["canvas_margin_difference"] = float(np.max(np.abs(narrow - wide)))

    layer = layers.OverlapConstraint(canvas_pad_px=1)
    positions = layers.positions_from_offsets(fractional)
    grown = np.moveaxis(layer(tf.constant(np.moveaxis(patches, 1, -1)), tf.constant(positions)).numpy(), -1, 1)
    figures["grown_margin_difference"] = float(np.max(np.abs(grown - narrow)))

    # Forward model.
    probe = disc_probe(N)
    intensity = layers.far_field_intensity(tf.constant(patches), tf.constant(probe)).numpy()
    exit_power = np.sum(np.abs(patches * probe) ** 2, axis=(-2, -1))
    figures["parseval_relative_error"] = float(np.max(np.abs(intensity.sum(axis=(-2, -1)) - exit_power) / exit_power))
    reference = np.abs(far_field(patches * probe)) ** 2
    figures["far_field_relative_error"] = float(np.max(np.abs(intensity - reference)) / np.max(reference))
    amplitude_reference = np.sqrt(reference)
    figures["far_field_amplitude_relative_error"] = float(
        np.max(np.abs(np.sqrt(intensity) - amplitude_reference)) / np.max(amplitude_reference)
    )

    predicted_counts = rng.uniform(0.1, 40.0, (3, N, N, 1)).astype(np.float32)
    counts = rng.poisson(predicted_counts).astype(np.float32)
    loss = float(layers.PoissonNLL()(counts, predicted_counts))
    expected_loss = float(np.mean(predicted_counts - counts * np.log(predicted_counts.astype(np.float64) + 1e-6)))
    figures["poisson_nll_relative_error"] = abs(loss - expected_loss) / abs(expected_loss)

    # Parameter counts and outputs of the models.
    counts_by_model = {}
    for preset in ("compact", "reference"):
        for gridsize in (1, 2):
            spec = ModelSpec(REFERENCE_PATCH_SIZE, gridsize, "pinn", preset, canvas_pad_px=4 if gridsize > 1 else 0)
            pair = build_models(spec, disc_probe(REFERENCE_PATCH_SIZE), 1e4)
            counts_by_model[f"{preset}-gs{gridsize}"] = network_parameter_count(pair.autoencoder)
    figures["parameter_counts"] = counts_by_model

    spec = ModelSpec(N, 2, "pinn", "compact", canvas_pad_px=6)
    keras.utils.set_random_seed(1)
    pair = build_models(spec, probe, 1e4)
    group_amplitude = rng.uniform(0, 2, (3, 4, N, N)).astype(np.float32)
    group_offsets = rng.uniform(-4, 4, (3, 4, 2)).astype(np.float32)
    arrays = TrainingArrays(
        amplitude=group_amplitude, counts=group_amplitude**2, offsets_px=group_offsets, patches=None,
        indices=np.zeros((3, 4), dtype=np.int64), norm_factor=1.0,
    )
    inputs = model_inputs(spec, arrays)
    output = pair.diffraction_to_obj.predict(inputs, verbose=0)
    figures["inference_output_shape"] = list(output.shape)
    figures["inference_output_dtype"] = str(output.dtype)
    constrained_model = keras.Model(pair.diffraction_to_obj.inputs, pair.diffraction_to_obj.get_layer("overlap_constraint").output)
    per_group = constrained_model.predict(inputs, verbose=0)
    figures["group_major_order_error"] = float(
        np.max(np.abs(output[:, :, :, 0] - np.moveaxis(per_group, -1, 1).reshape(-1, N, N)))
    )
    figures["amplitude_range"] = [float(np.abs(output).min()), float(np.abs(output).max())]
    counts_output = pair.autoencoder.predict(inputs, verbose=0)
    figures["autoencoder_output_shape"] = list(counts_output.shape)
    figures["autoencoder_output_dtype"] = str(counts_output.dtype)

    # Calibration: the untrained PINN's predicted counts then total the measured counts.
    calibration_arrays = TrainingArrays(
        amplitude=group_amplitude, counts=np.full_like(group_amplitude, 7.0), offsets_px=group_offsets, patches=None,
        indices=np.zeros((3, 4), dtype=np.int64), norm_factor=1.0,
    )
    calibrate_intensity_scale(pair, spec, calibration_arrays)
    calibrated_counts = pair.autoencoder.predict(inputs, verbose=0)
    figures["calibrated_photon_ratio"] = float(calibrated_counts.sum(dtype=np.float64) / calibration_arrays.counts.sum(dtype=np.float64))

    baseline_spec = ModelSpec(N, 1, "baseline", "compact")
    baseline = build_models(baseline_spec)
    baseline_outputs = baseline.autoencoder.predict(group_amplitude[:, :1].transpose(0, 2, 3, 1), verbose=0)
    figures["baseline_phase_bound"] = float(np.max(np.abs(baseline_outputs[1])))

    # Saving: reproducible bytes, no Lambda layer, and a safe-mode reload that reproduces the output.
    data = keras_model_bytes(pair.diffraction_to_obj)
    figures["repeated_save_identical"] = data == keras_model_bytes(pair.diffraction_to_obj)
    keras.utils.set_random_seed(1)
    rebuilt = build_models(spec, probe, 1e4)
    figures["rebuilt_save_identical"] = data == keras_model_bytes(rebuilt.diffraction_to_obj)
    config = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json"))
    figures["config_mentions_lambda"] = "Lambda" in json.dumps(config)

    reloaded = load_keras_model(data, "test")
    figures["reload_difference"] = float(np.max(np.abs(reloaded.predict(inputs, verbose=0) - output)))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.keras"
        path.write_bytes(data)
        consumer_model = keras.models.load_model(path, safe_mode=True)
    figures["consumer_reload_difference"] = float(np.max(np.abs(consumer_model.predict(inputs, verbose=0) - output)))

    # A learning rate of 1e30 makes the loss non-finite in the second step.
    small_spec = ModelSpec(16, 1, "pinn", "compact")
    small_amplitude = rng.uniform(0, 2, (24, 1, 16, 16)).astype(np.float32)
    small_arrays = TrainingArrays(
        amplitude=small_amplitude, counts=np.round(100 * small_amplitude**2), offsets_px=np.zeros((24, 1, 2), np.float32),
        patches=None, indices=np.arange(24)[:, None], norm_factor=1.0,
    )
    settings = TrainingSettings(epochs=2, batch_size=8, learning_rate=1e30, validation_fraction=0.0)
    try:
        fit_models(build_models(small_spec, disc_probe(16), 100.0), small_spec, small_arrays, small_arrays.take([]), settings, seed=0)
        figures["diverging_fit_error"] = None
    except JobFailedError as error:
        figures["diverging_fit_error"] = str(error)

    # The batches `model.fit` takes from `training_dataset`, epoch after epoch.
    from fly64.backends.tensorflow.training import training_dataset

    class BatchRecorder(keras.Model):
        def __init__(self):
            super().__init__()
            self.batches = []

        def train_step(self, data):
            inputs, _ = data
            self.batches.append(np.asarray(inputs["amplitude"])[:, 0, 0, 0].astype(int).tolist())
            return {"loss": 0.0}

    order_amplitude = np.broadcast_to(
        np.arange(ORDER_GROUPS, dtype=np.float32)[:, None, None, None], (ORDER_GROUPS, 1, 16, 16)
    ).copy()
    order_arrays = TrainingArrays(
        amplitude=order_amplitude, counts=order_amplitude, offsets_px=np.zeros((ORDER_GROUPS, 1, 2), np.float32),
        patches=None, indices=np.arange(ORDER_GROUPS)[:, None], norm_factor=1.0,
    )
    recorder = BatchRecorder()
    recorder.compile(run_eagerly=True)
    recorder.fit(
        training_dataset(small_spec, order_arrays, ORDER_BATCH_SIZE, ORDER_SEED, ORDER_EPOCHS),
        epochs=ORDER_EPOCHS,
        steps_per_epoch=batches_per_epoch(ORDER_GROUPS, ORDER_BATCH_SIZE),
        verbose=0,
    )
    figures["fit_batches"] = recorder.batches

    # The learning-rate schedule, stepped by hand through the loss sequences below.
    from fly64.backends.tensorflow.training import PlateauLearningRate

    figures["plateau_learning_rates"] = {}
    for name, losses in PLATEAU_LOSS_SEQUENCES.items():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=PLATEAU_START_RATE), loss="mse")
        schedule = PlateauLearningRate("val_loss")
        schedule.set_model(model)
        schedule.on_train_begin()
        rates = []
        for epoch, loss in enumerate(losses):
            schedule.on_epoch_end(epoch, {"val_loss": loss})
            rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
        figures["plateau_learning_rates"][name] = rates
    return figures


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("tensorflow_models") / "figures.json"
    completed = subprocess.run(
        [sys.executable, __file__, str(output)], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, f"TensorFlow subprocess failed:\n{completed.stderr[-4000:]}"
    return json.loads(output.read_text())


def test_translate_ramp_convention(figures):
    assert figures["ramp_translation_error"] < 1e-4


def test_translate_integer_shift(figures):
    assert figures["integer_translation_error"] < 1e-6


def test_translate_round_trip(figures):
    assert figures["round_trip_error"] < 1e-6


def test_overlap_consistent_patches_unchanged(figures):
    assert figures["consistent_patches_error"] < 1e-5


def test_overlap_inconsistent_patches_averaged(figures):
    assert figures["inconsistent_patches_change"] > 0.1


def test_overlap_margin_independent(figures):
    assert figures["canvas_margin_difference"] < 1e-5


def test_overlap_layer_grows_margin(figures):
    assert figures["grown_margin_difference"] < 1e-5


def test_forward_parseval(figures):
    assert figures["parseval_relative_error"] < 1e-5


def test_forward_matches_physics(figures):
    assert figures["far_field_relative_error"] < 1e-5


def test_forward_amplitude_matches_physics(figures):
    assert figures["far_field_amplitude_relative_error"] < 1e-5


def test_poisson_nll_formula(figures):
    assert figures["poisson_nll_relative_error"] < 1e-5


@pytest.mark.parametrize("preset", ["compact", "reference"])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_parameter_count_matches_spec(figures, preset, gridsize):
    spec = ModelSpec(REFERENCE_PATCH_SIZE, gridsize, "pinn", preset)
    assert figures["parameter_counts"][f"{preset}-gs{gridsize}"] == spec.parameter_count()


def test_reference_preset_size(figures):
    assert 2.2e6 < figures["parameter_counts"]["reference-gs1"] < 2.4e6


def test_inference_output_shape(figures):
    assert figures["inference_output_shape"] == [3 * 4, N, N, 1]


def test_inference_output_complex64(figures):
    assert figures["inference_output_dtype"] == "complex64"


def test_inference_group_major_order(figures):
    assert figures["group_major_order_error"] == 0.0


def test_inference_amplitude_nonnegative(figures):
    assert figures["amplitude_range"][0] >= 0.0


def test_inference_amplitude_at_most_one(figures):
    assert figures["amplitude_range"][1] <= 1.0


def test_autoencoder_output_counts(figures):
    assert figures["autoencoder_output_shape"] == [3, N, N, 4]


def test_autoencoder_output_float32(figures):
    assert figures["autoencoder_output_dtype"] == "float32"


def test_calibration_matches_photons(figures):
    assert figures["calibrated_photon_ratio"] == pytest.approx(1.0, rel=1e-5)


def test_baseline_phase_bounded(figures):
    assert figures["baseline_phase_bound"] <= np.pi


def test_save_repeated_identical(figures):
    assert figures["repeated_save_identical"] is True


def test_save_rebuilt_identical(figures):
    assert figures["rebuilt_save_identical"] is True


def test_config_has_no_lambda(figures):
    assert figures["config_mentions_lambda"] is False


def test_safe_reload_reproduces(figures):
    assert figures["reload_difference"] == 0.0


def test_consumer_safe_mode_load(figures):
    assert figures["consumer_reload_difference"] == 0.0


def torch_plateau_rates(losses: list[float]) -> list[float]:
    """Step the PyTorch backend's `ReduceLROnPlateau` settings through `losses`."""
    import torch

    from fly64.backends.pytorch.lightning_modules import LEARNING_RATE_FACTOR, PLATEAU_PATIENCE_EPOCHS

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=PLATEAU_START_RATE)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=LEARNING_RATE_FACTOR, patience=PLATEAU_PATIENCE_EPOCHS
    )
    rates = []
    for loss in losses:
        scheduler.step(loss)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("sequence", sorted(PLATEAU_LOSS_SEQUENCES))
def test_plateau_schedule_matches_pytorch(figures, sequence):
    keras_rates = figures["plateau_learning_rates"][sequence]
    expected = torch_plateau_rates(PLATEAU_LOSS_SEQUENCES[sequence])
    np.testing.assert_allclose(keras_rates, expected, rtol=1e-6)


def test_plateau_schedule_lowers_rate(figures):
    assert figures["plateau_learning_rates"]["flat"][-1] < PLATEAU_START_RATE


def test_fit_batches_follow_epoch_order(figures):
    expected = []
    for epoch in range(ORDER_EPOCHS):
        order = epoch_order(ORDER_SEED, epoch, ORDER_GROUPS).tolist()
        expected += [order[start:start + ORDER_BATCH_SIZE] for start in range(0, ORDER_GROUPS, ORDER_BATCH_SIZE)]
    assert figures["fit_batches"] == expected


def test_diverging_fit_raises(figures):
    assert figures["diverging_fit_error"] is not None


def test_diverging_fit_error_says_what_to_do(figures):
    assert "lower training.learning_rate" in figures["diverging_fit_error"]


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(compute_figures(), indent=2))
