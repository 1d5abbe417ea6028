"""Training arrays in a framework-neutral form (NumPy, channels first).

A model takes groups of C = gridsize² patterns. This module turns a `fly64.contract.Dataset`
into per-group arrays: normalised input amplitudes, measured photon counts, member offsets
and, when the dataset has them, ground-truth patches.

Normalisation: the network input is `x = amplitude / f` with `f = sqrt(mean photons per
pattern) / N`, so `mean(x**2) == 1` over the dataset's patterns. Each dataset is normalised
by its own factor, so a model trained at one dose takes data of any dose of the same
geometry. The bundle records the training data's factor.

Memory: every array is gathered per group, so shared patterns are copied. At N = 128,
C = 4 and 1,000 groups, `amplitude` and `counts` take 262 MB each and `patches` 524 MB.
"""

import dataclasses
import logging

import numpy as np

from fly64.contract import Dataset
from fly64.errors import InputError
from fly64.physics.grouping import build_groups, group_offsets_px

logger = logging.getLogger(__name__)


def normalisation_factor(diffraction: np.ndarray) -> float:
    """Return f = sqrt(mean photons per pattern) / N for amplitudes of shape (..., N, N).

    Dividing the amplitudes by f gives inputs with `mean(x**2) == 1`. Any leading shape
    works: (n, N, N) patterns or (G, C, N, N) groups.

    Raises:
        InputError: the array has fewer than two dimensions, is not square in its last two,
            contains non-finite values, or contains no photons at all.
    """
    diffraction = np.asarray(diffraction)
    if diffraction.ndim < 2 or diffraction.shape[-1] != diffraction.shape[-2]:
        raise InputError(f"diffraction has shape {diffraction.shape}; expected (..., N, N) amplitudes")
    patch_size = diffraction.shape[-1]

    # float64 accumulation keeps the mean exact to float32 precision for millions of pixels.
    mean_intensity = float(np.mean(np.square(diffraction, dtype=np.float64)))
    if not np.isfinite(mean_intensity):
        raise InputError("diffraction contains NaN or infinite values; cannot compute the normalisation factor")
    if mean_intensity <= 0.0:
        raise InputError("diffraction contains no photons (all amplitudes are 0); cannot compute the normalisation factor")

    mean_photons_per_pattern = mean_intensity * patch_size**2
    return float(np.sqrt(mean_photons_per_pattern) / patch_size)


@dataclasses.dataclass
class TrainingArrays:
    """Per-group arrays for G groups of C patterns of N x N pixels, channels first.

    Attributes:
        amplitude: float32 (G, C, N, N), measured amplitudes divided by `norm_factor`.
        counts: float32 (G, C, N, N), measured photon counts, `diffraction**2`.
        offsets_px: float32 (G, C, 2), members' (x, y) positions relative to the group
            centre, in pixels; zeros for gridsize 1.
        patches: complex64 (G, C, N, N) ground-truth object patches, or None when the
            dataset has none.
        indices: int64 (G, C), each member's pattern index in the source dataset.
        norm_factor: the factor the amplitudes were divided by.
    """

    amplitude: np.ndarray
    counts: np.ndarray
    offsets_px: np.ndarray
    patches: np.ndarray | None
    indices: np.ndarray
    norm_factor: float

    @property
    def n_groups(self) -> int:
        return int(self.amplitude.shape[0])

    @property
    def channels(self) -> int:
        return int(self.amplitude.shape[1])

    @property
    def patch_size(self) -> int:
        return int(self.amplitude.shape[-1])

    def take(self, group_indices: np.ndarray) -> "TrainingArrays":
        """Return the groups at `group_indices`, in that order."""
        group_indices = np.asarray(group_indices, dtype=np.int64)
        return TrainingArrays(
            amplitude=self.amplitude[group_indices],
            counts=self.counts[group_indices],
            offsets_px=self.offsets_px[group_indices],
            patches=None if self.patches is None else self.patches[group_indices],
            indices=self.indices[group_indices],
            norm_factor=self.norm_factor,
        )


def build_training_arrays(
    dataset: Dataset,
    gridsize: int,
    neighbor_count: int,
    seed: int,
    norm_factor: float | None = None,
    max_groups: int = 0,
) -> TrainingArrays:
    """Group a dataset's patterns and gather the per-group arrays.

    Args:
        dataset: validated patterns, positions and (optionally) ground-truth patches.
        gridsize: 1 gives one group per pattern; 2 or more gives one group of gridsize²
            members per scan position, drawn by `fly64.physics.grouping.build_groups`
            from the K = `neighbor_count` nearest positions.
        neighbor_count: K, used for gridsize > 1 only.
        seed: seeds the grouping and the `max_groups` subset.
        norm_factor: divides the amplitudes; None computes `normalisation_factor` of the
            whole dataset.
        max_groups: when > 0 and smaller than the number of groups, keeps a seeded random
            subset of that many groups, in their original order.

    Raises:
        InputError: gridsize < 1, K < gridsize², too few positions for K, a norm_factor
            that is not finite and positive, or a negative max_groups.
    """
    if gridsize < 1:
        raise InputError(f"gridsize = {gridsize} is invalid; expected at least 1")
    if max_groups < 0:
        raise InputError(f"max_groups = {max_groups} is invalid; expected 0 (keep all) or a positive count")
    if norm_factor is None:
        norm_factor = normalisation_factor(dataset.diffraction)
    if not (np.isfinite(norm_factor) and norm_factor > 0):
        raise InputError(f"norm_factor = {norm_factor} is invalid; expected a finite positive number")

    group_size = gridsize**2
    positions_xy = dataset.positions_xy
    groups = build_groups(positions_xy, neighbor_count, group_size, seed)
    if gridsize == 1:
        offsets_px = np.zeros((groups.shape[0], 1, 2), dtype=np.float32)
    else:
        offsets_px = group_offsets_px(positions_xy, groups)

    if 0 < max_groups < groups.shape[0]:
        # A separate stream keeps the subset independent of how build_groups uses its seed.
        rng = np.random.default_rng([seed, max_groups])
        kept = np.sort(rng.choice(groups.shape[0], size=max_groups, replace=False))
        groups = groups[kept]
        offsets_px = offsets_px[kept]

    diffraction = dataset.diffraction[groups]
    amplitude = (diffraction / np.float32(norm_factor)).astype(np.float32)
    counts = np.square(diffraction, dtype=np.float32)
    patches = None if dataset.patches is None else dataset.patches[groups].astype(np.complex64, copy=False)

    logger.debug(
        "Built %d groups of %d patterns (N = %d, norm factor %.6g)",
        groups.shape[0], group_size, dataset.patch_size, norm_factor,
    )
    return TrainingArrays(
        amplitude=amplitude,
        counts=counts,
        offsets_px=offsets_px.astype(np.float32, copy=False),
        patches=patches,
        indices=groups.astype(np.int64, copy=False),
        norm_factor=float(norm_factor),
    )


def split_validation(arrays: TrainingArrays, fraction: float, seed: int) -> tuple[TrainingArrays, TrainingArrays]:
    """Split groups at random into training and validation sets.

    The validation set gets `round(fraction * G)` groups, at least one when fraction > 0,
    and the training set keeps at least one. Both keep their groups' original order.
    With gridsize > 1 the two sets may share patterns, because groups overlap.

    Returns:
        (train, validation); validation has zero groups when fraction is 0.

    Raises:
        InputError: fraction outside [0, 1), or fraction > 0 with fewer than 2 groups.
    """
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"validation fraction {fraction} is invalid; expected a value in [0, 1)")
    n_groups = arrays.n_groups
    if fraction == 0.0:
        return arrays, arrays.take(np.zeros(0, dtype=np.int64))
    if n_groups < 2:
        raise InputError(f"cannot split {n_groups} group(s) into training and validation sets; expected at least 2")

    n_validation = min(max(1, round(fraction * n_groups)), n_groups - 1)
    order = np.random.default_rng(seed).permutation(n_groups)
    validation = np.sort(order[:n_validation])
    train = np.sort(order[n_validation:])
    return arrays.take(train), arrays.take(validation)


def canvas_pad_px(offsets_px: np.ndarray) -> int:
    """Return the overlap canvas margin for these offsets: ceil(max |offset|) + 1 pixels.

    The margin keeps every member patch, shifted by its offset, on the canvas with one
    pixel to spare for bilinear interpolation. Returns 0 when every offset is 0 (gridsize 1).
    """
    offsets_px = np.asarray(offsets_px)
    if offsets_px.size == 0 or not np.any(offsets_px):
        return 0
    return int(np.ceil(np.max(np.abs(offsets_px)))) + 1
