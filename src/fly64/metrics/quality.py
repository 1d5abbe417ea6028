"""Quality metrics of a reconstruction against the ground truth, for amplitude and phase.

`compare_images` expects images that are already registered, free of phase offset and
ramp, and cropped to the scanned region (see `fly64.metrics.registration.align_to_reference`).
"""

import math

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from fly64.errors import InputError
from fly64.metrics.frc import THRESHOLD_HALF, THRESHOLD_ONE_SEVENTH, fourier_ring_correlation, frc_resolution

# Scale weights of multi-scale SSIM, finest scale first: the standard weights of Wang,
# Simoncelli and Bovik's MS-SSIM (2003), also the default `betas` of torchmetrics 1.x.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# SSIM window: Gaussian weights of sigma 1.5 truncated at 3.5 sigma (11 x 11 taps), the
# setting that scikit-image 0.26's documentation gives for matching Wang et al.'s SSIM.
# Smaller images get a narrower window, down to 3 x 3.
SSIM_GAUSSIAN_SIGMA = 1.5
SSIM_TRUNCATE_SIGMAS = 3.5
SSIM_MAX_WINDOW_PX = 11
SSIM_MIN_WINDOW_PX = 3

MIN_IMAGE_SIDE_PX = 4

# A reference whose range is below this fraction of its largest magnitude counts as
# constant. The amplitude of a complex64 phase-only object varies by about 1e-7 from
# rounding alone, which must not become the data range.
CONSTANT_RELATIVE_RANGE = 1e-5


def compare_images(reconstruction: np.ndarray, reference: np.ndarray, ms_ssim_sigma: float = 1.0) -> dict:
    """Compute MAE, MSE, PSNR, SSIM, MS-SSIM and FRC of amplitude and phase.

    Amplitude images are `|image|`. The phase of the reference is `angle(reference)`. The
    phase of the reconstruction is `angle(reconstruction)` plus the multiple of 2 pi that
    brings it within pi of the reference's phase. So a reconstruction close to the
    reference shows no spurious 2 pi jump where the phase passes +-pi.

    Metric definitions:

    - `mae`, `mse`: mean absolute and mean squared difference (phase in radians).
    - `psnr`: `10 log10(data_range**2 / mse)` in dB, and `float('inf')` when `mse` is 0.
      `json.dumps(..., allow_nan=False)` rejects infinity, so write results through
      `json_ready`, which turns it into None.
    - `data_range`: the reference's range (max - min) of that component. A reference
      amplitude that is constant (range below `CONSTANT_RELATIVE_RANGE` of its maximum)
      falls back to its maximum (1.0 when that is 0), and a constant reference phase to
      2 pi. It sets the PSNR peak and the SSIM constants.
    - `ssim`: `skimage.metrics.structural_similarity` with Gaussian weights of sigma 1.5
      (11 x 11 taps) and population covariances, as in Wang et al.'s SSIM. Images too
      small for that window get the largest odd window that fits, with
      sigma = radius / 3.5.
    - `ms_ssim`: the product over scales of `max(ssim_j, 0) ** w_j` with
      `MS_SSIM_WEIGHTS`, where scale j + 1 is scale j averaged over 2 x 2 blocks. This
      uses the full SSIM at every scale, whereas the original MS-SSIM keeps the luminance
      term at the coarsest scale only. The amplitude images (not the phase) are
      smoothed with a Gaussian of sigma `ms_ssim_sigma` pixels first, so that pixel
      noise does not dominate (0 turns smoothing off). Scales whose images would be
      smaller than 3 x 3 are dropped and the remaining weights renormalised. So images
      under 48 px on a side get fewer than five scales, and `ms_ssim_levels` records how many.
    - `frc50`, `frc17`: resolution in pixels, `1 / frequency` where the FRC first falls
      below 0.5 and 1/7 (`fly64.metrics.frc`). An FRC that never falls below gives 2 px,
      the Nyquist limit, and one already below at the first ring gives infinity.
    - `frc_frequency` (cycles per pixel) and `frc_curve`: the FRC as lists of floats.

    Args:
        reconstruction: complex (H, W), aligned to the reference.
        reference: complex (H, W), the ground truth.
        ms_ssim_sigma: Gaussian sigma in pixels applied to the amplitude before MS-SSIM, >= 0.

    Returns:
        `{"amplitude": {...}, "phase": {...}, "ms_ssim_sigma": float, "ms_ssim_levels": int,
        "shape": [H, W]}` with the metrics above as Python floats.

    Raises:
        InputError: the images are not 2-D arrays of one shape of at least 4 x 4 pixels,
            contain NaN or infinite values, or `ms_ssim_sigma` is negative.
    """
    reconstruction = _as_complex_image(reconstruction, "reconstruction")
    reference = _as_complex_image(reference, "reference")
    if reconstruction.shape != reference.shape:
        raise InputError(
            f"reconstruction has shape {reconstruction.shape} and reference {reference.shape}; expected equal shapes"
        )
    if not (ms_ssim_sigma >= 0 and math.isfinite(ms_ssim_sigma)):
        raise InputError(f"ms_ssim_sigma is {ms_ssim_sigma}; expected a finite value >= 0 (pixels)")

    reference_amplitude = np.abs(reference)
    reconstruction_amplitude = np.abs(reconstruction)
    reference_phase = np.angle(reference)
    reconstruction_phase = np.angle(reconstruction)
    reconstruction_phase += 2.0 * math.pi * np.round((reference_phase - reconstruction_phase) / (2.0 * math.pi))

    amplitude_range = _range_or(reference_amplitude, fallback=float(reference_amplitude.max()) or 1.0)
    phase_range = _range_or(reference_phase, fallback=2.0 * math.pi)
    levels = ms_ssim_level_count(reference.shape)

    amplitude = _component_metrics(
        reconstruction_amplitude, reference_amplitude, amplitude_range, smoothing_sigma_px=ms_ssim_sigma, levels=levels
    )
    phase = _component_metrics(reconstruction_phase, reference_phase, phase_range, smoothing_sigma_px=0.0, levels=levels)
    return {
        "amplitude": amplitude,
        "phase": phase,
        "ms_ssim_sigma": float(ms_ssim_sigma),
        "ms_ssim_levels": levels,
        "shape": [int(reference.shape[0]), int(reference.shape[1])],
    }


def psnr_db(mse: float, data_range: float) -> float:
    """Return the peak signal-to-noise ratio in dB, `float('inf')` when `mse` is 0."""
    if mse == 0:
        return float("inf")
    return float(10.0 * math.log10(data_range**2 / mse))


def ssim(image_a: np.ndarray, image_b: np.ndarray, data_range: float) -> float:
    """Compute the SSIM of two real images with the Gaussian window described in `compare_images`.

    Raises:
        InputError: an image side is shorter than 3 pixels.
    """
    shorter_side = min(image_a.shape)
    if shorter_side < SSIM_MIN_WINDOW_PX:
        raise InputError(f"image of shape {image_a.shape} is too small for SSIM; expected at least 3 x 3 pixels")
    window_px = min(SSIM_MAX_WINDOW_PX, shorter_side if shorter_side % 2 == 1 else shorter_side - 1)
    # skimage derives the window radius from sigma as int(3.5 * sigma + 0.5), and this
    # sigma gives back exactly the radius of `window_px`.
    sigma = min(SSIM_GAUSSIAN_SIGMA, ((window_px - 1) // 2) / SSIM_TRUNCATE_SIGMAS)
    return float(
        structural_similarity(
            image_a,
            image_b,
            data_range=data_range,
            gaussian_weights=True,
            sigma=sigma,
            use_sample_covariance=False,
        )
    )


def ms_ssim_level_count(shape: tuple[int, int]) -> int:
    """Return how many MS-SSIM scales (at most 5) keep images of `shape` at least 3 x 3 pixels."""
    shorter_side = min(shape)
    levels = 0
    while levels < len(MS_SSIM_WEIGHTS) and shorter_side >= SSIM_MIN_WINDOW_PX:
        levels += 1
        shorter_side //= 2
    return levels


def ms_ssim(image_a: np.ndarray, image_b: np.ndarray, data_range: float, levels: int = 5) -> float:
    """Compute multi-scale SSIM over `levels` scales, as described in `compare_images`.

    Raises:
        InputError: `levels` is not in 1..5, or a scale is smaller than 3 x 3 pixels.
    """
    if not 1 <= levels <= len(MS_SSIM_WEIGHTS):
        raise InputError(f"MS-SSIM levels is {levels}; expected 1 to {len(MS_SSIM_WEIGHTS)}")
    weights = np.asarray(MS_SSIM_WEIGHTS[:levels])
    weights = weights / weights.sum()
    result = 1.0
    for level, weight in enumerate(weights):
        if level > 0:
            image_a = _downsample_2x(image_a)
            image_b = _downsample_2x(image_b)
        result *= max(ssim(image_a, image_b, data_range), 0.0) ** weight
    return float(result)


def json_ready(metrics):
    """Return a copy of `metrics` (nested dicts and lists) with NaN and infinite floats replaced by None."""
    if isinstance(metrics, dict):
        return {key: json_ready(value) for key, value in metrics.items()}
    if isinstance(metrics, (list, tuple)):
        return [json_ready(value) for value in metrics]
    if isinstance(metrics, float) and not math.isfinite(metrics):
        return None
    return metrics


def _component_metrics(
    reconstruction: np.ndarray, reference: np.ndarray, data_range: float, smoothing_sigma_px: float, levels: int
) -> dict:
    difference = reconstruction - reference
    mse = float(np.mean(difference**2))

    if smoothing_sigma_px > 0:
        smoothed_reconstruction = gaussian_filter(reconstruction, smoothing_sigma_px)
        smoothed_reference = gaussian_filter(reference, smoothing_sigma_px)
    else:
        smoothed_reconstruction, smoothed_reference = reconstruction, reference

    frequency, frc = fourier_ring_correlation(reconstruction, reference)
    return {
        "mae": float(np.mean(np.abs(difference))),
        "mse": mse,
        "psnr": psnr_db(mse, data_range),
        "ssim": ssim(reconstruction, reference, data_range),
        "ms_ssim": ms_ssim(smoothed_reconstruction, smoothed_reference, data_range, levels),
        "frc50": _resolution_px(frc_resolution(frequency, frc, THRESHOLD_HALF)),
        "frc17": _resolution_px(frc_resolution(frequency, frc, THRESHOLD_ONE_SEVENTH)),
        "frc_frequency": frequency.tolist(),
        "frc_curve": frc.tolist(),
        "data_range": float(data_range),
    }


def _resolution_px(frequency_cycles_per_px: float) -> float:
    """Return `1 / frequency`, and infinity for a crossing at zero frequency."""
    if frequency_cycles_per_px <= 0:
        return float("inf")
    return 1.0 / frequency_cycles_per_px


def _range_or(values: np.ndarray, fallback: float) -> float:
    """Return max - min of `values`, or `fallback` when the values are constant up to rounding."""
    value_range = float(values.max() - values.min())
    if value_range <= CONSTANT_RELATIVE_RANGE * float(np.abs(values).max()) or value_range == 0:
        return float(fallback)
    return value_range


def _downsample_2x(image: np.ndarray) -> np.ndarray:
    rows, columns = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    blocks = image[:rows, :columns].reshape(rows // 2, 2, columns // 2, 2)
    return blocks.mean(axis=(1, 3))


def _as_complex_image(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"{name} has shape {array.shape}; expected a 2-D (H, W) image")
    if min(array.shape) < MIN_IMAGE_SIDE_PX:
        raise InputError(f"{name} has shape {array.shape}; expected at least 4 x 4 pixels")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values")
    return array.astype(np.complex128, copy=False)
