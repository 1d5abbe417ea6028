"""Gridsize-2 grouping: sets of nearby scan positions that a model takes as one input.

For each scan position (the seed of its group), `build_groups` takes its K nearest
positions, the seed included, and draws C = gridsize² of them without replacement.
There is one group per position, and groups may share positions. Each group carries
its members' offsets from the group centre, the mean of the members' positions.

Positions are float (n, 2) arrays of (x, y) patch centres in object pixels.
"""

import logging

import numpy as np
from scipy.spatial import cKDTree

from fly64.errors import InputError

logger = logging.getLogger(__name__)


def build_groups(positions_xy: np.ndarray, neighbor_count: int, group_size: int, seed: int) -> np.ndarray:
    """Draw one group of `group_size` positions from the neighbourhood of each position.

    Args:
        positions_xy: float (n, 2) scan positions (x, y) in pixels.
        neighbor_count: K, size of each seed's neighbourhood, the seed included.
        group_size: C, members per group (4 for gridsize 2).
        seed: seed of `np.random.default_rng`; equal seeds and positions give equal groups.

    Returns:
        int64 (n, group_size) indices into `positions_xy`, row i drawn from the K nearest
        positions of position i. Members appear in order of distance from the seed. With
        `group_size == 1` the result is `arange(n)[:, None]`, and no neighbours are needed.

    Raises:
        InputError: `positions_xy` is not a finite (n, 2) array, `group_size < 1`,
            `neighbor_count < group_size`, or (for `group_size > 1`) fewer than
            `neighbor_count` positions.
    """
    positions_xy = _checked_positions(positions_xy)
    n_positions = positions_xy.shape[0]
    if group_size < 1:
        raise InputError(f"group_size = {group_size} is invalid; expected at least 1")
    if neighbor_count < group_size:
        raise InputError(f"neighbor_count (K = {neighbor_count}) must be ≥ group_size (C = {group_size})")
    if group_size == 1:
        return np.arange(n_positions, dtype=np.int64)[:, None]
    if n_positions < neighbor_count:
        raise InputError(
            f"neighbor_count (K = {neighbor_count}) exceeds the {n_positions} scan positions; "
            f"grouping needs at least K positions"
        )

    _, neighbours = cKDTree(positions_xy).query(positions_xy, k=neighbor_count)
    neighbours = np.asarray(neighbours, dtype=np.int64).reshape(n_positions, neighbor_count)

    # With more than K positions at one spot, the tree may return other duplicates and omit
    # the seed. In that case the seed replaces the farthest neighbour.
    seeds = np.arange(n_positions, dtype=np.int64)
    lacks_seed = ~np.any(neighbours == seeds[:, None], axis=1)
    neighbours[lacks_seed, -1] = seeds[lacks_seed]

    # Sorting random keys per row draws group_size distinct columns per row at once.
    rng = np.random.default_rng(seed)
    random_keys = rng.random((n_positions, neighbor_count))
    chosen_columns = np.sort(np.argsort(random_keys, axis=1)[:, :group_size], axis=1)
    groups = np.take_along_axis(neighbours, chosen_columns, axis=1)

    logger.debug(
        "Built %d groups of %d from K = %d neighbours (seed %d)",
        n_positions,
        group_size,
        neighbor_count,
        seed,
    )
    return groups


def group_centres_px(positions_xy: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return float64 (n_groups, 2) group centres, the mean (x, y) of each group's members.

    Raises:
        InputError: malformed positions, or `groups` is not a 2-D integer array of valid
            indices into `positions_xy`.
    """
    positions_xy = _checked_positions(positions_xy)
    groups = _checked_groups(groups, positions_xy.shape[0])
    return positions_xy[groups].mean(axis=1)


def group_offsets_px(positions_xy: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return float32 (n_groups, group_size, 2) member positions (x, y) relative to their group centre.

    The offsets of each group sum to zero (within float32 rounding).

    Raises:
        InputError: as `group_centres_px`.
    """
    positions_xy = _checked_positions(positions_xy)
    groups = _checked_groups(groups, positions_xy.shape[0])
    members_xy = positions_xy[groups]
    offsets_px = members_xy - members_xy.mean(axis=1, keepdims=True)
    return offsets_px.astype(np.float32)


def _checked_positions(positions_xy: np.ndarray) -> np.ndarray:
    positions_xy = np.asarray(positions_xy, dtype=np.float64)
    if positions_xy.ndim != 2 or positions_xy.shape[1] != 2:
        raise InputError(f"positions_xy has shape {positions_xy.shape}; expected (n, 2) columns (x, y)")
    if not np.all(np.isfinite(positions_xy)):
        raise InputError("positions_xy contains NaN or infinite values; expected finite pixel coordinates")
    return positions_xy


def _checked_groups(groups: np.ndarray, n_positions: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.ndim != 2 or not np.issubdtype(groups.dtype, np.integer):
        raise InputError(
            f"groups has shape {groups.shape} and dtype {groups.dtype}; expected integer (n_groups, group_size)"
        )
    if groups.size and (groups.min() < 0 or groups.max() >= n_positions):
        raise InputError(
            f"groups contains indices in [{groups.min()}, {groups.max()}]; expected indices in [0, {n_positions})"
        )
    return groups.astype(np.int64, copy=False)
