"""Classical reference reconstruction: pty-chi's LSQML with the known probe held fixed.

pty-chi sets torch's default device, dtype and random seed for the whole process when a
task is built, so call `reconstruct_lsqml` in a process of its own
(`python -m fly64.classical.worker`). This module imports torch and pty-chi only inside
`reconstruct_lsqml`, so importing it stays cheap.

Conventions converted here (pty-chi 2.2.0, read from its installed source):

- Intensity. This project's counts are `n ~ Poisson(c * |F_ortho(P * O)|^2)` with
  `sum |P|^2 = 1`, where `F_ortho` is the FFT with `norm="ortho"` and c the dose scale
  factor. pty-chi models `|F(P' * O)|^2` with the unnormalised FFT, which is `N^2` times
  larger. Passing the counts unchanged with the probe `P' = P * sqrt(c) / N` makes both
  models equal. Keeping the data in photons also keeps the meaning of LSQML's Gaussian
  noise model on amplitudes, whose default standard deviation 0.5 is that of the square
  root of a Poisson count.
- Positions. pty-chi places a patch with its centre at `position + origin`, where a
  patch of side N centred at c covers pixels `c - (N - 1) / 2 .. c + (N - 1) / 2`. This
  project's patch centred at x covers columns `x - N // 2 .. x - N // 2 + N - 1`
  (`fly64.physics.patches`). So the positions passed are the offsets `x - M / 2` from
  the object centre, and the origin is set explicitly to `M / 2 + (N - 1) / 2 - N // 2`
  (`M / 2 - 0.5` for even N). pty-chi interpolates sub-pixel positions with a Fourier
  shift where the simulator interpolates bilinearly, which differs slightly for
  jittered positions.
"""

import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np

from fly64.errors import InputError
from fly64.physics.scan import check_scan_inside

logger = logging.getLogger(__name__)

NOISE_MODELS = ("gaussian", "poisson")

# Fraction of LSQML's least-squares optimal object step that is applied (pty-chi's default).
OBJECT_STEP_SIZE_SCALER = 0.9


@dataclasses.dataclass(frozen=True)
class ClassicalResult:
    """A classical reconstruction.

    Attributes:
        object: complex64 (M_rows, M_columns) reconstructed object on the grid of the
            ground truth. Pixels no patch reaches keep the initial value 1.
        seconds: wall time of building and running the pty-chi task, without imports.
        options: the settings used (JSON-ready), including the scale factor and whether
            it was estimated.
    """

    object: np.ndarray
    seconds: float
    options: dict[str, Any]


def estimate_scale_factor(diffraction_amplitude: np.ndarray, probe: np.ndarray) -> float:
    """Estimate the dose scale factor c from the mean counts per pattern.

    With counts `n ~ Poisson(c * |F_ortho(P * O_j)|^2)`, Parseval gives
    `E[sum n_j] = c * sum |P * O_j|^2`. Assuming `|O| = 1` under the probe, c is the mean
    counts per pattern divided by `sum |P|^2`. An object that absorbs makes this estimate
    low by the mean of `|O|^2`, and the reconstructed amplitude then comes out high by
    the inverse square root of that factor.

    Raises:
        InputError: the patterns hold no counts or the probe has no power.
    """
    mean_counts = float(np.mean(np.sum(np.square(diffraction_amplitude, dtype=np.float64), axis=(-2, -1))))
    probe_power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    if mean_counts <= 0:
        raise InputError("diffraction contains only zeros; cannot estimate the dose scale factor")
    if probe_power <= 0:
        raise InputError("probe is all zeros; cannot estimate the dose scale factor")
    return mean_counts / probe_power


def reconstruct_lsqml(
    diffraction_amplitude: np.ndarray,
    probe: np.ndarray,
    positions_xy: np.ndarray,
    object_shape: tuple[int, int],
    epochs: int = 50,
    batch_size: int = 32,
    scale_factor: float | None = None,
    seed: int = 0,
    noise_model: str = "gaussian",
    threads: int = 0,
) -> ClassicalResult:
    """Reconstruct the object with pty-chi's LSQML on the CPU, holding the known probe fixed.

    Settings: only the object is optimised, starting from ones; the probe and the
    positions stay fixed. Minibatches of `batch_size` patterns are drawn at random each
    epoch (seeded). The object step is LSQML's least-squares optimal step scaled by
    `OBJECT_STEP_SIZE_SCALER`. The probe is not rescaled in the first epoch and the
    object-probe ambiguity is not removed, because the probe already carries the dose.
    Computation is float32 with deterministic algorithms.

    Args:
        diffraction_amplitude: float32 (n, N, N), square roots of counts with zero
            frequency at the centre (this project's data contract).
        probe: complex64 (N, N), normalised so that `sum |P|^2 = 1`.
        positions_xy: float64 (n, 2), patch centres in object pixels, columns (x, y).
        object_shape: (M_rows, M_columns) of the object to reconstruct.
        epochs: LSQML epochs, >= 1.
        batch_size: patterns per minibatch, >= 1.
        scale_factor: dose scale factor c of the simulation; None estimates it with
            `estimate_scale_factor` and logs a warning.
        seed: seed of pty-chi's random minibatches.
        noise_model: "gaussian" (on amplitudes) or "poisson" (on counts), LSQML's two
            likelihoods.
        threads: torch CPU threads; 0 keeps torch's default.

    Raises:
        InputError: arrays of the wrong shape, dtype or values, a scan that leaves the
            object, or a setting out of range.
    """
    diffraction_amplitude, probe, positions = _validated_inputs(diffraction_amplitude, probe, positions_xy, object_shape)
    if epochs < 1:
        raise InputError(f"epochs is {epochs}; expected >= 1")
    if batch_size < 1:
        raise InputError(f"batch_size is {batch_size}; expected >= 1")
    if noise_model not in NOISE_MODELS:
        raise InputError(f"noise_model is {noise_model!r}; expected one of {', '.join(NOISE_MODELS)}")
    if threads < 0:
        raise InputError(f"threads is {threads}; expected >= 0 (0 keeps torch's default)")

    scale_estimated = scale_factor is None
    if scale_factor is None:
        scale_factor = estimate_scale_factor(diffraction_amplitude, probe)
        logger.warning(
            "dose scale factor not given; estimated c = %.6g from the mean counts, assuming |object| = 1 under the probe",
            scale_factor,
        )
    elif not (math.isfinite(scale_factor) and scale_factor > 0):
        raise InputError(f"scale_factor is {scale_factor}; expected a finite value > 0")

    patch_size = probe.shape[0]
    rows, columns = int(object_shape[0]), int(object_shape[1])
    origin_offset = (patch_size - 1) / 2 - patch_size // 2
    origin_yx = np.array([rows / 2 + origin_offset, columns / 2 + origin_offset])
    position_y_px = positions[:, 1] - rows / 2
    position_x_px = positions[:, 0] - columns / 2

    intensities = np.square(diffraction_amplitude, dtype=np.float32)
    probe_photons = (probe.astype(np.complex128) * math.sqrt(scale_factor) / patch_size).astype(np.complex64)

    reconstructed, seconds = _run_ptychi(
        intensities=intensities,
        probe=probe_photons,
        position_y_px=position_y_px,
        position_x_px=position_x_px,
        object_shape=(rows, columns),
        origin_yx=origin_yx,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        noise_model=noise_model,
        threads=threads,
    )

    options = {
        "algorithm": "LSQML",
        "library": "ptychi",
        "library_version": _ptychi_version(),
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "batching_mode": "random",
        "seed": int(seed),
        "noise_model": noise_model,
        "optimised": ["object"],
        "fixed": ["probe", "probe_positions"],
        "object_initial_value": 1.0,
        "object_step_size_scaler": OBJECT_STEP_SIZE_SCALER,
        "scale_factor": float(scale_factor),
        "scale_factor_estimated": scale_estimated,
        "device": "cpu",
        "dtype": "float32",
        "threads": int(threads),
        "n_patterns": int(intensities.shape[0]),
        "patch_size": int(patch_size),
        "object_shape": [rows, columns],
        "position_origin_yx_px": origin_yx.tolist(),
    }
    logger.info("LSQML: %d patterns, %d epochs in %.1f s", intensities.shape[0], epochs, seconds)
    return ClassicalResult(object=reconstructed, seconds=seconds, options=options)


def _run_ptychi(
    *,
    intensities: np.ndarray,
    probe: np.ndarray,
    position_y_px: np.ndarray,
    position_x_px: np.ndarray,
    object_shape: tuple[int, int],
    origin_yx: np.ndarray,
    epochs: int,
    batch_size: int,
    seed: int,
    noise_model: str,
    threads: int,
) -> tuple[np.ndarray, float]:
    """Build and run the pty-chi task; return the object as complex64 (rows, columns) and the seconds taken.

    The seconds cover building and running the task, not importing torch and pty-chi.
    """
    import torch
    from ptychi import api
    from ptychi.api.task import PtychographyTask

    previous_device = torch.get_default_device()
    previous_dtype = torch.get_default_dtype()
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)

    options = api.LSQMLOptions()
    reconstructor = options.reconstructor_options
    reconstructor.num_epochs = epochs
    reconstructor.batch_size = batch_size
    reconstructor.batching_mode = api.BatchingModes.RANDOM
    reconstructor.default_device = api.Devices.CPU
    reconstructor.default_dtype = api.Dtypes.FLOAT32
    reconstructor.random_seed = seed
    reconstructor.allow_nondeterministic_algorithms = False
    reconstructor.noise_model = api.NoiseModels.POISSON if noise_model == "poisson" else api.NoiseModels.GAUSSIAN
    reconstructor.rescale_probe_intensity_in_first_epoch = False

    options.data_options.fft_shift = True
    options.object_options.optimizable = True
    options.object_options.optimal_step_size_scaler = OBJECT_STEP_SIZE_SCALER
    options.object_options.remove_object_probe_ambiguity.enabled = False
    options.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = origin_yx
    options.probe_options.optimizable = False
    options.probe_position_options.optimizable = False

    started = time.perf_counter()
    try:
        task = PtychographyTask(
            options,
            diffraction_data=intensities,
            object_data=np.ones((1, *object_shape), dtype=np.complex64),
            probe_data=probe[None, None],
            probe_position_y_px=position_y_px,
            probe_position_x_px=position_x_px,
        )
        task.run()
        reconstructed = task.get_data_to_cpu("object", as_numpy=True)[0]
    finally:
        torch.set_default_device(previous_device)
        torch.set_default_dtype(previous_dtype)
        torch.set_num_threads(previous_threads)
    return np.ascontiguousarray(reconstructed, dtype=np.complex64), time.perf_counter() - started


def _validated_inputs(
    diffraction_amplitude: np.ndarray, probe: np.ndarray, positions_xy: np.ndarray, object_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    diffraction_amplitude = np.asarray(diffraction_amplitude)
    probe = np.asarray(probe)
    positions = np.asarray(positions_xy, dtype=np.float64)

    if diffraction_amplitude.ndim != 3 or diffraction_amplitude.shape[1] != diffraction_amplitude.shape[2]:
        raise InputError(f"diffraction has shape {diffraction_amplitude.shape}; expected (n, N, N)")
    if np.iscomplexobj(diffraction_amplitude):
        raise InputError("diffraction is complex; expected real amplitudes (square roots of counts)")
    if not np.all(np.isfinite(diffraction_amplitude)) or np.any(diffraction_amplitude < 0):
        raise InputError("diffraction contains negative, NaN or infinite values; expected amplitudes >= 0")

    n_patterns, patch_size = diffraction_amplitude.shape[0], diffraction_amplitude.shape[1]
    if probe.shape != (patch_size, patch_size) or not np.iscomplexobj(probe):
        raise InputError(f"probe has shape {probe.shape} and dtype {probe.dtype}; expected complex ({patch_size}, {patch_size})")
    if not np.all(np.isfinite(probe)):
        raise InputError("probe contains NaN or infinite values")
    if positions.shape != (n_patterns, 2):
        raise InputError(f"positions have shape {positions.shape}; expected ({n_patterns}, 2), one (x, y) per pattern")
    if len(object_shape) != 2 or min(object_shape) < patch_size:
        raise InputError(f"object_shape is {tuple(object_shape)}; expected (rows, columns), each >= {patch_size}")
    check_scan_inside(tuple(object_shape), positions, patch_size, source="classical reconstruction")
    return diffraction_amplitude.astype(np.float32, copy=False), probe.astype(np.complex64, copy=False), positions


def _ptychi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ptychi")
    except PackageNotFoundError:
        return "unknown"
