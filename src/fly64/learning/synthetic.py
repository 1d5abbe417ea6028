"""Small synthetic datasets for the learning pipeline's tests and throughput benchmarks.

This is not the study's simulator. It scans the embedded structured object with a disc
probe on an integer raster, so the ground-truth patches are exact slices of the object and
no sub-pixel shift is involved, and draws Poisson counts at a nominal dose.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fly64.contract import Dataset
from fly64.errors import InputError
from fly64.physics.objects import default_object

# Probe disc radius as a fraction of N, and the peak of its quadratic phase in radians.
# A real (flat) disc admits a twin image, the object rotated by 180 degrees and
# conjugated. The curved phase makes the probe differ from its conjugate, which removes it.
DISC_RADIUS_FRACTION = 0.3
DISC_PHASE_PEAK_RAD = 2.0


def disc_probe(patch_size: int) -> np.ndarray:
    """Return a complex64 (N, N) disc probe with a quadratic phase, normalised to sum(|P|²) = 1."""
    coordinates = np.arange(patch_size) - (patch_size - 1) / 2.0
    rows, columns = np.meshgrid(coordinates, coordinates, indexing="ij")
    radius = np.hypot(rows, columns) / (DISC_RADIUS_FRACTION * patch_size)

    # A one-pixel linear edge instead of a hard step keeps the far field compact.
    edge_width = 1.0 / (DISC_RADIUS_FRACTION * patch_size)
    amplitude = np.clip((1.0 - radius) / edge_width, 0.0, 1.0)
    phase = DISC_PHASE_PEAK_RAD * np.minimum(radius, 1.0) ** 2
    probe = amplitude * np.exp(1j * phase)
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def make_synthetic_dataset(
    patch_size: int = 32,
    scan_side: int = 8,
    step_px: int = 8,
    dose_photons: float = 1e4,
    seed: int = 0,
) -> Dataset:
    """Simulate a scan_side x scan_side raster scan of the embedded object.

    Args:
        patch_size: N, pixels per side of patterns and patches.
        scan_side: positions per raster row and column (scan_side² patterns).
        step_px: raster step in pixels (integer, so patches are exact object slices).
        dose_photons: mean photons per pattern before Poisson noise.
        seed: seeds the Poisson draw.

    Returns:
        A Dataset with float32 amplitudes `sqrt(counts)`, complex64 ground-truth patches `Y`,
        the object, the probe, and positions (x, y) at patch centres.

    Raises:
        InputError: a non-positive size, step or dose.
    """
    if patch_size < 8 or scan_side < 1 or step_px < 1 or not dose_photons > 0:
        raise InputError(
            f"synthetic scan needs N >= 8, scan_side >= 1, step_px >= 1 and dose > 0 "
            f"(got {patch_size}, {scan_side}, {step_px}, {dose_photons})"
        )
    margin_px = 2
    object_size_px = patch_size + (scan_side - 1) * step_px + 2 * margin_px
    object_array = default_object(object_size_px)
    probe = disc_probe(patch_size)

    starts = margin_px + step_px * np.arange(scan_side)
    top, left = np.meshgrid(starts, starts, indexing="ij")
    top, left = top.ravel(), left.ravel()
    windows = sliding_window_view(object_array, (patch_size, patch_size))
    patches = windows[top, left].astype(np.complex64)

    far_field = np.fft.fftshift(np.fft.fft2(patches * probe, norm="ortho"), axes=(-2, -1))
    intensity = np.abs(far_field) ** 2
    scale = dose_photons / float(np.mean(intensity.sum(axis=(-2, -1))))
    counts = np.random.default_rng(seed).poisson(scale * intensity)

    # Patch pixel i covers object pixel start + i, so the centre lies at start + N/2.
    centre_offset = patch_size / 2.0
    return Dataset(
        diffraction=np.sqrt(counts).astype(np.float32),
        object=object_array,
        probe=probe,
        xcoords=(left + centre_offset).astype(np.float64),
        ycoords=(top + centre_offset).astype(np.float64),
        patches=patches,
        scan_index=np.arange(top.size, dtype=np.int64),
        metadata={
            "step": "fly64.learning.synthetic",
            "parameters": {
                "patch_size": patch_size,
                "scan_side": scan_side,
                "step_px": step_px,
                "dose_photons": dose_photons,
                "seed": seed,
                "intensity_scale": scale,
            },
        },
    )
