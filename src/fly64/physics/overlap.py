"""Overlap geometry of scan positions: disc overlap, probe diameter, overlap metrics, subsampling.

The probe footprint is modelled as a disc of diameter `D` (see `probe_diameter_px`). Two
footprints whose centres lie `d` pixels apart, with `R = D / 2`, share the area
`2 R² acos(d / 2R) - (d / 2) sqrt(4 R² - d²)` for `d < D` and nothing otherwise. The
overlap fraction is that area over the disc area `pi R²`: 1 at `d = 0`, about 0.391 at
`d = R`, 0 at `d >= D`.

Positions are float (n, 2) arrays of (x, y) patch centres in object pixels.
"""

import logging
import math

import numpy as np
import scipy.optimize
from scipy.spatial import cKDTree

from fly64.errors import InputError
from fly64.physics.grouping import _checked_groups, _checked_positions, group_centres_px

logger = logging.getLogger(__name__)

DEFAULT_PROBE_POWER_FRACTION = 0.9
PROBE_DIAMETER_METHOD = f"2 x radius about the power centroid holding {DEFAULT_PROBE_POWER_FRACTION:.0%} of sum(|P|^2)"


def disc_overlap_fraction(distance_px: np.ndarray | float, diameter_px: float) -> np.ndarray | float:
    """Return the overlap area of two discs over the area of one disc.

    Args:
        distance_px: centre distances in pixels, any shape, each >= 0.
        diameter_px: disc diameter in pixels, > 0.

    Returns:
        Fractions in [0, 1], float64 of the shape of `distance_px`; a float when
        `distance_px` is a scalar.

    Raises:
        InputError: `diameter_px` is not positive and finite, or a distance is negative
            or not finite.
    """
    if not (math.isfinite(diameter_px) and diameter_px > 0):
        raise InputError(f"diameter_px = {diameter_px} is invalid; expected a positive disc diameter in pixels")
    distance_px_array = np.asarray(distance_px, dtype=np.float64)
    if not np.all(np.isfinite(distance_px_array)) or np.any(distance_px_array < 0):
        raise InputError("distance_px contains negative or non-finite values; expected distances >= 0 in pixels")

    # With u = d / D the fraction is (2 / pi) (acos u - u sqrt(1 - u²)), which is 0 from u = 1 on.
    u = np.clip(distance_px_array / diameter_px, 0.0, 1.0)
    fraction = (2.0 / np.pi) * (np.arccos(u) - u * np.sqrt(1.0 - u * u))

    if fraction.ndim == 0:
        return float(fraction)
    return fraction


def spacing_for_overlap_px(fraction: float, diameter_px: float) -> float:
    """Return the centre distance at which two discs of `diameter_px` overlap by `fraction`.

    Inverts `disc_overlap_fraction`, which falls monotonically from 1 at distance 0 to 0
    at one diameter. Solved with `scipy.optimize.brentq` to 1e-9 px.

    Args:
        fraction: overlap fraction in [0, 1); 0 gives one diameter.
        diameter_px: disc diameter in pixels, > 0.

    Raises:
        InputError: `fraction` is outside [0, 1) or `diameter_px` is not positive and finite.
    """
    if not (math.isfinite(diameter_px) and diameter_px > 0):
        raise InputError(f"diameter_px = {diameter_px} is invalid; expected a positive disc diameter in pixels")
    if not (0.0 <= fraction < 1.0):
        raise InputError(f"overlap fraction {fraction} is invalid; expected a value in [0, 1)")
    if fraction == 0.0:
        return float(diameter_px)
    return float(
        scipy.optimize.brentq(lambda distance: disc_overlap_fraction(distance, diameter_px) - fraction, 0.0, diameter_px, xtol=1e-9)
    )


def probe_diameter_px(probe: np.ndarray, power_fraction: float = DEFAULT_PROBE_POWER_FRACTION) -> float:
    """Return twice the radius about the probe's power centroid that contains `power_fraction` of its power.

    Power is `|P|²` per pixel, each pixel taken at its centre. The radius is interpolated
    linearly between the sorted pixel radii, so a uniform disc of radius `a` gives about
    `2 a sqrt(power_fraction)`. `PROBE_DIAMETER_METHOD` describes the default.

    Args:
        probe: complex or real (h, w) probe.
        power_fraction: fraction of the total power inside the radius, in (0, 1].

    Raises:
        InputError: the probe is not a finite 2-D array with non-zero power, or
            `power_fraction` is outside (0, 1].
    """
    probe = np.asarray(probe)
    if probe.ndim != 2:
        raise InputError(f"probe has shape {probe.shape}; expected a 2-D (h, w) array")
    if not (0.0 < power_fraction <= 1.0):
        raise InputError(f"power_fraction = {power_fraction} is invalid; expected a value in (0, 1]")
    power = np.abs(probe.astype(np.complex128)) ** 2
    total_power = power.sum()
    if not (np.isfinite(total_power) and total_power > 0):
        raise InputError("probe has zero or non-finite total power; expected a finite probe with sum(|P|^2) > 0")

    rows, columns = np.indices(power.shape, dtype=np.float64)
    centre_row = (rows * power).sum() / total_power
    centre_column = (columns * power).sum() / total_power
    radius_px = np.hypot(rows - centre_row, columns - centre_column).ravel()

    order = np.argsort(radius_px, kind="stable")
    sorted_radius_px = radius_px[order]
    enclosed_fraction = np.cumsum(power.ravel()[order]) / total_power
    radius_at_fraction_px = float(np.interp(power_fraction, enclosed_fraction, sorted_radius_px))
    return 2.0 * radius_at_fraction_px


def image_overlap(positions_xy: np.ndarray, diameter_px: float, neighbor_count: int) -> float:
    """Return the mean disc overlap of each unique position with its K nearest other positions.

    For each unique position the overlap fractions with its `neighbor_count` nearest other
    unique positions are averaged, and those means are averaged over positions. With
    fewer than K + 1 unique positions every other position counts as a neighbour. A
    single unique position overlaps nothing and gives 0.

    Raises:
        InputError: malformed positions, no positions, `neighbor_count < 1`, or an
            invalid `diameter_px`.
    """
    positions_xy = _checked_positions(positions_xy)
    if positions_xy.shape[0] == 0:
        raise InputError("positions_xy is empty; overlap needs at least one position")
    if neighbor_count < 1:
        raise InputError(f"neighbor_count = {neighbor_count} is invalid; expected at least 1")

    unique_xy = np.unique(positions_xy, axis=0)
    n_neighbours = min(neighbor_count, unique_xy.shape[0] - 1)
    if n_neighbours == 0:
        disc_overlap_fraction(0.0, diameter_px)  # validates diameter_px
        return 0.0

    # Positions are unique, so each query's nearest hit (distance 0) is the position itself.
    distances_px, _ = cKDTree(unique_xy).query(unique_xy, k=n_neighbours + 1)
    neighbour_distances_px = distances_px[:, 1:]
    fractions = disc_overlap_fraction(neighbour_distances_px, diameter_px)
    return float(fractions.mean(axis=1).mean())


def group_overlap(positions_xy: np.ndarray, groups: np.ndarray, diameter_px: float) -> float:
    """Return the mean pairwise disc overlap of members within each group, averaged over groups.

    Args:
        positions_xy: float (n, 2) positions (x, y) in pixels.
        groups: integer (n_groups, group_size) indices into `positions_xy`, group_size >= 2.
        diameter_px: probe diameter in pixels.

    Raises:
        InputError: malformed positions or groups, no groups, groups of fewer than 2
            members, or an invalid `diameter_px`.
    """
    positions_xy = _checked_positions(positions_xy)
    groups = _checked_groups(groups, positions_xy.shape[0])
    if groups.shape[0] == 0 or groups.shape[1] < 2:
        raise InputError(
            f"groups has shape {groups.shape}; group overlap needs at least one group of 2 or more members"
        )

    first, second = np.triu_indices(groups.shape[1], k=1)
    members_xy = positions_xy[groups]
    pair_distances_px = np.linalg.norm(members_xy[:, first] - members_xy[:, second], axis=-1)
    fractions = disc_overlap_fraction(pair_distances_px, diameter_px)
    return float(fractions.mean(axis=1).mean())


def group_to_group_overlap(
    positions_xy: np.ndarray, groups: np.ndarray, diameter_px: float, neighbor_count: int
) -> float:
    """Return the mean disc overlap between group centres and their K nearest other group centres.

    This is `image_overlap` applied to the group centres (the mean member positions), so
    groups that share a centre count once.

    Raises:
        InputError: malformed positions or groups, no groups, `neighbor_count < 1`, or an
            invalid `diameter_px`.
    """
    centres_xy = group_centres_px(positions_xy, groups)
    if centres_xy.shape[0] == 0:
        raise InputError("groups is empty; group-to-group overlap needs at least one group")
    return image_overlap(centres_xy, diameter_px, neighbor_count)


def nearest_neighbour_distances_px(positions_xy: np.ndarray) -> np.ndarray:
    """Return float64 (n,) distances from each position to its nearest other position.

    Duplicate positions give 0. A single position has no neighbour and gives `inf`.

    Raises:
        InputError: malformed positions or no positions.
    """
    positions_xy = _checked_positions(positions_xy)
    if positions_xy.shape[0] == 0:
        raise InputError("positions_xy is empty; expected at least one position")
    if positions_xy.shape[0] == 1:
        return np.array([np.inf])
    distances_px, _ = cKDTree(positions_xy).query(positions_xy, k=2)
    return distances_px[:, 1]


def subsample_for_spacing(positions_xy: np.ndarray, spacing_px: float, seed: int) -> np.ndarray:
    """Choose a subset of positions spaced about `spacing_px` apart.

    The kept fraction is `s = min(1, (d_nn / spacing_px)²)`, where `d_nn` is the median
    nearest-neighbour distance of the input: in two dimensions the number of positions
    scales with the inverse square of their spacing. Exactly `max(1, floor(s * n))`
    positions are kept. They are chosen by farthest-point sampling: start at a position
    drawn with `np.random.default_rng(seed)`, then repeatedly add the position farthest
    from all positions kept so far (ties go to the lowest index). This spreads the
    selection evenly, so its minimum spacing is at least the input's.

    Args:
        positions_xy: float (n, 2) positions (x, y) in pixels, n >= 1.
        spacing_px: target spacing in pixels, > 0.
        seed: seed of the starting position; equal seeds and positions give equal indices.

    Returns:
        Sorted int64 indices into `positions_xy`. Time is O(n * n_keep), memory O(n).

    Raises:
        InputError: malformed or missing positions, or `spacing_px` not positive and finite.
    """
    positions_xy = _checked_positions(positions_xy)
    n_positions = positions_xy.shape[0]
    if n_positions == 0:
        raise InputError("positions_xy is empty; subsampling needs at least one position")
    if not (math.isfinite(spacing_px) and spacing_px > 0):
        raise InputError(f"spacing_px = {spacing_px} is invalid; expected a positive spacing in pixels")

    n_keep = subsample_count(positions_xy, spacing_px)
    if n_keep == n_positions:
        return np.arange(n_positions, dtype=np.int64)

    rng = np.random.default_rng(seed)
    selected_indices = np.empty(n_keep, dtype=np.int64)
    selected_indices[0] = rng.integers(n_positions)
    distance_to_selected_px = np.linalg.norm(positions_xy - positions_xy[selected_indices[0]], axis=1)
    for step in range(1, n_keep):
        selected_indices[step] = int(np.argmax(distance_to_selected_px))
        distance_to_new_px = np.linalg.norm(positions_xy - positions_xy[selected_indices[step]], axis=1)
        np.minimum(distance_to_selected_px, distance_to_new_px, out=distance_to_selected_px)

    return np.sort(selected_indices)


def subsample_fraction(positions_xy: np.ndarray, spacing_px: float) -> float:
    """Return `min(1, (d_nn / spacing_px)²)`, with `d_nn` the median nearest-neighbour distance.

    A single position returns 1.

    Raises:
        InputError: malformed or missing positions, or `spacing_px` not positive.
    """
    if not (math.isfinite(spacing_px) and spacing_px > 0):
        raise InputError(f"spacing_px = {spacing_px} is invalid; expected a positive spacing in pixels")
    median_spacing_px = float(np.median(nearest_neighbour_distances_px(positions_xy)))
    if not math.isfinite(median_spacing_px):
        return 1.0
    return min(1.0, (median_spacing_px / spacing_px) ** 2)


def subsample_count(positions_xy: np.ndarray, spacing_px: float) -> int:
    """Return the number of positions `subsample_for_spacing` keeps, `max(1, floor(s * n))`."""
    n_positions = np.asarray(positions_xy).shape[0]
    fraction = subsample_fraction(positions_xy, spacing_px)
    return max(1, math.floor(fraction * n_positions))
