"""Stitching predicted object patches into one object with a central-crop window.

A model predicts each N x N patch best near its centre, where the probe illuminates
the object, and worst near its edges, which the probe barely reaches. Stitching
therefore weights every patch by a window `w` that is 1 over the central region and
tapers to 0 at the patch edge, and averages the weighted patches:

    object = insert(w * patches) / insert(w)     where insert(w) >= min_weight

`insert` is the bilinear splat `fly64.physics.patches.insert_patches`, the adjoint of
patch extraction, so sub-pixel scan positions are handled the same way as in the
simulation. Pixels whose splatted window is below `min_weight` (no patch reaches them,
or only a patch's outermost edge does) get `fill_value`, 1 + 0j by default: free space,
amplitude 1 and phase 0, so the object never contains NaN.

Window (per axis, for patch pixel j with offset `d = j - N // 2` from the scan
position): 1 where `|d| <= central_fraction * N / 2`, then `cos^2` down to 0 at
`|d| = N / 2`. The 2-D window is the outer product of the two axes. With the default
`central_fraction = 0.5`, the flat part is the central N/2 x N/2 pixels.
"""

import dataclasses

import numpy as np

from fly64.errors import InputError
from fly64.physics.patches import insert_patches

DEFAULT_CENTRAL_FRACTION = 0.5
# Splatted window weight below which a pixel counts as not covered. The stitched value
# is a weighted mean, so small weights do not make it unstable. The threshold only keeps
# float32 rounding residue at the outermost patch edges out of the object.
DEFAULT_MIN_WEIGHT = 1e-3
DEFAULT_FILL_VALUE = complex(1.0, 0.0)


def central_window(patch_size: int, central_fraction: float = DEFAULT_CENTRAL_FRACTION) -> np.ndarray:
    """Build the stitching window, float32 (N, N), 1 in the centre and tapering to 0 at the edges.

    Raises:
        InputError: `patch_size` < 2 or `central_fraction` outside [0, 1].
    """
    if patch_size < 2:
        raise InputError(f"patch_size is {patch_size}; expected at least 2 pixels")
    if not 0.0 <= central_fraction <= 1.0:
        raise InputError(f"stitching central_fraction is {central_fraction}; expected a value in [0, 1]")

    half_width = patch_size / 2
    flat_half_width = central_fraction * half_width
    distance = np.abs(np.arange(patch_size) - patch_size // 2).astype(np.float64)
    profile = np.ones(patch_size)
    if flat_half_width < half_width:
        taper = np.clip((distance - flat_half_width) / (half_width - flat_half_width), 0.0, 1.0)
        profile = np.cos(0.5 * np.pi * taper) ** 2
    return np.outer(profile, profile).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class StitchedObject:
    """A stitched object and how much window weight each of its pixels received.

    Attributes:
        object: complex64 (M_rows, M_columns); `fill_value` where `coverage < min_weight`.
        coverage: float32 (M_rows, M_columns), the splatted window weights.
    """

    object: np.ndarray
    coverage: np.ndarray


class PatchStitcher:
    """Accumulate windowed patches batch by batch, keeping one canvas in memory instead of all patches.

    Usage: `add` each batch of patches with its positions, then call `result`.
    Adding patches in one call or in several batches gives the same object up to
    float rounding.
    """

    def __init__(
        self,
        object_shape: tuple[int, int],
        patch_size: int,
        central_fraction: float = DEFAULT_CENTRAL_FRACTION,
        min_weight: float = DEFAULT_MIN_WEIGHT,
        fill_value: complex = DEFAULT_FILL_VALUE,
    ) -> None:
        """Prepare an empty canvas of `object_shape` for patches of side `patch_size`.

        Raises:
            InputError: a shape or setting is invalid (see `central_window`), or
                `min_weight` is not positive.
        """
        if len(object_shape) != 2 or min(object_shape) < patch_size:
            raise InputError(f"object shape {tuple(object_shape)} cannot hold patches of {patch_size} px")
        if not min_weight > 0:
            raise InputError(f"stitching min_weight is {min_weight}; expected a positive value")
        self.object_shape = (int(object_shape[0]), int(object_shape[1]))
        self.patch_size = int(patch_size)
        self.central_fraction = float(central_fraction)
        self.min_weight = float(min_weight)
        self.fill_value = complex(fill_value)
        self.window = central_window(self.patch_size, self.central_fraction)
        self._canvas = np.zeros(self.object_shape, dtype=np.complex128)
        self._coverage = np.zeros(self.object_shape, dtype=np.float64)
        self.n_patches = 0

    def add(self, patches: np.ndarray, positions_xy: np.ndarray) -> None:
        """Splat complex (n, N, N) patches centred at float (n, 2) positions (x, y).

        Raises:
            InputError: the patches are not (n, N, N) with this stitcher's N, contain NaN
                or infinite values, or a patch leaves the object.
        """
        patches = np.asarray(patches)
        if patches.ndim != 3 or patches.shape[1:] != (self.patch_size, self.patch_size):
            raise InputError(
                f"patches have shape {patches.shape}; expected (n, {self.patch_size}, {self.patch_size})"
            )
        if patches.shape[0] == 0:
            return
        if not np.all(np.isfinite(patches)):
            raise InputError("patches contain NaN or infinite values; cannot stitch them")

        canvas, _ = insert_patches(self.object_shape, patches * self.window, positions_xy)
        windows = np.broadcast_to(self.window, patches.shape)
        splatted_window, _ = insert_patches(self.object_shape, windows, positions_xy)
        self._canvas += canvas
        self._coverage += splatted_window.real
        self.n_patches += int(patches.shape[0])

    def result(self) -> StitchedObject:
        """Return the stitched object and coverage of the patches added so far."""
        covered = self._coverage >= self.min_weight
        stitched = np.full(self.object_shape, self.fill_value, dtype=np.complex128)
        stitched[covered] = self._canvas[covered] / self._coverage[covered]
        return StitchedObject(object=stitched.astype(np.complex64), coverage=self._coverage.astype(np.float32))

    def describe(self) -> dict:
        """Return the stitching settings as JSON-ready data, for provenance."""
        return {
            "method": "central-crop window, bilinear splat (insert_patches), weighted mean",
            "window": "1 for |d| <= central_fraction * N / 2, cos^2 taper to 0 at |d| = N / 2, separable",
            "central_fraction": self.central_fraction,
            "min_weight": self.min_weight,
            "fill_value": [self.fill_value.real, self.fill_value.imag],
            "patch_size": self.patch_size,
            "n_patches": self.n_patches,
        }


def stitch_patches_windowed(
    object_shape: tuple[int, int],
    patches: np.ndarray,
    positions_xy: np.ndarray,
    central_fraction: float = DEFAULT_CENTRAL_FRACTION,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill_value: complex = DEFAULT_FILL_VALUE,
) -> StitchedObject:
    """Stitch complex (n, N, N) patches at (n, 2) positions (x, y) in one call; see `PatchStitcher`."""
    patches = np.asarray(patches)
    if patches.ndim != 3:
        raise InputError(f"patches have shape {patches.shape}; expected (n, N, N)")
    stitcher = PatchStitcher(object_shape, patches.shape[-1], central_fraction, min_weight, fill_value)
    stitcher.add(patches, positions_xy)
    return stitcher.result()
