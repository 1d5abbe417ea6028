"""The forward model: exit waves, far-field diffraction and photon-counting noise at a dose.

For scan position j the exit wave is `psi_j = P * O[r_j]`, its far field
`Psi_j = fftshift(fft2(psi_j, norm="ortho"))`, and its intensity `I_j = |Psi_j|**2`, so
`sum(I_j) == sum(|psi_j|**2)` (Parseval). A dataset at nominal dose D (mean detected
photons per pattern) scales every intensity by one factor c, chosen so that
`mean_j sum(c * I_j) == D`, and draws counts `n_j ~ Poisson(c * I_j)`. The stored
diffraction is the amplitude `sqrt(n_j)`.
"""

import concurrent.futures
import dataclasses
import logging
import math
import os

import numpy as np
import scipy.fft

from fly64.errors import InputError
from fly64.physics.patches import extract_patches
from fly64.physics.scan import check_scan_inside

logger = logging.getLogger(__name__)

# Bytes of complex64 exit waves processed per step within a chunk. About 1 MiB keeps each
# step's arrays in a core's L2 cache; the chunk, not the block, fixes the noise streams.
CACHE_BLOCK_BYTES = 1 << 20


@dataclasses.dataclass
class Simulation:
    """Simulated diffraction of one scan at one dose.

    Attributes:
        amplitude: float32 (n, N, N), `sqrt(counts)`.
        patches: complex64 (n, N, N), the ground-truth object patches (without the probe).
        scale_factor: c, photons per unit of normalised intensity.
        mean_photons_per_pattern: measured mean of the drawn counts over patterns.
        nominal_dose_photons: D, the requested mean photons per pattern.
        photons_per_pattern: int64 (n,), the drawn counts summed over each pattern.
    """

    amplitude: np.ndarray
    patches: np.ndarray
    scale_factor: float
    mean_photons_per_pattern: float
    nominal_dose_photons: float
    photons_per_pattern: np.ndarray

    @property
    def photons_standard_error(self) -> float:
        """Standard error of the measured mean photons for Poisson counts, `sqrt(D / n)`."""
        return math.sqrt(self.nominal_dose_photons / self.amplitude.shape[0])


def far_field(exit_waves: np.ndarray, workers: int = 1) -> np.ndarray:
    """Propagate exit waves to the far field, complex64 of the same shape.

    The 2-D FFT runs over the last two axes with orthonormal scaling (`norm="ortho"`),
    and the zero frequency is shifted to the centre, pixel (N // 2, N // 2).
    `workers` is the thread count of `scipy.fft`.
    """
    exit_waves = np.asarray(exit_waves, dtype=np.complex64)
    spectrum = scipy.fft.fft2(exit_waves, axes=(-2, -1), norm="ortho", workers=workers)
    return np.fft.fftshift(spectrum, axes=(-2, -1))


def simulate_diffraction(
    obj: np.ndarray,
    probe: np.ndarray,
    positions_xy: np.ndarray,
    dose_photons: float,
    seed: int,
    chunk_patterns: int = 256,
    workers: int = 0,
) -> Simulation:
    """Simulate Poisson-noisy diffraction amplitudes of a scan at a nominal dose.

    Works in two passes over chunks of `chunk_patterns` patterns. Pass 1 cuts the patches,
    writes them to the output and writes the float32 intensities into the amplitude
    output, summing the total intensity. Pass 2 replaces each intensity by
    `sqrt(Poisson(c * I))` in place. Peak memory is the two outputs plus a few chunks'
    temporaries per worker, whatever the number of patterns.

    Chunk k draws its noise from its own generator, child k of
    `np.random.SeedSequence(seed)`, so the arrays depend on `seed`, `chunk_patterns` and
    the inputs, never on `workers`.

    Args:
        obj: complex (M, M) object.
        probe: complex (N, N) probe; the dose scaling makes its own normalisation irrelevant.
        positions_xy: float (n, 2) patch centres in object pixels, columns (x, y).
        dose_photons: D > 0, the mean photons per pattern.
        seed: seed of the Poisson noise.
        chunk_patterns: patterns per chunk.
        workers: threads; 0 uses `os.cpu_count()`.

    Raises:
        InputError: a non-positive dose or chunk size, negative workers, a patch that
            leaves the object, a non-square probe, or exit waves that are all zero.
    """
    obj = np.asarray(obj, dtype=np.complex64)
    probe = np.asarray(probe, dtype=np.complex64)
    positions = np.asarray(positions_xy, dtype=np.float64)
    if not (math.isfinite(dose_photons) and dose_photons > 0):
        raise InputError(f"dose {dose_photons} must be a positive number of photons per pattern")
    if chunk_patterns < 1:
        raise InputError(f"chunk_patterns = {chunk_patterns} must be at least 1")
    if workers < 0:
        raise InputError(f"workers = {workers} must be >= 0 (0 uses every CPU)")
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise InputError(f"probe has shape {probe.shape}; expected (N, N)")
    patch_size = probe.shape[0]
    check_scan_inside(obj.shape, positions, patch_size, source="simulate_diffraction")
    n_patterns = positions.shape[0]
    if n_patterns == 0:
        raise InputError("simulate_diffraction: no scan positions; expected at least one")

    amplitude = np.empty((n_patterns, patch_size, patch_size), dtype=np.float32)
    patches = np.empty((n_patterns, patch_size, patch_size), dtype=np.complex64)
    chunks = [slice(start, min(start + chunk_patterns, n_patterns)) for start in range(0, n_patterns, chunk_patterns)]
    seeds = np.random.SeedSequence(seed).spawn(len(chunks))

    shifting_probe = _spectrum_shifting_probe(probe)

    block_patterns = max(1, CACHE_BLOCK_BYTES // (patch_size * patch_size * 8))

    def compute_intensity(chunk: slice) -> float:
        total = 0.0
        for block in _blocks(chunk, block_patterns):
            extract_patches(obj, positions[block], patch_size, out=patches[block])
            if shifting_probe is None:
                spectrum = far_field(patches[block] * probe, workers=1)
            else:
                spectrum = scipy.fft.fft2(
                    patches[block] * shifting_probe, axes=(-2, -1), norm="ortho", workers=1, overwrite_x=True
                )
            intensity = amplitude[block]
            np.abs(spectrum, out=intensity)
            np.square(intensity, out=intensity)
            total += float(intensity.sum(dtype=np.float64))
        return total

    with _executor(workers) as executor:
        chunk_intensities = list(executor.map(compute_intensity, chunks))
        # Summing in chunk order keeps the total, and so c, independent of thread timing.
        total_intensity = math.fsum(chunk_intensities)
        if not total_intensity > 0:
            raise InputError("simulate_diffraction: every exit wave is zero; check the probe and the object")
        scale_factor = dose_photons * n_patterns / total_intensity

        def draw_counts(index: int) -> None:
            # Successive draws from one generator continue its stream, so splitting a chunk
            # into blocks leaves the counts unchanged.
            rng = np.random.Generator(np.random.PCG64(seeds[index]))
            for block in _blocks(chunks[index], block_patterns):
                expected = np.multiply(amplitude[block], scale_factor, dtype=np.float64)
                counts = rng.poisson(expected)
                photons_per_pattern[block] = counts.sum(axis=(1, 2))
                # Counts stay exact in float32 up to 2**24 photons per pixel.
                amplitude[block] = counts
                np.sqrt(amplitude[block], out=amplitude[block])

        photons_per_pattern = np.empty(n_patterns, dtype=np.int64)
        list(executor.map(draw_counts, range(len(chunks))))

    mean_photons = float(photons_per_pattern.sum()) / n_patterns
    return Simulation(
        amplitude=amplitude,
        patches=patches,
        scale_factor=scale_factor,
        mean_photons_per_pattern=mean_photons,
        nominal_dose_photons=float(dose_photons),
        photons_per_pattern=photons_per_pattern,
    )


def _blocks(chunk: slice, block_patterns: int) -> list[slice]:
    """Split a chunk of patterns into consecutive blocks of at most `block_patterns`."""
    return [
        slice(start, min(start + block_patterns, chunk.stop))
        for start in range(chunk.start, chunk.stop, block_patterns)
    ]


def _spectrum_shifting_probe(probe: np.ndarray) -> np.ndarray | None:
    """Return the probe times (-1)**(row + column) for even N, or None for odd N.

    For even N, multiplying the exit wave by (-1)**(row + column) moves its spectrum by
    N / 2 along both axes, which is exactly `fftshift`. So the FFT of this probe's exit
    waves comes out centred without the copy that `fftshift` makes.
    """
    size = probe.shape[0]
    if size % 2:
        return None
    parity = np.add.outer(np.arange(size), np.arange(size)) % 2
    return np.where(parity == 0, probe, -probe).astype(np.complex64)


def _executor(workers: int) -> concurrent.futures.Executor:
    """Return a thread pool of `workers` threads (0 means one per CPU), or an inline runner for one."""
    threads = workers or os.cpu_count() or 1
    if threads == 1:
        return _InlineExecutor()
    return concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fly64-simulate")


class _InlineExecutor(concurrent.futures.Executor):
    """Run `map` in the calling thread, without the overhead of a pool."""

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return map(fn, *iterables)
