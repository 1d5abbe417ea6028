"""Fourier ring correlation (FRC) of two images and the resolution where it crosses a threshold.

The FRC at spatial frequency q is the normalised cross-correlation of the two images'
Fourier coefficients on the ring |k| ~ q:

    FRC(q) = Re(sum F_a conj(F_b)) / sqrt(sum |F_a|^2 * sum |F_b|^2)

It is 1 where the images agree at that frequency and near 0 where they share only noise.
Common thresholds are 0.5 and 1/7 (about 0.143).
"""

import numpy as np
from scipy.signal.windows import tukey

from fly64.errors import InputError

# Fraction of each side that the apodisation window tapers to zero (alpha = 1 would be a
# Hann window). Tapering stops the jump between opposite image edges from adding a cross
# of spurious correlation, shared by both images, to every ring.
FRC_TUKEY_ALPHA = 0.5

THRESHOLD_HALF = 0.5
THRESHOLD_ONE_SEVENTH = 1.0 / 7.0


def fourier_ring_correlation(image_a: np.ndarray, image_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compute the FRC of two images of one shape.

    Each image has its mean subtracted and is multiplied by a separable Tukey window
    (`FRC_TUKEY_ALPHA`) before the FFT. Rings are one frequency step `1 / min(H, W)` wide.
    They run from 0 to 0.5 cycles/pixel, the Nyquist frequency of the shorter side, and
    the corners of the spectrum beyond it are left out. A ring where both images have zero power counts as
    full agreement (FRC 1), and a ring where only one has zero power as none (FRC 0).
    So the FRC of an image with itself is 1 on every ring.

    Args:
        image_a: real or complex (H, W).
        image_b: real or complex (H, W).

    Returns:
        `(frequency, frc)`: float64 arrays of `min(H, W) // 2 + 1` rings, the spatial
        frequency in cycles per pixel and the FRC on each ring, in [-1, 1].

    Raises:
        InputError: the images are not 2-D, differ in shape, are smaller than 4 x 4 or
            contain NaN or infinite values.
    """
    image_a = _as_image(image_a, "image_a")
    image_b = _as_image(image_b, "image_b")
    if image_a.shape != image_b.shape:
        raise InputError(f"FRC images have shapes {image_a.shape} and {image_b.shape}; expected equal shapes")

    window = np.outer(tukey(image_a.shape[0], FRC_TUKEY_ALPHA), tukey(image_a.shape[1], FRC_TUKEY_ALPHA))
    spectrum_a = np.fft.fft2(window * (image_a - image_a.mean()))
    spectrum_b = np.fft.fft2(window * (image_b - image_b.mean()))

    ring_index, ring_count = _ring_indices(image_a.shape)
    inside = ring_index < ring_count
    rings = ring_index[inside]
    cross = np.bincount(rings, weights=np.real(spectrum_a * np.conj(spectrum_b))[inside], minlength=ring_count)
    power_a = np.bincount(rings, weights=(np.abs(spectrum_a) ** 2)[inside], minlength=ring_count)
    power_b = np.bincount(rings, weights=(np.abs(spectrum_b) ** 2)[inside], minlength=ring_count)

    both_zero = (power_a == 0) & (power_b == 0)
    denominator = np.sqrt(power_a * power_b)
    frc = np.divide(cross, denominator, out=np.zeros(ring_count), where=denominator > 0)
    frc[both_zero] = 1.0
    frc = np.clip(frc, -1.0, 1.0)

    frequency = np.arange(ring_count, dtype=np.float64) / min(image_a.shape)
    return frequency, frc


def frc_resolution(frequency: np.ndarray, frc: np.ndarray, threshold: float) -> float:
    """Return the spatial frequency (cycles/pixel) where the FRC first falls below `threshold`.

    The search starts at the second ring, because the zero-frequency ring contains only
    what the window leaves of the subtracted means. The crossing is interpolated linearly
    between the last ring at or above the threshold and the first ring below it. When the
    second ring is already below the threshold, the result is 0: no ring contains detail
    the images share, and interpolating towards the zero-frequency ring would give a
    resolution coarser than the image itself. When
    the FRC never falls below the threshold, the result is the highest frequency given
    (the Nyquist frequency, 0.5, for the output of `fourier_ring_correlation`): the
    images agree up to the finest detail the pixels can hold. The resolution in pixels
    is `1 / frequency`.

    Raises:
        InputError: the arrays differ in length, hold fewer than two rings or non-finite
            values, or `threshold` is not in (0, 1].
    """
    frequency = np.asarray(frequency, dtype=np.float64)
    frc = np.asarray(frc, dtype=np.float64)
    if frequency.ndim != 1 or frequency.shape != frc.shape or frequency.size < 2:
        raise InputError(
            f"FRC curve has frequency shape {frequency.shape} and value shape {frc.shape}; "
            "expected two 1-D arrays of one length >= 2"
        )
    if not (np.all(np.isfinite(frequency)) and np.all(np.isfinite(frc))):
        raise InputError("FRC curve contains NaN or infinite values")
    if not 0 < threshold <= 1:
        raise InputError(f"FRC threshold is {threshold}; expected a value in (0, 1]")

    below = np.flatnonzero(frc[1:] < threshold)
    if below.size == 0:
        return float(frequency[-1])
    first_below = int(below[0]) + 1
    if first_below == 1:
        return float(frequency[0])
    last_above = first_below - 1

    fraction = (frc[last_above] - threshold) / (frc[last_above] - frc[first_below])
    return float(frequency[last_above] + fraction * (frequency[first_below] - frequency[last_above]))


def _ring_indices(shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Return each Fourier pixel's ring index (int64, `shape`) and the number of rings up to Nyquist."""
    shorter_side = min(shape)
    frequency_y = np.fft.fftfreq(shape[0])
    frequency_x = np.fft.fftfreq(shape[1])
    radius = np.hypot(frequency_y[:, None], frequency_x[None, :])
    ring_index = np.round(radius * shorter_side).astype(np.int64)
    return ring_index, shorter_side // 2 + 1


def _as_image(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"{name} has shape {array.shape}; expected a 2-D (H, W) image")
    if min(array.shape) < 4:
        raise InputError(f"{name} has shape {array.shape}; expected at least 4 x 4 pixels for an FRC")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values")
    if np.iscomplexobj(array):
        return array.astype(np.complex128, copy=False)
    return array.astype(np.float64, copy=False)
