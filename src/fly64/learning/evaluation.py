"""Patch-level quality figures of a trained model, computed with NumPy.

These figures judge a training job quickly on its held-out split, patch by patch, before
any stitching. The study's full comparison (registration, MS-SSIM, FRC) runs later on
stitched objects.
"""

import numpy as np

from fly64.errors import JobFailedError
from fly64.physics.probe import probe_footprint_mask

# A probe pixel belongs to the footprint when |P| >= this fraction of max |P|.
FOOTPRINT_AMPLITUDE_FRACTION = 0.1


def footprint_mask(probe: np.ndarray) -> np.ndarray:
    """Return the bool (N, N) probe footprint, `|P| >= 0.1 * max|P|`."""
    return probe_footprint_mask(probe, FOOTPRINT_AMPLITUDE_FRACTION)


CORRELATION_DECIMALS = 9


def patch_correlations(predicted: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Return the Pearson correlations of amplitude and phase inside the probe footprint.

    Each patch's phase is taken relative to its own circular mean inside the mask, for the
    prediction and the truth alike, because a constant phase offset is not observable.
    Correlations are pooled over all masked pixels of all patches.

    Args:
        predicted: complex (n, N, N) predicted patches; any leading shape (..., N, N) works.
        truth: complex array of the same shape, the ground-truth patches.
        mask: bool (N, N), the pixels to compare.

    Returns:
        `{"amplitude_correlation": r_a, "phase_correlation": r_p}` as floats; a value is
        NaN when either side has no variation inside the mask.

    Raises:
        ValueError: shapes disagree or the mask selects no pixel.
    """
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    mask = np.asarray(mask, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted patches have shape {predicted.shape} but truth has {truth.shape}")
    if mask.shape != predicted.shape[-2:]:
        raise ValueError(f"mask has shape {mask.shape}; expected {predicted.shape[-2:]}")
    if not mask.any():
        raise ValueError("mask selects no pixel; expected a probe footprint with at least one pixel")

    predicted_masked = predicted[..., mask].astype(np.complex128)
    truth_masked = truth[..., mask].astype(np.complex128)

    amplitude_correlation = _pearson(np.abs(predicted_masked), np.abs(truth_masked))
    phase_correlation = _pearson(_centred_phase(predicted_masked), _centred_phase(truth_masked))
    # BLAS reductions round differently with other thread counts, and Ray sets one thread
    # per task. Rounding keeps the figures, and so the bundles that record them, reproducible.
    return {
        "amplitude_correlation": _rounded(amplitude_correlation),
        "phase_correlation": _rounded(phase_correlation),
    }


def _rounded(value: float) -> float:
    return value if not np.isfinite(value) else round(float(value), CORRELATION_DECIMALS)


def assert_not_constant(predicted: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Raise JobFailedError when predicted patches are non-finite or carry no information.

    A prediction carries no information when both its amplitude and its phase are the same
    everywhere (inside `mask`, when given): a model that collapsed to a constant output.

    Raises:
        JobFailedError: with a message saying which failure occurred.
    """
    predicted = np.asarray(predicted)
    if not np.all(np.isfinite(predicted)):
        raise JobFailedError("model output contains NaN or infinite values")
    values = predicted[..., np.asarray(mask, dtype=bool)] if mask is not None else predicted
    if values.size == 0:
        raise JobFailedError("model output is empty; nothing to evaluate")
    amplitude = np.abs(values)
    phase = np.angle(values)
    if np.ptp(amplitude) == 0.0 and np.ptp(phase) == 0.0:
        raise JobFailedError(
            f"model output is constant (amplitude {amplitude.flat[0]:.4g}, phase {phase.flat[0]:.4g} rad); "
            "the model learned nothing"
        )


def _centred_phase(values: np.ndarray) -> np.ndarray:
    """Return the phase of each row of (..., m) values minus that row's circular mean, wrapped to (-pi, pi]."""
    unit = np.exp(1j * np.angle(values))
    mean_direction = unit.sum(axis=-1, keepdims=True)
    # A row of zeros has no direction; leave its phase as it is.
    mean_direction = np.where(np.abs(mean_direction) > 0, mean_direction / np.abs(mean_direction), 1.0)
    return np.angle(unit * np.conj(mean_direction))


def _pearson(first: np.ndarray, second: np.ndarray) -> float:
    """Return the Pearson correlation of two equally shaped arrays, pooled over all elements; NaN without variance."""
    # Checked on the raw values: subtracting a rounded mean leaves tiny nonzero residues.
    if np.ptp(first) == 0.0 or np.ptp(second) == 0.0:
        return float("nan")
    first = first.ravel() - first.mean()
    second = second.ravel() - second.mean()
    denominator = np.sqrt(np.dot(first, first) * np.dot(second, second))
    if denominator == 0.0:
        return float("nan")
    return float(np.dot(first, second) / denominator)
