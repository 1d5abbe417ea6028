"""The illuminating probe: reading from an NPZ file, padding, normalisation, a modelled default.

Every probe that leaves this module is complex64 (N, N) with `sum(|P|**2) == 1`, so the
dose scaling in `fly64.physics.forward` alone sets the photon count.
"""

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from fly64.contract import KEY_PROBE
from fly64.errors import InputError

logger = logging.getLogger(__name__)

# Modelled focusing optic of `default_probe`, in units of the detector's Nyquist band.
# The zone plate's outer radius is 0.25 cycles/pixel, so the focal spot is about 2-4 px wide.
ZONE_PLATE_OUTER_RADIUS_CYCLES_PER_PX = 0.25
# The central stop blocks the inner 40 % of the zone plate's radius (typical for X-ray zone plates).
CENTRAL_STOP_FRACTION = 0.4
# The defocus is chosen so that the geometric cone of the beam is this fraction of N wide.
DEFOCUS_FOOTPRINT_FRACTION = 0.4
EDGE_TAPER_SAMPLES = 3.0


def load_probe(path: str | os.PathLike, patch_size: int) -> np.ndarray:
    """Read `probeGuess` from an NPZ file, zero-pad it to (N, N) centred and normalise it.

    Args:
        path: NPZ file with a complex 2-D square array under the key `probeGuess`.
        patch_size: N, the side of the diffraction patterns, in pixels.

    Returns:
        complex64 (N, N) with `sum(|P|**2) == 1`.

    Raises:
        InputError: naming the file, when it is missing or unreadable, has no `probeGuess`,
            or the probe is real-valued, not 2-D square, larger than N, non-finite or all zeros.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: probe file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            probe = archive[KEY_PROBE] if KEY_PROBE in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{path}: not a readable NPZ file without pickled objects ({error})") from error
    if probe is None:
        raise InputError(f"{path}: missing key {KEY_PROBE}; expected a complex (N, N) probe under that key")

    _validate_probe(probe, patch_size, source=str(path))
    return normalise_probe(pad_probe(probe, patch_size))


def _validate_probe(probe: np.ndarray, patch_size: int, source: str) -> None:
    def fail(problem: str) -> None:
        raise InputError(f"{source}: key {KEY_PROBE} {problem}")

    if not np.iscomplexobj(probe):
        fail(f"has real dtype {probe.dtype}; expected a complex probe (amplitude and phase)")
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        fail(f"has shape {probe.shape}; expected a square 2-D array")
    if probe.shape[0] > patch_size:
        fail(
            f"has shape {probe.shape}, larger than the patch size {patch_size}; expected at most ({patch_size}, {patch_size})"
        )
    if not np.all(np.isfinite(probe)):
        fail("contains NaN or infinite values")
    if not np.any(probe):
        fail("is all zeros; expected a probe that carries some intensity")


def pad_probe(probe: np.ndarray, patch_size: int) -> np.ndarray:
    """Zero-pad a square probe to (N, N), centred, as complex64.

    A probe of side n lands at rows and columns `(N - n) // 2 .. (N - n) // 2 + n - 1`.

    Raises:
        InputError: the probe is not square or is larger than N.
    """
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or probe.shape[0] > patch_size:
        raise InputError(f"probe of shape {probe.shape} cannot be padded to ({patch_size}, {patch_size})")

    padded = np.zeros((patch_size, patch_size), dtype=np.complex64)
    start = (patch_size - probe.shape[0]) // 2
    stop = start + probe.shape[0]
    padded[start:stop, start:stop] = probe
    return padded


def normalise_probe(probe: np.ndarray) -> np.ndarray:
    """Return the probe as complex64 scaled so that `sum(|P|**2) == 1`.

    Raises:
        InputError: the probe has no intensity or non-finite values.
    """
    probe = np.asarray(probe, dtype=np.complex64)
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    if not np.isfinite(power) or power == 0.0:
        raise InputError(f"probe cannot be normalised: its total intensity is {power}")
    return (probe / np.sqrt(power)).astype(np.complex64)


def default_probe(patch_size: int) -> np.ndarray:
    """Model a defocused Fresnel zone plate probe, complex64 (N, N), normalised.

    The pupil is an annulus in the detector plane: the zone plate's outer radius is
    `ZONE_PLATE_OUTER_RADIUS_CYCLES_PER_PX` and its central stop blocks the inner
    `CENTRAL_STOP_FRACTION` of that radius. A quadratic pupil phase (Fresnel propagation
    from the focus, applied in the angular spectrum) sets the defocus, so the beam's
    geometric cone at the sample is `DEFOCUS_FOOTPRINT_FRACTION * N` pixels wide. The
    result is a bright ring with Fresnel fringes and a small central peak, as
    out-of-focus zone plate probes look. About 86 % of its power lies within a diameter
    of 0.38 N to 0.45 N (N = 128 to 32). Deterministic.
    """
    if patch_size < 8:
        raise InputError(f"patch size {patch_size} is too small for the modelled probe; expected at least 8")

    frequencies = np.fft.fftfreq(patch_size)
    fy, fx = np.meshgrid(frequencies, frequencies, indexing="ij")
    radius = np.hypot(fx, fy)

    outer = ZONE_PLATE_OUTER_RADIUS_CYCLES_PER_PX
    inner = CENTRAL_STOP_FRACTION * outer
    # Cosine edges, EDGE_TAPER_SAMPLES frequency samples wide, keep the sinc tails of a hard
    # pupil edge from wrapping around the N x N window.
    taper = EDGE_TAPER_SAMPLES / patch_size
    pupil = _cosine_step((outer - radius) / taper) * _cosine_step((radius - inner) / taper)

    # A ray leaving the focus at spatial frequency f travels lambda*z*f sideways, so the cone
    # edge (f = outer) sits footprint/2 from the axis when lambda*z = footprint / (2 * outer).
    footprint_px = DEFOCUS_FOOTPRINT_FRACTION * patch_size
    wavelength_times_defocus_px2 = footprint_px / (2.0 * outer)
    defocus_phase = np.pi * wavelength_times_defocus_px2 * radius**2

    field = np.fft.fftshift(np.fft.ifft2(pupil * np.exp(1j * defocus_phase)))
    return normalise_probe(field)


def _cosine_step(distance: np.ndarray) -> np.ndarray:
    """Rise smoothly from 0 at `distance <= -0.5` to 1 at `distance >= 0.5`."""
    clipped = np.clip(distance, -0.5, 0.5)
    return 0.5 * (1.0 + np.sin(np.pi * clipped))


def probe_footprint_mask(probe: np.ndarray, amplitude_fraction: float = 0.1) -> np.ndarray:
    """Return a bool (N, N) mask of the pixels where `|P| >= amplitude_fraction * max|P|`."""
    if not 0.0 < amplitude_fraction <= 1.0:
        raise InputError(f"amplitude_fraction = {amplitude_fraction} must be in (0, 1]")
    amplitude = np.abs(np.asarray(probe))
    return amplitude >= amplitude_fraction * amplitude.max()
