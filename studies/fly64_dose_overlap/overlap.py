"""Phase D: overlap views, subsets of the Phase C scans spaced for a target overlap.

For each dose, split and view, the Phase C positions are subsampled to the view's
spacing (see `fly64.physics.overlap.subsample_for_spacing`) with the `subsampling` seed.
The `[overlap] spacing_rule` of the config sets that spacing from the target overlap f:
`patch_size` takes the design's threshold `(1 - f) * N`, and `probe_overlap` takes the
distance at which two footprint discs of the measured probe diameter overlap by f. Phase C scans the same positions at every dose, so every dose
keeps the same indices. Each view is written as

```
<phase_d_root>/dose_<d>/<view>/<view>_<split>.npz
<phase_d_root>/dose_<d>/<view>/<view>_<split>_metrics.json
```

The metrics record the subsampling and three overlap figures: image-based (each unique
position against its K nearest others), group-based (within gridsize-2 groups) and
group-to-group (between group centres). A view that keeps fewer than K positions cannot
be grouped: its files are not written (stale ones are removed) and it is listed under
`skipped_views` in the returned summary.

NOTE: under the `patch_size` rule the spacing scales with N, not with the probe diameter
that the overlap metrics use. With a probe narrower than the window, as the real fly64
probe (about 30 px across at N = 128) and the embedded one (about 0.4 N) are, the
measured overlap then falls far below the target: the dense view's 38.4 px at N = 128
leaves the real probe's footprints apart. Both figures are recorded in the metrics.
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fly64.atomic import write_json
from fly64.contract import Dataset, load_dataset, provenance, save_dataset
from fly64.errors import InputError
from fly64.physics import overlap as geometry
from fly64.physics.grouping import build_groups
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.config import StudyConfig
from studies.fly64_dose_overlap.design import StudyDesign, dose_label

logger = logging.getLogger(__name__)

PHASE_D_STEP = "phase_d"


def generate_phase_d(config: StudyConfig, phase_c_root: Path, phase_d_root: Path) -> dict[str, Any]:
    """Write the overlap views of every dose and split, with their metrics.

    Args:
        config: study configuration; its design gives doses, views, spacing thresholds,
            K, the largest gridsize and the `subsampling` and `grouping` seeds.
        phase_c_root: folder containing `dose_<d>/patched_{train,test}.npz`.
        phase_d_root: output folder, created when missing.

    Returns:
        JSON-ready summary: `phase_d_root`, `views` (one entry per written view with its
        metrics and paths), `skipped_views` (`dose, view, split, reason`), `written_count`
        and `skipped_count`.

    Raises:
        InputError: a Phase C file is missing or breaks the data contract. Missing files
            are reported before anything is written.
    """
    design = config.design()
    phase_c_root = Path(phase_c_root)
    phase_d_root = Path(phase_d_root)
    _check_phase_c_files(design, phase_c_root)

    written: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for dose_photons in design.dose_list:
        for split in layout.SPLITS:
            phase_c_path = layout.phase_c_file(phase_c_root, dose_photons, split)
            dataset = load_dataset(phase_c_path)
            logger.info(
                "Phase D: dose %s %s split, %d positions from %s",
                dose_label(dose_photons), split, dataset.n_patterns, phase_c_path,
            )
            for view in design.overlap_views:
                spacing_px = view_spacing_px(config, view, dataset.probe)
                entry = _write_view(
                    design, dataset, phase_c_path, phase_d_root, dose_photons, view, split,
                    spacing_px, config.overlap.spacing_rule,
                )
                if "reason" in entry:
                    skipped.append(entry)
                else:
                    written.append(entry)

    logger.info("Phase D: %d view file(s) written, %d skipped, under %s", len(written), len(skipped), phase_d_root)
    return {
        "phase_d_root": str(phase_d_root),
        "views": written,
        "skipped_views": skipped,
        "written_count": len(written),
        "skipped_count": len(skipped),
    }


def view_spacing_px(config: StudyConfig, view: str, probe: np.ndarray) -> float:
    """Return the spacing in pixels that `view` subsamples to, by the config's `[overlap] spacing_rule`."""
    design = config.design()
    if config.overlap.spacing_rule == "probe_overlap":
        return geometry.spacing_for_overlap_px(design.overlap_views[view], geometry.probe_diameter_px(probe))
    return design.spacing_thresholds[view]


def view_metrics(
    positions_xy: np.ndarray,
    probe: np.ndarray,
    neighbor_count: int,
    group_size: int,
    grouping_seed: int,
) -> dict[str, Any]:
    """Compute the overlap metrics of one view's positions.

    Args:
        positions_xy: float (n, 2) selected positions (x, y) in pixels, n >= `neighbor_count`.
        probe: complex (N, N) probe, whose diameter sets the disc footprint.
        neighbor_count: K, for neighbour overlap and for grouping.
        group_size: C of the largest gridsize; with C < 2 the two group metrics are None.
        grouping_seed: seed of `build_groups`.

    Returns:
        `probe_diameter_px`, `probe_diameter_method`, `image_overlap`, `group_overlap`,
        `group_to_group_overlap` and `mean_nearest_neighbor_spacing_px` (None for one position).
    """
    diameter_px = geometry.probe_diameter_px(probe)
    metrics: dict[str, Any] = {
        "probe_diameter_px": diameter_px,
        "probe_diameter_method": geometry.PROBE_DIAMETER_METHOD,
        "image_overlap": geometry.image_overlap(positions_xy, diameter_px, neighbor_count),
        "group_overlap": None,
        "group_to_group_overlap": None,
    }

    if group_size >= 2:
        groups = build_groups(positions_xy, neighbor_count, group_size, grouping_seed)
        metrics["group_overlap"] = geometry.group_overlap(positions_xy, groups, diameter_px)
        metrics["group_to_group_overlap"] = geometry.group_to_group_overlap(
            positions_xy, groups, diameter_px, neighbor_count
        )

    nearest_px = geometry.nearest_neighbour_distances_px(positions_xy)
    metrics["mean_nearest_neighbor_spacing_px"] = float(nearest_px.mean()) if np.all(np.isfinite(nearest_px)) else None
    return metrics


def _check_phase_c_files(design: StudyDesign, phase_c_root: Path) -> None:
    for dose_photons in design.dose_list:
        for split in layout.SPLITS:
            path = layout.phase_c_file(phase_c_root, dose_photons, split)
            if not path.is_file():
                raise InputError(f"{path}: Phase C file not found; run `fly64 generate` for dose {dose_label(dose_photons)} first")


def _write_view(
    design: StudyDesign,
    dataset: Dataset,
    phase_c_path: Path,
    phase_d_root: Path,
    dose_photons: float,
    view: str,
    split: str,
    spacing_px: float,
    spacing_rule: str,
) -> dict[str, Any]:
    """Subsample, measure and write one view; return its summary entry, or its skip record with a `reason`."""
    data_path = layout.phase_d_file(phase_d_root, dose_photons, view, split)
    metrics_path = layout.phase_d_metrics_file(phase_d_root, dose_photons, view, split)
    target_overlap = design.overlap_views[view]
    subsampling_seed = design.rng_seeds["subsampling"]
    neighbor_count = design.neighbor_count

    positions_xy = dataset.positions_xy
    fraction = geometry.subsample_fraction(positions_xy, spacing_px)
    selected_indices = geometry.subsample_for_spacing(positions_xy, spacing_px, subsampling_seed)

    if selected_indices.size < neighbor_count:
        reason = (
            f"spacing {spacing_px:g} px keeps {selected_indices.size} of {dataset.n_patterns} positions, "
            f"fewer than neighbor_count K = {neighbor_count} needed for grouping"
        )
        logger.warning("Phase D: skipping %s %s at dose %s: %s", view, split, dose_label(dose_photons), reason)
        _remove_stale(data_path, metrics_path)
        return {"dose": dose_photons, "view": view, "split": split, "reason": reason}

    parameters = {
        "dose": dose_photons,
        "view": view,
        "split": split,
        "target_overlap_fraction": target_overlap,
        "spacing_threshold_px": spacing_px,
        "spacing_rule": spacing_rule,
        "subsampling_fraction": fraction,
        "subsampling_seed": subsampling_seed,
    }
    # Readers of a view (the classical reconstruction) need the dose scale factor of the
    # simulation, so it is carried over from the Phase C parameters.
    phase_c_parameters = dataset.metadata.get("parameters", {})
    if "scale_factor" in phase_c_parameters:
        parameters["scale_factor"] = phase_c_parameters["scale_factor"]
    metadata = provenance(step=PHASE_D_STEP, parameters=parameters, inputs=[phase_c_path])
    metadata["input_metadata"] = dataset.metadata
    view_dataset = dataset.subset(selected_indices, metadata=metadata)

    metrics = {
        "view": view,
        "split": split,
        "dose": dose_photons,
        "n_input": dataset.n_patterns,
        "n_selected": int(selected_indices.size),
        "subsampling_fraction": fraction,
        "subsampling_seed": subsampling_seed,
        "spacing_threshold_px": spacing_px,
        "spacing_rule": spacing_rule,
        "target_overlap_fraction": target_overlap,
        "neighbor_count": neighbor_count,
        "group_size": design.max_group_size,
        "grouping_seed": design.rng_seeds["grouping"],
        **view_metrics(
            view_dataset.positions_xy,
            dataset.probe,
            neighbor_count,
            design.max_group_size,
            design.rng_seeds["grouping"],
        ),
    }

    for path in (data_path, metrics_path):
        if path.exists():
            logger.warning("Phase D: overwriting %s", path)
    save_dataset(data_path, view_dataset)
    write_json(metrics_path, metrics)

    logger.info(
        "Phase D: %s %s at dose %s kept %d of %d positions (s = %.3f); overlap image %.3f, "
        "group %s, group-to-group %s (target %.2f)",
        view, split, dose_label(dose_photons), metrics["n_selected"], metrics["n_input"], fraction,
        metrics["image_overlap"], _format_optional(metrics["group_overlap"]),
        _format_optional(metrics["group_to_group_overlap"]), target_overlap,
    )
    return {**metrics, "data_path": str(data_path), "metrics_path": str(metrics_path)}


def _remove_stale(*paths: Path) -> None:
    # A file left by an earlier run would let later phases train on a view this run rejects.
    for path in paths:
        if path.exists():
            logger.warning("Phase D: removing stale %s", path)
            path.unlink()


def _format_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
