"""Phase C: simulate the scan at every dose and write train and test datasets.

Every dose uses the same object, probe, scan positions and noise seed, so only the
photon count differs. The scan splits along `train_test_split_axis`: positions
whose coordinate lies below `low + train_fraction * (high - low)` of the scan's extent
form the train set, the rest the test set. Each dose gets

    <phase_c_root>/dose_<d>/patched_train.npz
    <phase_c_root>/dose_<d>/patched_test.npz

written through `fly64.contract.save_dataset`. Positions within each file keep their scan
order, and `scan_index` records each position's index in the full scan.
"""

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fly64.atomic import sha256_file
from fly64.contract import Dataset, provenance, save_dataset
from fly64.errors import InputError
from fly64.physics.forward import Simulation, simulate_diffraction
from fly64.physics.objects import default_object
from fly64.physics.probe import default_probe, load_probe
from fly64.physics.scan import check_scan_inside, raster_positions, spiral_positions
from studies.fly64_dose_overlap.config import StudyConfig
from studies.fly64_dose_overlap.design import dose_folder_name

logger = logging.getLogger(__name__)

STEP = "phase_c"
TRAIN_FILE = "patched_train.npz"
TEST_FILE = "patched_test.npz"
EMBEDDED_PROBE = "embedded default"
# The measured mean photons per pattern matches the dose when it lies within this many
# Poisson standard errors, sqrt(dose / n).
DOSE_TOLERANCE_STANDARD_ERRORS = 5.0


@dataclasses.dataclass(frozen=True)
class ScanSplit:
    """Scan positions ordered train first, then test, each part in scan order.

    Attributes:
        positions_xy: float64 (n, 2) columns (x, y).
        scan_index: int64 (n,), each position's index in the full scan.
        n_train: the first `n_train` positions form the train set.
        split_coordinate_px: the coordinate along the split axis that separates the parts.
    """

    positions_xy: np.ndarray
    scan_index: np.ndarray
    n_train: int
    split_coordinate_px: float


def generate_phase_c(config: StudyConfig, phase_c_root: Path, probe_path: Path | None = None) -> dict[str, Any]:
    """Simulate every dose of the design and write its train and test NPZ files.

    Args:
        config: the study config; `[study]` gives N, doses, seed and split, and
            `[simulation]` the object size, scan and chunking.
        phase_c_root: folder that receives one `dose_<d>` folder per dose.
        probe_path: NPZ file with `probeGuess`; None uses the embedded modelled probe.

    Returns:
        A JSON-ready summary: the probe source, the scan, and per dose the two file paths,
        pattern counts, the scale factor and the measured mean photons per pattern.

    Raises:
        InputError: an unusable probe file, or a scan that does not fit the object or leaves
            one split empty. These are checked before any file is written.
    """
    design = config.design()
    simulation_settings = config.simulation
    patch_size = design.patch_size_pixels
    seed = design.rng_seeds["simulation"]
    phase_c_root = Path(phase_c_root)

    probe, probe_source = _probe(probe_path, patch_size)
    obj = default_object(simulation_settings.object_size_px)
    scan = _scan(config)
    check_scan_inside(obj.shape, scan.positions_xy, patch_size, source="[simulation] scan settings")
    logger.info(
        "Phase C: %d scan positions (%d train, %d test), N = %d, object %d px, probe: %s",
        scan.positions_xy.shape[0],
        scan.n_train,
        scan.positions_xy.shape[0] - scan.n_train,
        patch_size,
        simulation_settings.object_size_px,
        probe_source["source"],
    )

    doses = []
    for dose_photons in design.dose_list:
        started = time.perf_counter()
        simulation = simulate_diffraction(
            obj,
            probe,
            scan.positions_xy,
            dose_photons,
            seed,
            chunk_patterns=simulation_settings.chunk_patterns,
            workers=simulation_settings.workers,
        )
        elapsed_s = time.perf_counter() - started
        logger.info(
            "dose %.0e: %d patterns in %.2f s (%.0f patterns/s), measured %.1f photons per pattern (scale factor %.4g)",
            dose_photons,
            scan.positions_xy.shape[0],
            elapsed_s,
            scan.positions_xy.shape[0] / max(elapsed_s, 1e-9),
            simulation.mean_photons_per_pattern,
            simulation.scale_factor,
        )
        doses.append(_write_dose(config, phase_c_root, obj, probe, probe_source, scan, simulation))

    return {
        "step": STEP,
        "phase_c_root": str(phase_c_root),
        "probe": {key: value for key, value in probe_source.items() if key != "path"},
        "n_positions": int(scan.positions_xy.shape[0]),
        "doses": doses,
    }


def _probe(probe_path: Path | None, patch_size: int) -> tuple[np.ndarray, dict[str, str]]:
    if probe_path is None:
        return default_probe(patch_size), {"source": EMBEDDED_PROBE}
    probe = load_probe(probe_path, patch_size)
    return probe, {"source": Path(probe_path).name, "sha256": sha256_file(probe_path), "path": str(probe_path)}


def _scan(config: StudyConfig) -> ScanSplit:
    """Lay out the scan of `[simulation]` and split it along the design's axis."""
    design = config.design()
    settings = config.simulation
    patch_size = design.patch_size_pixels
    seed = design.rng_seeds["simulation"]
    if settings.scan_pattern == "raster":
        positions = raster_positions(
            settings.object_size_px, patch_size, settings.scan_step_px, settings.jitter_px, settings.margin_px, seed
        )
    else:
        positions = spiral_positions(
            settings.object_size_px, patch_size, settings.scan_step_px, settings.margin_px, seed
        )

    axis = 1 if design.train_test_split_axis == "y" else 0
    coordinate = positions[:, axis]
    low, high = float(coordinate.min()), float(coordinate.max())
    split_coordinate_px = low + design.train_fraction * (high - low)
    is_train = coordinate < split_coordinate_px
    n_train = int(is_train.sum())
    if n_train == 0 or n_train == positions.shape[0]:
        raise InputError(
            f"[simulation] scan settings give {positions.shape[0]} position(s) that do not split into train and test "
            f"along {design.train_test_split_axis} at fraction {design.train_fraction}; "
            "use a smaller scan_step_px or a larger object_size_px"
        )

    scan_index = np.concatenate([np.flatnonzero(is_train), np.flatnonzero(~is_train)]).astype(np.int64)
    return ScanSplit(
        positions_xy=positions[scan_index],
        scan_index=scan_index,
        n_train=n_train,
        split_coordinate_px=split_coordinate_px,
    )


def _write_dose(
    config: StudyConfig,
    phase_c_root: Path,
    obj: np.ndarray,
    probe: np.ndarray,
    probe_source: dict[str, str],
    scan: ScanSplit,
    simulation: Simulation,
) -> dict[str, Any]:
    """Write the train and test files of one dose and return its summary."""
    design = config.design()
    settings = config.simulation
    dose_photons = simulation.nominal_dose_photons
    folder = phase_c_root / dose_folder_name(dose_photons)
    deviation = abs(simulation.mean_photons_per_pattern - dose_photons) / simulation.photons_standard_error
    matches_dose = bool(deviation <= DOSE_TOLERANCE_STANDARD_ERRORS)
    if not matches_dose:
        logger.warning(
            "dose %.0e: measured %.2f photons per pattern, %.1f standard errors from the nominal dose",
            dose_photons,
            simulation.mean_photons_per_pattern,
            deviation,
        )

    common_parameters = {
        "dose_photons": dose_photons,
        "seed": design.rng_seeds["simulation"],
        "patch_size_pixels": design.patch_size_pixels,
        "object_size_px": settings.object_size_px,
        "object": "embedded default",
        "scan": {
            "pattern": settings.scan_pattern,
            "step_px": settings.scan_step_px,
            "jitter_px": settings.jitter_px,
            "margin_px": settings.margin_px,
            "n_positions": int(scan.positions_xy.shape[0]),
        },
        "chunk_patterns": settings.chunk_patterns,
        "scale_factor": simulation.scale_factor,
        "measured_mean_photons_per_pattern": simulation.mean_photons_per_pattern,
        "photons_standard_error": simulation.photons_standard_error,
        "measured_matches_nominal_dose": matches_dose,
        "dose_tolerance_standard_errors": DOSE_TOLERANCE_STANDARD_ERRORS,
        "probe": {key: value for key, value in probe_source.items() if key != "path"},
    }
    inputs = [] if probe_source["source"] == EMBEDDED_PROBE else [probe_source["path"]]

    summary: dict[str, Any] = {
        "dose_photons": dose_photons,
        "folder": str(folder),
        "scale_factor": simulation.scale_factor,
        "mean_photons_per_pattern": simulation.mean_photons_per_pattern,
        "measured_matches_nominal_dose": matches_dose,
    }
    n_total = scan.positions_xy.shape[0]
    for part, file_name, part_slice in (
        ("train", TRAIN_FILE, slice(0, scan.n_train)),
        ("test", TEST_FILE, slice(scan.n_train, n_total)),
    ):
        photons = simulation.photons_per_pattern[part_slice]
        parameters = dict(common_parameters)
        parameters["split"] = {
            "part": part,
            "axis": design.train_test_split_axis,
            "train_fraction": design.train_fraction,
            "split_coordinate_px": scan.split_coordinate_px,
            "n_patterns": int(photons.shape[0]),
            "measured_mean_photons_per_pattern": float(photons.mean()),
        }
        # Slices of the simulation's arrays are views, so writing a part copies nothing.
        dataset = Dataset(
            diffraction=simulation.amplitude[part_slice],
            object=obj,
            probe=probe,
            xcoords=scan.positions_xy[part_slice, 0],
            ycoords=scan.positions_xy[part_slice, 1],
            patches=simulation.patches[part_slice],
            scan_index=scan.scan_index[part_slice],
            metadata=provenance(STEP, parameters, inputs),
        )
        path = folder / file_name
        if path.exists():
            logger.warning("overwriting %s", path)
        save_dataset(path, dataset)
        summary[f"{part}_path"] = str(path)
        summary[f"n_{part}"] = int(photons.shape[0])
        summary[f"{part}_mean_photons_per_pattern"] = float(photons.mean())
    return summary
