"""Scan trajectories and the check that every patch stays inside the object.

Positions are float64 (n, 2) arrays with columns (x, y): the patch centre in object
pixels, x along columns and y along rows. With the patch convention of
`fly64.physics.patches`, bilinear interpolation of the patch centred at x reads the
columns `floor(x) - N // 2 .. floor(x) - N // 2 + N`, one more than the N it covers. So a
position is inside an object of width W when `N // 2 <= x < W - (N - N // 2)`, and
likewise for y and the height.
"""

import math

import numpy as np

from fly64.errors import InputError

# Density of a Fermat spiral r = a * sqrt(k) is one point per pi * a**2. A hexagonal
# lattice of spacing s has one point per (sqrt(3) / 2) * s**2, so a = s * this factor
# gives the spiral the density of that lattice.
FERMAT_RADIUS_PER_SPACING = math.sqrt(math.sqrt(3.0) / (2.0 * math.pi))
GOLDEN_ANGLE_RAD = math.pi * (3.0 - math.sqrt(5.0))


def allowed_centre_range(object_size_px: int, patch_size: int, margin_px: float) -> tuple[float, float]:
    """Return the (low, high) bounds of patch centres that keep a patch `margin_px` inside.

    Raises:
        InputError: the object is too small to hold one patch with the margin.
    """
    low = patch_size // 2 + margin_px
    high = object_size_px - 1 - (patch_size - patch_size // 2) - margin_px
    if high < low:
        raise InputError(
            f"object of {object_size_px} px cannot hold a {patch_size} px patch with a margin of "
            f"{margin_px} px; expected an object of at least {patch_size + 1 + math.ceil(2 * margin_px)} px"
        )
    return float(low), float(high)


def raster_positions(
    object_size_px: int,
    patch_size: int,
    step_px: float,
    jitter_px: float,
    margin_px: float,
    seed: int,
) -> np.ndarray:
    """Lay out a jittered square raster of scan positions, float64 (n, 2) columns (x, y).

    The grid has spacing `step_px` and is centred in the allowed region (see
    `allowed_centre_range`). Each coordinate then moves by a uniform offset in
    [-jitter_px, jitter_px] drawn from `seed`, and is clipped back into the allowed
    region. Rows come in order of increasing y, positions within a row by increasing x.

    Raises:
        InputError: a non-positive step, a negative jitter, or an object too small.
    """
    if not step_px > 0:
        raise InputError(f"scan step {step_px} px must be positive")
    if not jitter_px >= 0:
        raise InputError(f"scan jitter {jitter_px} px must be >= 0")
    low, high = allowed_centre_range(object_size_px, patch_size, margin_px)

    n_per_side = math.floor((high - low) / step_px) + 1
    start = low + ((high - low) - (n_per_side - 1) * step_px) / 2.0
    axis = start + step_px * np.arange(n_per_side)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    positions = np.stack([x.ravel(), y.ravel()], axis=1)

    if jitter_px > 0:
        rng = np.random.default_rng(seed)
        positions = positions + rng.uniform(-jitter_px, jitter_px, size=positions.shape)
    return np.clip(positions, low, high)


def spiral_positions(
    object_size_px: int,
    patch_size: int,
    step_px: float,
    margin_px: float,
    seed: int,
) -> np.ndarray:
    """Lay out a Fermat spiral of scan positions, float64 (n, 2) columns (x, y).

    Point k sits at radius `a * sqrt(k)` and angle `k * golden angle + theta0` around the
    centre of the allowed region, with `a = step_px * FERMAT_RADIUS_PER_SPACING`, so the
    mean spacing matches a hexagonal lattice of spacing `step_px`. `seed` draws the start
    angle theta0. Points outside the allowed square are dropped; positions come in spiral
    order, from the centre outwards.

    Raises:
        InputError: a non-positive step or an object too small.
    """
    if not step_px > 0:
        raise InputError(f"scan step {step_px} px must be positive")
    low, high = allowed_centre_range(object_size_px, patch_size, margin_px)

    centre = (low + high) / 2.0
    half_width = (high - low) / 2.0
    radius_step_px = step_px * FERMAT_RADIUS_PER_SPACING
    # Enough points to reach the corners of the allowed square.
    n_points = math.ceil(2.0 * half_width**2 / radius_step_px**2) + 1

    start_angle = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi)
    index = np.arange(n_points, dtype=np.float64)
    radius = radius_step_px * np.sqrt(index)
    angle = start_angle + GOLDEN_ANGLE_RAD * index
    positions = np.stack([centre + radius * np.cos(angle), centre + radius * np.sin(angle)], axis=1)

    inside = np.all((positions >= low) & (positions <= high), axis=1)
    return positions[inside]


def check_scan_inside(object_shape: tuple[int, int], positions_xy: np.ndarray, patch_size: int, source: str) -> None:
    """Check that every patch, with the extra pixel bilinear interpolation reads, lies inside the object.

    Args:
        object_shape: (rows, columns) of the object.
        positions_xy: float (n, 2) patch centres, columns (x, y).
        patch_size: N.
        source: what the positions come from (a file or option), for the message.

    Raises:
        InputError: the positions are not a finite (n, 2) array, or a patch leaves the
            object. Positions never wrap around the object's edges.
    """
    positions = np.asarray(positions_xy)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise InputError(f"{source}: scan positions have shape {positions.shape}; expected (n, 2) columns (x, y)")
    if not np.all(np.isfinite(positions)):
        raise InputError(f"{source}: scan positions contain NaN or infinite values")

    half = patch_size // 2
    first_pixel = np.floor(positions) - half
    last_pixel = first_pixel + patch_size
    limits = np.array([object_shape[1] - 1, object_shape[0] - 1])
    outside = np.any((first_pixel < 0) | (last_pixel > limits), axis=1)
    if np.any(outside):
        index = int(np.flatnonzero(outside)[0])
        x, y = positions[index]
        raise InputError(
            f"{source}: scan position {index} (x={x:.2f}, y={y:.2f}) leaves the object of shape "
            f"{tuple(object_shape)} for patch size {patch_size} ({int(outside.sum())} position(s) outside); "
            f"expected {half} <= x < {object_shape[1] - (patch_size - half)} and "
            f"{half} <= y < {object_shape[0] - (patch_size - half)}"
        )
