"""The embedded synthetic complex object used when a study simulates its own data.

Amplitude and phase carry different images so that a reconstruction that mixes them up
shows it, and both have structure from single pixels up to the whole object:

- amplitude: the `camera` photograph shipped with scikit-image, mapped to [0.3, 1];
- phase: the `coins` photograph blended with a resolution target (a Siemens star and
  groups of bars with periods of 2 to 16 pixels), mapped to [-pi/2, pi/2].
"""

import numpy as np
import skimage.data
import skimage.transform

from fly64.errors import InputError

MIN_OBJECT_SIZE_PX = 16
AMPLITUDE_MIN = 0.3
AMPLITUDE_MAX = 1.0
PHASE_MAX_RAD = np.pi / 2
# Weight of the resolution target against the photograph in the phase.
TARGET_WEIGHT = 0.5
SIEMENS_STAR_SPOKES = 24
BAR_PERIODS_PX = (2, 3, 4, 6, 8, 12, 16)


def default_object(size_px: int) -> np.ndarray:
    """Build the synthetic object, complex64 (M, M), deterministic for a given M.

    Amplitude lies in [0.3, 1] and phase in [-pi/2, pi/2].

    Raises:
        InputError: `size_px` is below 16.
    """
    if size_px < MIN_OBJECT_SIZE_PX:
        raise InputError(f"object size {size_px} px is too small; expected at least {MIN_OBJECT_SIZE_PX}")

    amplitude_image = _resized_unit_image(skimage.data.camera(), size_px)
    amplitude = AMPLITUDE_MIN + (AMPLITUDE_MAX - AMPLITUDE_MIN) * amplitude_image

    photograph = _resized_unit_image(skimage.data.coins(), size_px)
    target = resolution_target(size_px)
    phase_image = (1.0 - TARGET_WEIGHT) * photograph + TARGET_WEIGHT * target
    phase = PHASE_MAX_RAD * (2.0 * phase_image - 1.0)

    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def resolution_target(size_px: int) -> np.ndarray:
    """Draw a float64 (M, M) image in [0, 1]: a Siemens star and groups of bars.

    The star fills the upper-left quarter. Bar groups of the periods in `BAR_PERIODS_PX`
    (in pixels, so independent of M) run as vertical bars across the upper-right quarter
    and as horizontal bars across the lower-left quarter. The lower-right quarter is 0.5.
    """
    target = np.full((size_px, size_px), 0.5)
    half = size_px // 2
    rows, columns = np.mgrid[0:half, 0:half].astype(np.float64)

    centre = (half - 1) / 2.0
    radius = np.hypot(rows - centre, columns - centre)
    angle = np.arctan2(rows - centre, columns - centre)
    star = 0.5 + 0.5 * np.sign(np.sin(SIEMENS_STAR_SPOKES / 2 * angle))
    target[:half, :half] = np.where(radius <= 0.45 * half, star, 0.5)

    bars = _bar_groups(half)
    target[:half, half : 2 * half] = bars
    target[half : 2 * half, :half] = bars.T
    return target


def _bar_groups(side_px: int) -> np.ndarray:
    """Draw vertical bars in a (side, side) block: one band of columns per period."""
    columns = np.arange(side_px)
    band = np.minimum(columns * len(BAR_PERIODS_PX) // max(side_px, 1), len(BAR_PERIODS_PX) - 1)
    periods = np.asarray(BAR_PERIODS_PX)[band]
    bar_row = ((columns % periods) < periods / 2).astype(np.float64)
    return np.broadcast_to(bar_row, (side_px, side_px)).copy()


def _resized_unit_image(image: np.ndarray, size_px: int) -> np.ndarray:
    """Crop an image to a centred square, resize it to (M, M) and scale it to [0, 1]."""
    side = min(image.shape)
    top = (image.shape[0] - side) // 2
    left = (image.shape[1] - side) // 2
    square = image[top : top + side, left : left + side].astype(np.float64)

    resized = skimage.transform.resize(square, (size_px, size_px), order=1, anti_aliasing=side > size_px)
    low, high = resized.min(), resized.max()
    return (resized - low) / (high - low)
