"""Parity of the TensorFlow and PyTorch backends: physics layers, whole networks and training jobs.

Two kinds of checks, each in subprocesses so that the test process imports no framework:

- Layers and networks: one subprocess imports PyTorch first (the order that works in one
  process) and then TensorFlow, runs both backends' physics on equal inputs, builds
  both backends' networks from one seed and compares their outputs.
- Training: the two worker subprocesses, one per backend, train on the same small
  dataset with the same seed and settings. Their result JSON must agree on the first
  epoch's loss, the final loss and the test-split phase correlation.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fly64.contract import save_dataset
from fly64.learning.synthetic import make_synthetic_dataset

N = 32
# Relative agreement of the two backends' forward models and networks on equal inputs.
LAYER_TOLERANCE = 1e-5
# With one seed both backends start from the same weights and take the same batches, so
# their first epochs agree closely (measured: 3e-5 relative). Rounding differences grow
# over the epochs; the final loss must agree to 10 % and the phase correlation to 0.05.
FIRST_EPOCH_LOSS_TOLERANCE = 1e-3
LOSS_RELATIVE_TOLERANCE = 0.10
PHASE_CORRELATION_TOLERANCE = 0.05


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """Return max |value - reference| / max |reference|."""
    return float(np.max(np.abs(value - reference)) / np.max(np.abs(reference)))


def compute_layer_figures() -> dict:
    """Compare the backends on equal inputs and weights (runs in the subprocess only)."""
    # PyTorch and Lightning go first: imported after TensorFlow, Lightning crashes the process.
    import torch

    from fly64.backends.pytorch import physics as torch_physics
    from fly64.backends.pytorch.training import build_model

    import tensorflow as tf

    from fly64.backends.tensorflow import layers as keras_physics
    from fly64.backends.tensorflow.bundle import predict_patches
    from fly64.backends.tensorflow.models import build_models, set_initial_weights
    from fly64.learning.spec import ModelSpec
    from fly64.learning.synthetic import disc_probe
    from fly64.physics.forward import far_field

    torch.set_num_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    probe = disc_probe(N)
    patches = (rng.uniform(0.2, 1, (3, 4, N, N)) * np.exp(1j * rng.uniform(-3, 3, (3, 4, N, N)))).astype(np.complex64)
    offsets_px = rng.uniform(-6, 6, (3, 4, 2)).astype(np.float32)
    real, imag = torch.from_numpy(patches.real.copy()), torch.from_numpy(patches.imag.copy())
    figures = {}

    keras_intensity = keras_physics.far_field_intensity(tf.constant(patches), tf.constant(probe)).numpy()
    torch_intensity = torch_physics.far_field_intensity(real, imag, torch.from_numpy(probe)).numpy()
    numpy_amplitude = np.abs(far_field(patches * probe))
    figures["amplitude_vs_physics"] = relative_error(np.sqrt(keras_intensity), numpy_amplitude)
    figures["amplitude_vs_torch"] = relative_error(np.sqrt(keras_intensity), np.sqrt(torch_intensity))

    image = rng.standard_normal((3, 4, N, N)).astype(np.float32)
    dx, dy = offsets_px[..., 0].copy(), offsets_px[..., 1].copy()
    figures["translate_vs_torch"] = relative_error(
        keras_physics.translate(tf.constant(image), tf.constant(dx), tf.constant(dy)).numpy(),
        torch_physics.translate(torch.from_numpy(image), torch.from_numpy(dx), torch.from_numpy(dy)).numpy(),
    )
    torch_real, torch_imag = torch_physics.overlap_constraint(real, imag, torch.from_numpy(offsets_px), 8)
    figures["overlap_vs_torch"] = relative_error(
        keras_physics.overlap_constraint(tf.constant(patches), tf.constant(offsets_px), 8).numpy(),
        torch_real.numpy() + 1j * torch_imag.numpy(),
    )
    predicted_counts = rng.uniform(0.1, 40.0, (3, 4, N, N)).astype(np.float32)
    counts = rng.poisson(predicted_counts).astype(np.float32)
    figures["poisson_nll_vs_torch"] = relative_error(
        np.asarray(float(keras_physics.PoissonNLL()(counts, predicted_counts))),
        np.asarray(float(torch_physics.poisson_nll(torch.from_numpy(predicted_counts), torch.from_numpy(counts)))),
    )

    # Whole networks, each backend's built from the same seed.
    amplitude = rng.uniform(0, 2, (3, 4, N, N)).astype(np.float32)
    offsets = rng.uniform(-3, 3, (3, 4, 2)).astype(np.float32)
    spec = ModelSpec(N, 2, "pinn", "compact", canvas_pad_px=5)
    torch_pinn = build_model(spec, probe, seed=5, intensity_scale=1234.0).eval()
    pair = build_models(spec, probe, 1234.0)
    set_initial_weights(pair, spec, seed=5)
    with torch.no_grad():
        torch_counts, torch_real, torch_imag = torch_pinn(torch.from_numpy(amplitude), torch.from_numpy(offsets))
    keras_patches = predict_patches(pair.diffraction_to_obj, amplitude, offsets)
    figures["pinn_patches_vs_torch"] = relative_error(keras_patches, torch_real.numpy() + 1j * torch_imag.numpy())
    keras_counts = pair.autoencoder(
        [np.moveaxis(amplitude, 1, -1), keras_physics.positions_from_offsets(offsets)], training=False
    ).numpy()
    figures["pinn_counts_vs_torch"] = relative_error(np.moveaxis(keras_counts, -1, 1), torch_counts.numpy())

    baseline_spec = ModelSpec(N, 1, "baseline", "compact")
    torch_baseline = build_model(baseline_spec, probe, seed=6).eval()
    baseline_pair = build_models(baseline_spec)
    set_initial_weights(baseline_pair, baseline_spec, seed=6)
    with torch.no_grad():
        torch_amplitude, torch_phase = torch_baseline(torch.from_numpy(amplitude[:, :1]))
    keras_amplitude, keras_phase = baseline_pair.autoencoder(np.moveaxis(amplitude[:, :1], 1, -1), training=False)
    figures["baseline_amplitude_vs_torch"] = relative_error(np.moveaxis(keras_amplitude.numpy(), -1, 1), torch_amplitude.numpy())
    figures["baseline_phase_vs_torch"] = relative_error(np.moveaxis(keras_phase.numpy(), -1, 1), torch_phase.numpy())
    return figures


@pytest.fixture(scope="module")
def layer_figures(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("parity_layers") / "figures.json"
    completed = subprocess.run([sys.executable, __file__, str(output)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, f"parity subprocess failed:\n{completed.stderr[-4000:]}"
    return json.loads(output.read_text())


@pytest.mark.parametrize(
    "figure",
    [
        "amplitude_vs_physics", "amplitude_vs_torch", "translate_vs_torch", "overlap_vs_torch", "poisson_nll_vs_torch",
        "pinn_patches_vs_torch", "pinn_counts_vs_torch", "baseline_amplitude_vs_torch", "baseline_phase_vs_torch",
    ],
)
def test_layer_parity(layer_figures, figure):
    assert layer_figures[figure] < LAYER_TOLERANCE


# Jobs trained by both backends: the supervised baseline, and the PINN at gridsize 2 with
# the overlap constraint and the Poisson loss through the forward model. At this size
# (64 patterns of 32 x 32, 10 epochs) the baseline learns the amplitude but neither model
# the phase yet, so the phase correlations of both backends stay near 0.
JOBS = {"baseline": ("baseline", 1), "pinn-gs2": ("pinn", 2)}
JOB_EPOCHS = 10


def job_spec(backend: str, job: str, folder: Path, train_path: Path, test_path: Path) -> dict:
    model_kind, gridsize = JOBS[job]
    return {
        "backend": backend,
        "model_kind": model_kind,
        "gridsize": gridsize,
        "neighbor_count": 7,
        "seed": 3,
        "train_data_path": str(train_path),
        "test_data_path": str(test_path),
        "bundle_path": str(folder / "wts.h5.zip"),
        "training": {
            "epochs": JOB_EPOCHS, "batch_size": 16, "learning_rate": 1e-3, "validation_fraction": 0.1,
            "early_stopping_patience": 5, "max_train_groups": 0, "threads": 1, "device": "cpu",
            "model_preset": "compact",
        },
        "provenance": {"dose": 1e4, "view": "dense"},
    }


@pytest.fixture(scope="module")
def job_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parity_data")
    train_path, test_path = root / "train.npz", root / "test.npz"
    save_dataset(train_path, make_synthetic_dataset(patch_size=N, scan_side=8, step_px=4, dose_photons=1e4, seed=0))
    save_dataset(test_path, make_synthetic_dataset(patch_size=N, scan_side=5, step_px=6, dose_photons=1e4, seed=1))
    return train_path, test_path


@pytest.fixture(scope="module", params=sorted(JOBS))
def job_results(request, job_data, tmp_path_factory) -> dict:
    """Train one job with each backend in its worker process; return backend to result."""
    results = {}
    for backend in ("pytorch", "tensorflow"):
        folder = tmp_path_factory.mktemp(f"parity_{request.param}_{backend}")
        spec_path, result_path = folder / "spec.json", folder / "result.json"
        spec_path.write_text(json.dumps(job_spec(backend, request.param, folder, *job_data)))
        completed = subprocess.run(
            [sys.executable, "-m", "fly64.backends.worker", str(spec_path), str(result_path)],
            capture_output=True, text=True, timeout=600,
        )
        assert completed.returncode == 0, f"{backend} worker failed:\n{completed.stderr[-4000:]}"
        results[backend] = json.loads(result_path.read_text())
    return results


def test_job_first_epoch_losses_agree(job_results):
    tensorflow_loss = job_results["tensorflow"]["loss_history"][0]["train_loss"]
    pytorch_loss = job_results["pytorch"]["loss_history"][0]["train_loss"]
    assert abs(tensorflow_loss - pytorch_loss) <= FIRST_EPOCH_LOSS_TOLERANCE * abs(pytorch_loss)


def test_job_final_losses_agree(job_results):
    tensorflow_loss = job_results["tensorflow"]["final_train_loss"]
    pytorch_loss = job_results["pytorch"]["final_train_loss"]
    assert abs(tensorflow_loss - pytorch_loss) <= LOSS_RELATIVE_TOLERANCE * abs(pytorch_loss)


def test_job_phase_correlations_agree(job_results):
    difference = job_results["tensorflow"]["phase_correlation"] - job_results["pytorch"]["phase_correlation"]
    assert abs(difference) < PHASE_CORRELATION_TOLERANCE


def test_job_same_groups(job_results):
    counts = [(job_results[backend]["n_train_groups"], job_results[backend]["n_val_groups"]) for backend in ("pytorch", "tensorflow")]
    assert counts[0] == counts[1]


def test_job_same_normalisation(job_results):
    assert job_results["tensorflow"]["norm_factor"] == job_results["pytorch"]["norm_factor"]


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(compute_layer_figures(), indent=2))
