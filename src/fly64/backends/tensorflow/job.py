"""One TensorFlow training job: data, training, evaluation, bundle, reload check, result.

`run_job(spec)` is the entry point that `python -m fly64.backends.worker` calls in its
own process for `backend: "tensorflow"`. It follows the PyTorch backend's job step for
step, with the same data pipeline (`fly64.learning.data`), so the two results compare
directly. It logs to this module's logger and never prints.
"""

import dataclasses
import logging
import math
import platform
from typing import Any

import numpy as np

from fly64 import __version__
from fly64.atomic import sha256_file
from fly64.backends.base import JobSpec
from fly64.contract import Dataset, load_dataset
from fly64.errors import BundleError, InputError, JobFailedError
from fly64.learning.data import (
    TrainingArrays,
    build_training_arrays,
    canvas_pad_px,
    normalisation_factor,
    split_validation,
)
from fly64.learning.evaluation import assert_not_constant, footprint_mask, patch_correlations
from fly64.learning.spec import ModelSpec

logger = logging.getLogger(__name__)

BACKEND = "tensorflow"
# Groups stored in the bundle's verification batch.
VERIFICATION_GROUPS = 8
# Maximum |difference| allowed between the reloaded bundle and the in-memory model, on one device.
RELOAD_TOLERANCE = 1e-5
EVALUATION_BATCH_GROUPS = 64
# Wall times and throughput vary from run to run. Leaving them (and absolute paths) out of
# the bundle keeps equal trainings byte-identical, so the SHA-256 identifies the model.
RUN_DEPENDENT_RESULT_KEYS = ("status", "train_seconds", "samples_per_second")


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one model as `spec` describes, write its bundle and return the result.

    Args:
        spec: the job spec (see `fly64.backends.base.JobSpec`), with backend `tensorflow`.

    Returns:
        The result dict with the PyTorch job's keys, except that `tensorflow_version` and
        `keras_version` replace `torch_version` and `lightning_version`. It contains
        `status` "completed", training figures (`epochs_run`, losses, `loss_history`,
        `train_seconds`, `samples_per_second` in groups per second of training steps),
        group counts, test-split patch correlations (None without ground truth),
        `intensity_scale`, `norm_factor`, device and threads.

    Raises:
        InputError: the spec or a dataset is invalid.
        JobFailedError: a loss became non-finite, the model output is constant, or the
            written bundle does not reproduce the model.
    """
    job = JobSpec.from_dict(spec)
    if job.backend != BACKEND:
        raise InputError(f"job spec backend is {job.backend!r}, but this is the {BACKEND} backend's job runner")
    train_dataset, test_dataset = _load_inputs(job)

    # TensorFlow is imported only once the inputs are known to be valid, and its runtime
    # is configured before any other TensorFlow code runs.
    from fly64.backends.tensorflow.runtime import configure_runtime

    settings = job.training
    runtime = configure_runtime(settings.device, settings.threads, job.seed)

    from fly64.backends.tensorflow.bundle import write_tensorflow_bundle
    from fly64.backends.tensorflow.models import build_models, set_initial_weights
    from fly64.backends.tensorflow.training import calibrate_intensity_scale, fit_models

    norm_factor = normalisation_factor(train_dataset.diffraction)
    arrays = build_training_arrays(
        train_dataset, job.gridsize, job.neighbor_count, job.seed, norm_factor, settings.max_train_groups
    )
    train_arrays, validation_arrays = split_validation(arrays, settings.validation_fraction, job.seed)
    pad = canvas_pad_px(arrays.offsets_px) if job.model_kind == "pinn" and job.gridsize > 1 else 0
    model_spec = ModelSpec(train_dataset.patch_size, job.gridsize, job.model_kind, settings.model_preset, pad)
    logger.info(
        "Job: %s, gridsize %d, preset %s (%d parameters), %d groups (norm factor %.6g, canvas margin %d px)",
        job.model_kind, job.gridsize, settings.model_preset, model_spec.parameter_count(), arrays.n_groups, norm_factor, pad,
    )

    pair = build_models(model_spec, train_dataset.probe)
    set_initial_weights(pair, model_spec, job.seed)
    if job.model_kind == "pinn":
        calibrate_intensity_scale(pair, model_spec, train_arrays)
    outcome = fit_models(pair, model_spec, train_arrays, validation_arrays, settings, job.seed)

    test_arrays = build_training_arrays(test_dataset, job.gridsize, job.neighbor_count, job.seed)
    predicted, correlations = _evaluate(pair.diffraction_to_obj, test_arrays, train_dataset.probe)

    result = {
        "status": "completed",
        "backend": BACKEND,
        "model_kind": job.model_kind,
        "gridsize": job.gridsize,
        "model_preset": settings.model_preset,
        "parameter_count": model_spec.parameter_count(),
        **_training_figures(outcome),
        "n_train_groups": train_arrays.n_groups,
        "n_val_groups": validation_arrays.n_groups,
        "n_test_groups": test_arrays.n_groups,
        **correlations,
        "intensity_scale": pair.trained_intensity_scale(),
        "norm_factor": norm_factor,
        "device": runtime.device,
        "threads": runtime.threads,
        # Keras convolutions on TensorFlow take channels-last tensors in this backend.
        "channels_last": True,
        **_versions(),
        "seed": job.seed,
    }

    verification = _verification_batch(test_dataset, test_arrays, predicted)
    write_tensorflow_bundle(
        job.bundle_path, pair, model_spec, train_dataset.probe, norm_factor, verification, _provenance(job, result)
    )
    _check_reload(job.bundle_path)
    return _json_safe(result)


def _load_inputs(job: JobSpec) -> tuple[Dataset, Dataset]:
    """Load the training and test datasets and check that they suit the job.

    Raises:
        InputError: a file is missing or breaks the data contract, the patch sizes differ,
            or the supervised baseline lacks ground-truth patches.
    """
    train_dataset = load_dataset(job.train_data_path)
    test_dataset = load_dataset(job.test_data_path)
    if test_dataset.patch_size != train_dataset.patch_size:
        raise InputError(
            f"{job.test_data_path}: patterns are {test_dataset.patch_size} px, "
            f"the training data {job.train_data_path} has {train_dataset.patch_size} px"
        )
    if job.model_kind == "baseline" and train_dataset.patches is None:
        raise InputError(f"{job.train_data_path}: key Y (ground-truth patches) is missing; the supervised baseline needs it")
    return train_dataset, test_dataset


def _evaluate(network, test_arrays: TrainingArrays, probe: np.ndarray) -> tuple[np.ndarray, dict[str, float | None]]:
    """Predict the test groups and correlate them with the ground truth inside the probe footprint.

    Returns:
        The predicted complex64 (G, C, N, N) patches, and the amplitude and phase
        correlations (None when the test data have no ground truth).

    Raises:
        JobFailedError: the prediction is non-finite or constant.
    """
    from fly64.backends.tensorflow.bundle import predict_patches

    parts = [
        predict_patches(
            network,
            test_arrays.amplitude[start : start + EVALUATION_BATCH_GROUPS],
            test_arrays.offsets_px[start : start + EVALUATION_BATCH_GROUPS],
        )
        for start in range(0, test_arrays.n_groups, EVALUATION_BATCH_GROUPS)
    ]
    predicted = np.concatenate(parts, axis=0)
    mask = footprint_mask(probe)
    assert_not_constant(predicted, mask)
    if test_arrays.patches is None:
        logger.info("Test data have no ground-truth patches (key Y); correlations are not computed")
        return predicted, {"amplitude_correlation": None, "phase_correlation": None}

    correlations = patch_correlations(predicted, test_arrays.patches, mask)
    logger.info(
        "Test split: amplitude correlation %.4f, phase correlation %.4f (%d groups)",
        correlations["amplitude_correlation"], correlations["phase_correlation"], test_arrays.n_groups,
    )
    return predicted, correlations


def _training_figures(outcome) -> dict[str, Any]:
    final = outcome.history[-1]
    return {
        "epochs_run": outcome.epochs_run,
        "best_epoch": outcome.best_epoch,
        "final_train_loss": final["train_loss"],
        "final_val_loss": final["val_loss"],
        "loss_history": [
            {"epoch": entry["epoch"], "train_loss": entry["train_loss"], "val_loss": entry["val_loss"]}
            for entry in outcome.history
        ],
        "train_seconds": outcome.train_seconds,
        "samples_per_second": outcome.samples_per_second,
    }


def _verification_batch(test_dataset: Dataset, test_arrays: TrainingArrays, predicted: np.ndarray) -> dict[str, np.ndarray]:
    """Return the first test groups with their predicted patches, for the bundle's reload check.

    The amplitudes are the raw measured ones, so that the check repeats exactly the
    normalisation of this run.
    """
    groups = min(VERIFICATION_GROUPS, test_arrays.n_groups)
    return {
        "amplitude": test_dataset.diffraction[test_arrays.indices[:groups]],
        "offsets_px": test_arrays.offsets_px[:groups],
        "norm_factor": np.float64(test_arrays.norm_factor),
        "expected": predicted[:groups],
    }


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"tensorflow_version": tf.__version__, "keras_version": keras.__version__}


def _provenance(job: JobSpec, result: dict[str, Any]) -> dict[str, Any]:
    """Return the provenance for the bundle's manifest.json: the runner's record, versions, inputs, settings, figures."""
    return _json_safe({
        **job.provenance,
        "fly64_version": __version__,
        **_versions(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "train_data": {"name": job.train_data_path.name, "sha256": sha256_file(job.train_data_path)},
        "test_data": {"name": job.test_data_path.name, "sha256": sha256_file(job.test_data_path)},
        "seed": job.seed,
        "neighbor_count": job.neighbor_count,
        "training": dataclasses.asdict(job.training),
        "result": {key: value for key, value in result.items() if key not in RUN_DEPENDENT_RESULT_KEYS},
    })


def _check_reload(bundle_path) -> None:
    """Reload the bundle through the backend-neutral loader and require the stored verification output.

    Raises:
        JobFailedError: the bundle does not load or does not reproduce the model.
    """
    from fly64.backends import load_bundle

    try:
        loaded = load_bundle(bundle_path, verify=False)
        deviation = loaded.verify(tolerance=RELOAD_TOLERANCE)
    except BundleError as error:
        raise JobFailedError(f"the written bundle does not reproduce the trained model: {error}") from error
    logger.info("Reloaded %s: verification batch reproduced within %.2g", bundle_path, deviation)


def _json_safe(value: Any) -> Any:
    """Return plain JSON data: NumPy scalars as Python numbers, non-finite floats as None."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
