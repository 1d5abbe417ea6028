"""Image registration: sub-pixel shift, phase offset and ramp removal, crop to the scanned region.

A reconstruction and its ground truth differ by ambiguities that do not reflect its
quality: a small translation, a constant phase offset and a linear phase ramp (the
Fourier-space counterpart of a translation of the diffraction patterns). This module
removes them so that `fly64.metrics.quality` compares like with like.

Pixel coordinates: axis 0 is y (rows), axis 1 is x (columns). Shifts are `(dy, dx)` in
pixels, positive towards higher indices.
"""

import dataclasses

import numpy as np
from scipy.ndimage import binary_erosion, fourier_shift
from scipy.signal.windows import tukey
from skimage.registration import phase_cross_correlation

from fly64.errors import InputError

# Fraction of each side that the registration window tapers to zero. The taper removes
# the jump at the image borders, which would otherwise pull the correlation peak to zero
# shift because both images share the same borders.
REGISTRATION_TUKEY_ALPHA = 0.25

# Registration passes: the second measures what is left after applying the first estimate.
REGISTRATION_PASSES = 2

# Fit passes of the phase ramp. The first pass removes the bulk of the ramp estimated
# from neighbour phase differences, the second fits what is left by least squares.
RAMP_FIT_PASSES = 2

# Pixels around the crop box that are shifted together with it, so that the mirrored
# extension of `apply_shift` starts this far outside the crop.
SHIFT_GUARD_PX = 16


@dataclasses.dataclass(frozen=True)
class CropBox:
    """Rectangle of pixels `[row_start, row_stop) x [column_start, column_stop)`."""

    row_start: int
    row_stop: int
    column_start: int
    column_stop: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row_start, self.row_stop), slice(self.column_start, self.column_stop)

    @property
    def shape(self) -> tuple[int, int]:
        return self.row_stop - self.row_start, self.column_stop - self.column_start

    def as_list(self) -> list[int]:
        """Return `[row_start, row_stop, column_start, column_stop]`, for JSON."""
        return [self.row_start, self.row_stop, self.column_start, self.column_stop]


@dataclasses.dataclass(frozen=True)
class PhaseRamp:
    """Phase `offset_rad + slope_y_rad_per_px * y + slope_x_rad_per_px * x`.

    `y` and `x` are pixel indices minus the image centre `((rows - 1) / 2, (columns - 1) / 2)`,
    so `offset_rad` is the phase at the centre of the image.
    """

    offset_rad: float
    slope_y_rad_per_px: float
    slope_x_rad_per_px: float

    def evaluate(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the ramp's phase in radians as float64 of `shape`."""
        y, x = _centred_coordinates(shape)
        return self.offset_rad + self.slope_y_rad_per_px * y + self.slope_x_rad_per_px * x


def register_shift(reference: np.ndarray, moving: np.ndarray, upsample_factor: int = 100) -> tuple[float, float]:
    """Estimate the sub-pixel shift `(dy, dx)` that moves `moving` onto `reference`.

    `apply_shift(moving, register_shift(reference, moving))` approximates `reference`.
    The estimate is the peak of the cross-correlation of the complex images
    (`skimage.registration.phase_cross_correlation` with `normalization=None`), refined
    to `1 / upsample_factor` px. Complex images register objects with phase contrast
    only, and a constant phase offset does not move the peak. The plain cross-correlation
    is used because the phase-normalised one follows the noise of smooth objects: on a
    noisy LSQML reconstruction of a smooth phase object it was off by 0.2 px where the
    plain one was within 0.01 px.

    Both images have their mean removed and are tapered by a Tukey window
    (`REGISTRATION_TUKEY_ALPHA`). The window pulls the peak towards zero shift, so a
    second pass registers `moving` after shifting it by the first estimate, where that
    pull is negligible. A linear phase ramp in `moving` biases the estimate slightly,
    so `align_to_reference` registers again after removing the ramp.

    Args:
        reference: real or complex (H, W) image.
        moving: real or complex (H, W) image of the same shape.
        upsample_factor: sub-pixel precision as a fraction of a pixel, >= 1.

    Raises:
        InputError: the images are not 2-D, differ in shape, are smaller than 2 x 2 or
            contain NaN or infinite values, or `upsample_factor` < 1.
    """
    reference = _as_complex_image(reference, "reference")
    moving = _as_complex_image(moving, "moving")
    _check_same_shape(reference, moving)
    if upsample_factor < 1:
        raise InputError(f"upsample_factor is {upsample_factor}; expected an integer >= 1")

    window = _tukey_window_2d(reference.shape, REGISTRATION_TUKEY_ALPHA)
    tapered_reference = window * (reference - reference.mean())
    total_shift = np.zeros(2)
    for _ in range(REGISTRATION_PASSES):
        shifted = apply_shift(moving, total_shift) if np.any(total_shift) else moving
        shift, _, _ = phase_cross_correlation(
            tapered_reference,
            window * (shifted - shifted.mean()),
            upsample_factor=int(upsample_factor),
            normalization=None,
        )
        total_shift = total_shift + shift
    return float(total_shift[0]), float(total_shift[1])


def apply_shift(image: np.ndarray, shift_yx: tuple[float, float]) -> np.ndarray:
    """Translate `image` by `(dy, dx)` pixels with a Fourier shift of its mirrored extension.

    The image is extended by mirror images of about half its size on every side
    (`numpy.pad(mode="symmetric")`) and shifted in Fourier space (`scipy.ndimage.fourier_shift`),
    then the original frame is cut out. The extension joins continuously at the
    periodic boundary of the FFT, so edges do not ring into the image as they do with a
    plain periodic shift, and pixels that enter at an edge come from the mirror image.
    Sub-pixel shifts of band-limited content are accurate away from the edges.

    Returns:
        float64 for a real image, complex128 for a complex one, of the input's shape.

    Raises:
        InputError: the image is not 2-D or the shift is not two finite numbers.
    """
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"image has shape {array.shape}; expected a 2-D (H, W) array")
    shift = np.asarray(shift_yx, dtype=np.float64)
    if shift.shape != (2,) or not np.all(np.isfinite(shift)):
        raise InputError(f"shift is {shift_yx!r}; expected two finite numbers (dy, dx) in pixels")

    array = array.astype(np.complex128 if np.iscomplexobj(array) else np.float64, copy=False)
    if not np.any(shift):
        # An FFT round trip would add rounding noise to an image that needs no shift.
        return array.copy()
    # Padding to exactly twice the size makes the mirrored image one period of the FFT.
    pad_rows, pad_columns = array.shape[0] // 2, array.shape[1] // 2
    padding = ((pad_rows, array.shape[0] - pad_rows), (pad_columns, array.shape[1] - pad_columns))
    extended = np.pad(array, padding, mode="symmetric")
    shifted = np.fft.ifft2(fourier_shift(np.fft.fft2(extended), shift))
    shifted = shifted[pad_rows : pad_rows + array.shape[0], pad_columns : pad_columns + array.shape[1]]
    if np.iscomplexobj(array):
        return shifted
    return shifted.real


def fit_phase_ramp(reconstruction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> PhaseRamp:
    """Fit the phase offset and linear ramp of `reconstruction` relative to `reference`.

    The fit works on the complex ratio `z = reconstruction * conj(reference)`, never on
    wrapped phase values, so phase differences beyond +-pi do not break it:

    1. the slopes start as the angle of the sum of neighbour products
       `z[y, x + 1] * conj(z[y, x])` (and likewise along y), which is the mean phase
       gradient as long as the ramp changes by less than pi per pixel;
    2. the offset is the angle of the sum of `z` with that ramp removed;
    3. the remaining small phase `angle(z * exp(-1j * ramp))` is fitted to
       `a + b * y + c * x` by weighted least squares and added to the ramp (repeated
       `RAMP_FIT_PASSES` times).

    Every step weights the pixels by `|z| = |reconstruction| * |reference|`, so pixels
    without amplitude in either image carry no weight.

    Args:
        reconstruction: complex (H, W).
        reference: complex (H, W).
        mask: optional bool (H, W); only pixels where it is True enter the fit.

    Raises:
        InputError: shapes differ, the images are not 2-D or not finite, or the mask
            selects no pixel with non-zero amplitude in both images.
    """
    reconstruction = _as_complex_image(reconstruction, "reconstruction")
    reference = _as_complex_image(reference, "reference")
    _check_same_shape(reconstruction, reference)
    selected = _as_mask(mask, reconstruction.shape)

    ratio = np.where(selected, reconstruction * np.conj(reference), 0)
    weights = np.abs(ratio)
    if not np.any(weights > 0):
        raise InputError("phase ramp fit: no pixel in the mask has non-zero amplitude in both images")

    slope_y = float(np.angle(np.sum(ratio[1:, :] * np.conj(ratio[:-1, :]))))
    slope_x = float(np.angle(np.sum(ratio[:, 1:] * np.conj(ratio[:, :-1]))))
    slopes_only = PhaseRamp(0.0, slope_y, slope_x)
    offset_rad = float(np.angle(np.sum(ratio * np.exp(-1j * slopes_only.evaluate(ratio.shape)))))
    ramp = PhaseRamp(offset_rad, slope_y, slope_x)

    y, x = _centred_coordinates(ratio.shape)
    used = weights > 0
    design = np.stack([np.ones(int(used.sum())), y[used], x[used]], axis=1)
    root_weights = np.sqrt(weights[used])
    for _ in range(RAMP_FIT_PASSES):
        residual_rad = np.angle(ratio * np.exp(-1j * ramp.evaluate(ratio.shape)))[used]
        correction, *_ = np.linalg.lstsq(design * root_weights[:, None], residual_rad * root_weights, rcond=None)
        ramp = PhaseRamp(
            ramp.offset_rad + float(correction[0]),
            ramp.slope_y_rad_per_px + float(correction[1]),
            ramp.slope_x_rad_per_px + float(correction[2]),
        )
    return ramp


def remove_phase_offset_and_ramp(
    reconstruction: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Return `reconstruction` (complex128) with its phase offset and ramp relative to `reference` removed.

    The offset and ramp come from `fit_phase_ramp` over the pixels of `mask` (all pixels
    when None) and are removed from the whole image. Errors as in `fit_phase_ramp`.
    """
    reconstruction = _as_complex_image(reconstruction, "reconstruction")
    ramp = fit_phase_ramp(reconstruction, reference, mask)
    return reconstruction * np.exp(-1j * ramp.evaluate(reconstruction.shape))


def scanned_region_mask(
    object_shape: tuple[int, int], positions_xy: np.ndarray, patch_size: int, margin_px: int = 0
) -> np.ndarray:
    """Mark the object pixels that some patch covers, shrunk by `margin_px`, as bool (rows, columns).

    The patch centred at (x, y) covers columns `round(x) - N // 2 .. round(x) - N // 2 + N - 1`
    and the matching rows (the convention of `fly64.physics.patches`, with sub-pixel
    positions rounded). The covered region is then eroded by `margin_px` pixels, which
    also removes the border where few patterns overlap. The footprint is the whole patch,
    not the lit area: with a probe much narrower than N, add the unlit width (about
    N/2 minus the probe radius) to the margin.

    Raises:
        InputError: positions are not a finite (n, 2) array, `patch_size` < 1 or
            `margin_px` < 0.
    """
    positions = np.asarray(positions_xy, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2 or positions.shape[0] == 0:
        raise InputError(f"scan positions have shape {positions.shape}; expected (n, 2) columns (x, y) with n >= 1")
    if not np.all(np.isfinite(positions)):
        raise InputError("scan positions contain NaN or infinite values")
    if patch_size < 1:
        raise InputError(f"patch_size is {patch_size}; expected >= 1")
    if margin_px < 0:
        raise InputError(f"margin_px is {margin_px}; expected >= 0")

    rows, columns = int(object_shape[0]), int(object_shape[1])
    first_columns = np.round(positions[:, 0]).astype(np.int64) - patch_size // 2
    first_rows = np.round(positions[:, 1]).astype(np.int64) - patch_size // 2

    # Mark +1 at each patch's first corner and -1 past its other corners, so that the 2-D
    # running sum counts the patches covering each pixel. The padding keeps corners that
    # fall outside the object inside the array.
    pad = patch_size
    corners = np.zeros((rows + 2 * pad + 1, columns + 2 * pad + 1), dtype=np.int64)
    row_a = np.clip(first_rows + pad, 0, rows + 2 * pad)
    row_b = np.clip(first_rows + pad + patch_size, 0, rows + 2 * pad)
    column_a = np.clip(first_columns + pad, 0, columns + 2 * pad)
    column_b = np.clip(first_columns + pad + patch_size, 0, columns + 2 * pad)
    np.add.at(corners, (row_a, column_a), 1)
    np.add.at(corners, (row_a, column_b), -1)
    np.add.at(corners, (row_b, column_a), -1)
    np.add.at(corners, (row_b, column_b), 1)
    coverage = np.cumsum(np.cumsum(corners, axis=0), axis=1)[pad : pad + rows, pad : pad + columns]

    covered = coverage > 0
    if margin_px > 0:
        covered = binary_erosion(covered, iterations=int(margin_px), border_value=0)
    return covered


def bounding_box(mask: np.ndarray) -> CropBox:
    """Return the smallest `CropBox` that contains every True pixel of a 2-D bool mask.

    Raises:
        InputError: the mask is not 2-D or has no True pixel.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise InputError(f"scanned-region mask has shape {mask.shape}; expected a 2-D (H, W) array")
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise InputError("scanned-region mask selects no pixel; expected at least one True pixel")
    return CropBox(int(rows[0]), int(rows[-1]) + 1, int(columns[0]), int(columns[-1]) + 1)


def align_to_reference(
    reconstruction: np.ndarray,
    reference: np.ndarray,
    scanned_region: np.ndarray | CropBox,
    upsample_factor: int = 100,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Register `reconstruction` to `reference`, remove its phase offset and ramp, and crop both.

    Steps, all inside the crop box (the bounding box of `scanned_region`):

    1. register the crops with `register_shift`;
    2. fit the phase ramp of the shifted reconstruction over the region's pixels and
       remove its slopes from the unshifted reconstruction;
    3. register again, because a ramp biases the first estimate slightly;
    4. shift the reconstruction, fit the phase offset and ramp again over the region
       and remove them.

    Shifts act on the box grown by `SHIFT_GUARD_PX` on each side (less at the image
    edges), through `apply_shift`. Content within that guard band still reaches the
    crop, so the region should exclude the badly reconstructed scan border (for example
    `scanned_region_mask` with a margin of a few pixels).

    Args:
        reconstruction: complex (H, W), on the grid of `reference`.
        reference: complex (H, W), the ground-truth object.
        scanned_region: bool (H, W) mask of the region to compare, or a `CropBox`.
        upsample_factor: sub-pixel precision of the registration.

    Returns:
        `(aligned, reference_crop, info)`: complex128 crops of the box's shape, and a dict
        with `shift_px` `[dy, dx]` (applied to the reconstruction), `phase_offset_rad`,
        `phase_ramp_rad_per_px` `[along y, along x]` (the removed ramp, relative to the
        crop centre) and `crop_box` `[row_start, row_stop, column_start, column_stop]`.

    Raises:
        InputError: the images are not 2-D arrays of one shape, contain NaN or infinite
            values, or the region is empty, smaller than 2 x 2 px or outside the images.
    """
    reconstruction = _as_complex_image(reconstruction, "reconstruction")
    reference = _as_complex_image(reference, "reference")
    _check_same_shape(reconstruction, reference)

    if isinstance(scanned_region, CropBox):
        box = scanned_region
        inside = 0 <= box.row_start < box.row_stop <= reference.shape[0] and (
            0 <= box.column_start < box.column_stop <= reference.shape[1]
        )
        if not inside:
            raise InputError(f"crop box {box.as_list()} does not fit in images of shape {reference.shape}")
        region = np.zeros(reference.shape, dtype=bool)
        region[box.slices] = True
    else:
        region = _as_mask(scanned_region, reference.shape)
        box = bounding_box(region)
    if min(box.shape) < 2:
        raise InputError(f"crop box {box.as_list()} is {box.shape} px; expected at least 2 x 2 px")

    region_in_box = region[box.slices]
    reference_crop = reference[box.slices]

    first_shift = register_shift(reference_crop, reconstruction[box.slices], upsample_factor)
    first_ramp = fit_phase_ramp(_shift_crop(reconstruction, first_shift, box), reference_crop, region_in_box)
    slopes_only = dataclasses.replace(first_ramp, offset_rad=0.0)
    without_ramp = reconstruction * np.exp(-1j * _ramp_on_full_image(slopes_only, box, reference.shape))

    shift = register_shift(reference_crop, without_ramp[box.slices], upsample_factor)
    shifted_crop = _shift_crop(reconstruction, shift, box)
    ramp = fit_phase_ramp(shifted_crop, reference_crop, region_in_box)
    aligned = shifted_crop * np.exp(-1j * ramp.evaluate(shifted_crop.shape))

    info = {
        "shift_px": [shift[0], shift[1]],
        "phase_offset_rad": ramp.offset_rad,
        "phase_ramp_rad_per_px": [ramp.slope_y_rad_per_px, ramp.slope_x_rad_per_px],
        "crop_box": box.as_list(),
    }
    return aligned, reference_crop, info


def _shift_crop(image: np.ndarray, shift_yx: tuple[float, float], box: CropBox) -> np.ndarray:
    """Shift the part of `image` around `box` (with `SHIFT_GUARD_PX` to spare) and return the box."""
    row_start = max(box.row_start - SHIFT_GUARD_PX, 0)
    row_stop = min(box.row_stop + SHIFT_GUARD_PX, image.shape[0])
    column_start = max(box.column_start - SHIFT_GUARD_PX, 0)
    column_stop = min(box.column_stop + SHIFT_GUARD_PX, image.shape[1])
    shifted = apply_shift(image[row_start:row_stop, column_start:column_stop], shift_yx)
    rows = slice(box.row_start - row_start, box.row_stop - row_start)
    columns = slice(box.column_start - column_start, box.column_stop - column_start)
    return shifted[rows, columns]


def _ramp_on_full_image(ramp: PhaseRamp, box: CropBox, shape: tuple[int, int]) -> np.ndarray:
    """Evaluate a ramp defined relative to the centre of `box` over a whole image of `shape`."""
    rows = np.arange(shape[0]) - (box.row_start + (box.shape[0] - 1) / 2)
    columns = np.arange(shape[1]) - (box.column_start + (box.shape[1] - 1) / 2)
    return ramp.offset_rad + ramp.slope_y_rad_per_px * rows[:, None] + ramp.slope_x_rad_per_px * columns[None, :]


def _centred_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(shape[0], dtype=np.float64) - (shape[0] - 1) / 2
    columns = np.arange(shape[1], dtype=np.float64) - (shape[1] - 1) / 2
    return np.broadcast_to(rows[:, None], shape), np.broadcast_to(columns[None, :], shape)


def _tukey_window_2d(shape: tuple[int, int], alpha: float) -> np.ndarray:
    return np.outer(tukey(shape[0], alpha), tukey(shape[1], alpha))


def _as_complex_image(image: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"{name} has shape {array.shape}; expected a 2-D (H, W) image")
    if min(array.shape) < 2:
        raise InputError(f"{name} has shape {array.shape}; expected at least 2 x 2 pixels")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values")
    return array.astype(np.complex128, copy=False)


def _check_same_shape(first: np.ndarray, second: np.ndarray) -> None:
    if first.shape != second.shape:
        raise InputError(f"images have shapes {first.shape} and {second.shape}; expected equal shapes")


def _as_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputError(f"mask has shape {mask.shape}; expected {tuple(shape)}, the shape of the images")
    if mask.dtype != bool:
        raise InputError(f"mask has dtype {mask.dtype}; expected bool")
    return mask
