"""The study report: one Markdown file and PNG figures built from the artifacts of phases C to G.

    <root>/analysis/report.md
    <root>/analysis/figures/reconstructions_amplitude.png   rows: dose; columns: ground truth,
    <root>/analysis/figures/reconstructions_phase.png       PtychoPINN per view, Baseline, PtyChi
    <root>/analysis/figures/metrics_vs_dose.png             SSIM, PSNR, FRC 0.5 against dose
    <root>/analysis/figures/frc_curves.png                  FRC of every comparison
    <root>/analysis/figures/training_loss.png               Phase E loss histories

The report reads files only (no recomputation): Phase C provenance for the measured
photons per pattern, Phase D overlap metrics, the training and reconstruction manifests
for timings, and the Phase G outputs for metrics, curves and aligned images. Phase G's
outputs are required; the other inputs are reported as not available when missing.

Trends with dose are computed, not assumed. For each model and view, each step to the
next dose counts as an improvement when the metric moves in its better direction by
more than `TREND_TOLERANCES` (SSIM 0.01, PSNR 0.1 dB, FRC resolution 2 %).

Figures are drawn with matplotlib's object-oriented API on the Agg canvas, never with
pyplot, so the report works without a display and leaves pyplot's global state alone.
"""

import datetime
import io
import itertools
import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fly64 import __version__
from fly64.atomic import write_bytes, write_text
from fly64.errors import InputError
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.comparison import (
    ALIGNED_NAME,
    COMPARISON_MANIFEST_NAME,
    COMPONENTS,
    DELTAS_NAME,
    FRC_CURVES_NAME,
    HIGHER_IS_BETTER,
    KEY_GROUND_TRUTH,
    METRICS,
    comparison_dir,
)
from studies.fly64_dose_overlap.config import StudyConfig
from studies.fly64_dose_overlap.design import dose_label
from studies.fly64_dose_overlap.reconstruction import (
    MODEL_BASELINE,
    MODEL_PINN,
    MODEL_PTYCHI,
    MODELS,
    STATUS_COMPLETED,
    reconstruction_manifest_path,
)

logger = logging.getLogger(__name__)

# Phase D's rule from a view's target overlap f to its spacing, per `[overlap] spacing_rule`.
SPACING_RULE_TEXT = {
    "patch_size": "(1 - f) x N, the design's rule, which ignores the probe's size",
    "probe_overlap": "the distance at which two footprint discs of the probe diameter overlap by f",
}

REPORT_NAME = "report.md"
FIGURES_DIR = "figures"
FIGURE_AMPLITUDE_GRID = "reconstructions_amplitude.png"
FIGURE_PHASE_GRID = "reconstructions_phase.png"
FIGURE_METRICS = "metrics_vs_dose.png"
FIGURE_FRC = "frc_curves.png"
FIGURE_LOSS = "training_loss.png"

GRID_CELL_HEIGHT_IN = 2.2
GRID_MAX_CELL_WIDTH_IN = 4.5
MODEL_COLOURS = {MODEL_PINN: "tab:blue", MODEL_BASELINE: "tab:orange", MODEL_PTYCHI: "tab:green"}
VIEW_LINE_STYLES = ["-", "--", "-.", ":"]
TREND_METRICS = ("ssim", "psnr", "frc50")
METRIC_TITLES = {
    "mae": "MAE",
    "mse": "MSE",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "ms_ssim": "MS-SSIM",
    "frc50": "FRC 0.5 resolution (px)",
    "frc17": "FRC 1/7 resolution (px)",
}
# Smallest change between two doses that counts as a change: absolute for SSIM and PSNR
# (dB), relative for the FRC resolution.
TREND_TOLERANCES = {"ssim": ("absolute", 0.01), "psnr": ("absolute", 0.1), "frc50": ("relative", 0.02)}


def write_report(config: StudyConfig, root: Path) -> Path:
    """Write `<root>/analysis/report.md` and its figures; return the report's path.

    Raises:
        InputError: Phase G's comparison manifest is missing or unreadable (run
            `fly64 compare` first).
    """
    root = Path(root)
    analysis = layout.analysis_root(root)
    inputs = load_report_inputs(config, root)
    figures_dir = analysis / FIGURES_DIR
    dpi = config.report.dpi

    figures = {
        "amplitude_grid": draw_reconstruction_grid(inputs, "amplitude", figures_dir / FIGURE_AMPLITUDE_GRID, dpi),
        "phase_grid": draw_reconstruction_grid(inputs, "phase", figures_dir / FIGURE_PHASE_GRID, dpi),
        "metrics": draw_metrics_vs_dose(inputs, figures_dir / FIGURE_METRICS, dpi),
        "frc": draw_frc_curves(inputs, figures_dir / FIGURE_FRC, dpi),
        "loss": draw_training_loss(inputs, figures_dir / FIGURE_LOSS, dpi),
    }
    report_path = analysis / REPORT_NAME
    write_text(report_path, render_markdown(inputs, figures, analysis))
    logger.info("Report: %s (%d figure(s))", report_path, sum(1 for path in figures.values() if path is not None))
    return report_path


# ---------------------------------------------------------------------------------------
# Inputs


def load_report_inputs(config: StudyConfig, root: Path) -> dict[str, Any]:
    """Gather everything the report shows into one dict of plain data and arrays.

    Raises:
        InputError: the comparison manifest is missing or not JSON.
    """
    analysis = layout.analysis_root(root)
    design = config.design()
    comparison_manifest = _read_json(analysis / COMPARISON_MANIFEST_NAME, required=True, hint="run `fly64 compare` first")
    records = [record for record in comparison_manifest.get("comparisons", []) if record.get("status") == STATUS_COMPLETED]
    doses = sorted({float(record["dose"]) for record in records} | set(design.dose_list))
    views = list(design.overlap_views)

    aligned = {}
    for dose in doses:
        for view in [*views, layout.BASELINE_VIEW]:
            crops = _read_aligned(comparison_dir(root, dose, view) / ALIGNED_NAME)
            if crops:
                aligned[(dose, view)] = crops

    return {
        "root": root,
        "design": design,
        "doses": doses,
        "views": views,
        "records": records,
        "comparison_manifest": comparison_manifest,
        "deltas": _read_json(analysis / DELTAS_NAME) or {"deltas": []},
        "frc_curves": (_read_json(analysis / FRC_CURVES_NAME) or {}).get("curves", []),
        "aligned": aligned,
        "training": _read_json(layout.phase_e_root(root) / layout.TRAINING_MANIFEST_NAME),
        "reconstruction": _read_json(reconstruction_manifest_path(root)),
        "photons": _read_photons(root, doses),
        "overlap": _read_overlap(root, doses, views),
    }


def _read_json(path: Path, required: bool = False, hint: str = "") -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise InputError(f"{path}: not found; {hint}")
        logger.warning("Report: %s not found; its section is marked as not available", path)
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        if required:
            raise InputError(f"{path}: not readable JSON ({error})") from None
        logger.warning("Report: %s is not readable JSON (%s); its section is marked as not available", path, error)
        return None
    return document if isinstance(document, dict) else None


def _read_aligned(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files if key == KEY_GROUND_TRUTH or key in MODELS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        logger.warning("Report: %s is not readable (%s); its images are left out", path, error)
        return {}


def _read_metadata(path: Path) -> dict[str, Any] | None:
    """Read only the `_metadata` member of an NPZ dataset (members load lazily)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "_metadata" not in archive.files:
                return None
            return json.loads(str(archive["_metadata"][()]))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
        return None


def _read_photons(root: Path, doses: list[float]) -> list[dict[str, Any]]:
    """Return per dose the measured photons per pattern of each Phase C split, from its provenance."""
    rows = []
    for dose in doses:
        row: dict[str, Any] = {"dose": dose}
        for split in layout.SPLITS:
            metadata = _read_metadata(layout.phase_c_file(layout.phase_c_root(root), dose, split)) or {}
            parameters = metadata.get("parameters", {})
            split_parameters = parameters.get("split", {})
            row[f"{split}_photons"] = split_parameters.get("measured_mean_photons_per_pattern")
            row[f"{split}_patterns"] = split_parameters.get("n_patterns")
            row.setdefault("all_photons", parameters.get("measured_mean_photons_per_pattern"))
            row.setdefault("scale_factor", parameters.get("scale_factor"))
            row.setdefault("matches", parameters.get("measured_matches_nominal_dose"))
        rows.append(row)
    return rows


def _read_overlap(root: Path, doses: list[float], views: list[str]) -> list[dict[str, Any]]:
    """Return the Phase D metrics of every dose, view and split that has them."""
    rows = []
    for dose in doses:
        for view in views:
            for split in layout.SPLITS:
                path = layout.phase_d_metrics_file(layout.phase_d_root(root), dose, view, split)
                metrics = _read_json(path) if path.is_file() else None
                if metrics is not None:
                    rows.append(metrics)
    return rows


def _record(inputs: dict[str, Any], dose: float, view: str, model: str) -> dict[str, Any] | None:
    for record in inputs["records"]:
        if float(record["dose"]) == dose and record["view"] == view and record["model"] == model:
            return record
    return None


def _series_keys(inputs: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the (model, view) pairs that have comparisons, in model order, overlap views first."""
    view_order = [*inputs["views"], layout.BASELINE_VIEW]
    present = {(record["model"], record["view"]) for record in inputs["records"]}
    return [(model, view) for model in MODELS for view in view_order if (model, view) in present]


# ---------------------------------------------------------------------------------------
# Figures


def _save_figure(figure: Figure, path: Path, dpi: int) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue())
    return path


def grid_columns(inputs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return the image grid's columns as (title, model, view).

    Ground truth first, then PtychoPINN for each overlap view, then Baseline and PtyChi
    on the first overlap view that has them (the same data as PtychoPINN there).
    """
    columns = [("Ground truth", KEY_GROUND_TRUTH, "")]
    columns += [(f"{MODEL_PINN} {view}", MODEL_PINN, view) for view in inputs["views"]]
    for model in (MODEL_BASELINE, MODEL_PTYCHI):
        view = next((view for view in inputs["views"] if any(r["model"] == model and r["view"] == view for r in inputs["records"])), None)
        if view is not None:
            columns.append((f"{model} {view}", model, view))
    return columns


def draw_reconstruction_grid(inputs: dict[str, Any], component: str, path: Path, dpi: int) -> Path | None:
    """Draw amplitude or phase images: one row per dose, one column per `grid_columns` entry.

    Every image is the aligned crop of Phase G. A row shares one colour scale, the
    ground truth's range, so a reconstruction's contrast compares directly with it.
    Returns None when no aligned images exist.
    """
    doses = [dose for dose in inputs["doses"] if any(key[0] == dose for key in inputs["aligned"])]
    if not doses:
        return None
    columns = grid_columns(inputs)
    truths = {dose: _ground_truth_crop(inputs, dose) for dose in doses}
    aspect = max((truth.shape[1] / truth.shape[0] for truth in truths.values() if truth is not None), default=1.0)
    cell_width_in = float(np.clip(GRID_CELL_HEIGHT_IN * aspect, GRID_CELL_HEIGHT_IN, GRID_MAX_CELL_WIDTH_IN))
    cell_height_in = cell_width_in / aspect if aspect > 1 else GRID_CELL_HEIGHT_IN
    figure = Figure(
        figsize=(cell_width_in * len(columns) + 1.2, (cell_height_in + 0.4) * len(doses) + 0.6), layout="constrained"
    )
    axes = figure.subplots(len(doses), len(columns), squeeze=False)
    colour_map = "gray" if component == "amplitude" else "viridis"

    for row, dose in enumerate(doses):
        truth = truths[dose]
        limits = (None, None) if truth is None else _display_limits(_component(truth, component))
        image = None
        for column, (title, model, view) in enumerate(columns):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if truth is not None:
                axis.set_box_aspect(truth.shape[0] / truth.shape[1])
            if row == 0:
                axis.set_title(title, fontsize=9)
            if column == 0:
                axis.set_ylabel(f"dose {dose_label(dose)}", fontsize=9)
            crop = truth if model == KEY_GROUND_TRUTH else inputs["aligned"].get((dose, view), {}).get(model)
            if crop is None:
                axis.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=8, transform=axis.transAxes)
                continue
            image = axis.imshow(_component(crop, component), cmap=colour_map, vmin=limits[0], vmax=limits[1])
        if image is not None:
            unit = "amplitude" if component == "amplitude" else "phase (rad)"
            figure.colorbar(image, ax=axes[row, :].tolist(), shrink=0.9, label=unit)
    figure.suptitle(f"Reconstructed {component}, aligned and cropped to the scanned region", fontsize=11)
    return _save_figure(figure, path, dpi)


def _ground_truth_crop(inputs: dict[str, Any], dose: float) -> np.ndarray | None:
    for view in [*inputs["views"], layout.BASELINE_VIEW]:
        crops = inputs["aligned"].get((dose, view), {})
        if KEY_GROUND_TRUTH in crops:
            return crops[KEY_GROUND_TRUTH]
    return None


def _component(image: np.ndarray, component: str) -> np.ndarray:
    return np.abs(image) if component == "amplitude" else np.angle(image)


def _display_limits(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low - 0.5, high + 0.5
    return low, high


def draw_metrics_vs_dose(inputs: dict[str, Any], path: Path, dpi: int) -> Path | None:
    """Plot SSIM, PSNR and FRC 0.5 resolution against dose (log axis) per model and view.

    Infinite values (a perfect PSNR, an FRC below threshold at the first ring) are left
    out of the lines. Returns None when nothing was compared.
    """
    series = _series_keys(inputs)
    if not series:
        return None
    figure = Figure(figsize=(10, 9), layout="constrained")
    axes = figure.subplots(len(TREND_METRICS), len(COMPONENTS), squeeze=False)
    view_styles = _view_styles(inputs)

    for row, metric in enumerate(TREND_METRICS):
        for column, component in enumerate(("phase", "amplitude")):
            axis = axes[row, column]
            for model, view in series:
                doses, values = _metric_series(inputs, model, view, metric, component)
                if not doses:
                    continue
                axis.plot(
                    doses, values, marker="o", color=MODEL_COLOURS[model], linestyle=view_styles[view], label=f"{model} {view}"
                )
            axis.set_xscale("log")
            axis.set_xlabel("dose (photons per pattern)")
            axis.set_ylabel(METRIC_TITLES[metric])
            better = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
            axis.set_title(f"{component}: {METRIC_TITLES[metric]} ({better})", fontsize=10)
            axis.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    return _save_figure(figure, path, dpi)


def _view_styles(inputs: dict[str, Any]) -> dict[str, str]:
    views = [*inputs["views"], layout.BASELINE_VIEW]
    return {view: VIEW_LINE_STYLES[index % len(VIEW_LINE_STYLES)] for index, view in enumerate(views)}


def _metric_series(inputs: dict[str, Any], model: str, view: str, metric: str, component: str) -> tuple[list[float], list[float]]:
    """Return the doses and finite values of one metric for one model and view, in dose order."""
    doses, values = [], []
    for dose in inputs["doses"]:
        record = _record(inputs, dose, view, model)
        if record is None:
            continue
        value = record["metrics"][component][metric]
        if value is not None and math.isfinite(value):
            doses.append(dose)
            values.append(value)
    return doses, values


def draw_frc_curves(inputs: dict[str, Any], path: Path, dpi: int) -> Path | None:
    """Plot the FRC curves: rows phase and amplitude, one column per dose, with both thresholds."""
    curves = inputs["frc_curves"]
    if not curves:
        return None
    doses = sorted({float(curve["dose"]) for curve in curves})
    figure = Figure(figsize=(4.2 * len(doses) + 0.5, 7), layout="constrained")
    axes = figure.subplots(2, len(doses), squeeze=False, sharey=True)
    view_styles = _view_styles(inputs)

    for column, dose in enumerate(doses):
        for row, component in enumerate(("phase", "amplitude")):
            axis = axes[row, column]
            for curve in curves:
                if float(curve["dose"]) != dose:
                    continue
                axis.plot(
                    curve["frequency_cycles_per_px"], curve[component], color=MODEL_COLOURS.get(curve["model"], "black"),
                    linestyle=view_styles.get(curve["view"], "-"), label=f"{curve['model']} {curve['view']}",
                )
            axis.axhline(0.5, color="gray", linewidth=0.8)
            axis.axhline(1.0 / 7.0, color="gray", linewidth=0.8, linestyle=":")
            axis.set_title(f"{component}, dose {dose_label(dose)}", fontsize=10)
            axis.set_xlabel("spatial frequency (cycles per pixel)")
            axis.set_ylim(-0.2, 1.05)
            axis.grid(True, alpha=0.3)
        axes[0, 0].set_ylabel("FRC")
        axes[1, 0].set_ylabel("FRC")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    figure.suptitle("Fourier ring correlation with the ground truth (lines at 0.5 and 1/7)", fontsize=11)
    return _save_figure(figure, path, dpi)


def draw_training_loss(inputs: dict[str, Any], path: Path, dpi: int) -> Path | None:
    """Plot each training job's loss per epoch: one panel per job, rows views and columns doses.

    Each job gets its own panel and y scale because the losses differ in kind (the
    baseline's MAE, the PINN's Poisson negative log-likelihood) and the Poisson loss
    scales with the photon count, so doses differ by orders of magnitude.
    """
    training = inputs["training"]
    jobs = [job for job in (training or {}).get("jobs", []) if (job.get("result") or {}).get("loss_history")]
    if not jobs:
        return None
    views = [view for view in [layout.BASELINE_VIEW, *inputs["views"]] if any(job["view"] == view for job in jobs)]
    doses = sorted({float(job["dose"]) for job in jobs})
    figure = Figure(figsize=(3.6 * len(doses) + 0.5, 2.8 * len(views) + 0.6), layout="constrained")
    axes = figure.subplots(len(views), len(doses), squeeze=False)

    for row, view in enumerate(views):
        for column, dose in enumerate(doses):
            axis = axes[row, column]
            job = next((job for job in jobs if job["view"] == view and float(job["dose"]) == dose), None)
            kind = "MAE" if view == layout.BASELINE_VIEW else "Poisson NLL"
            axis.set_title(f"{view}, dose {dose_label(dose)} ({kind})", fontsize=9)
            if job is None:
                axis.text(0.5, 0.5, "not trained", ha="center", va="center", fontsize=8, transform=axis.transAxes)
                continue
            history = job["result"]["loss_history"]
            epochs = [entry["epoch"] for entry in history]
            axis.plot(epochs, [entry.get("train_loss") for entry in history], color="tab:blue", marker=".", label="train")
            validation = [entry.get("val_loss") for entry in history]
            if any(value is not None for value in validation):
                axis.plot(epochs, validation, color="tab:red", linestyle="--", marker=".", label="validation")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_xlabel("epoch")
            axis.set_ylabel("loss")
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7)
    figure.suptitle("Training loss per epoch", fontsize=11)
    return _save_figure(figure, path, dpi)


# ---------------------------------------------------------------------------------------
# Trends


def dose_trend(doses: list[float], values: list[float], metric: str) -> dict[str, Any]:
    """Classify how a metric changes from each dose to the next.

    Returns `verdict` (`improves with every dose step`, `does not improve with dose`,
    `improves at some dose steps only`, or `single dose` when fewer than two finite
    values exist), the counts of improving and worsening steps, and the values.
    """
    kind, tolerance = TREND_TOLERANCES[metric]
    higher_is_better = HIGHER_IS_BETTER[metric]
    improving = worsening = 0
    for before, after in itertools.pairwise(values):
        change = after - before
        if kind == "relative":
            change = change / abs(before) if before != 0 else change
        gain = change if higher_is_better else -change
        if gain > tolerance:
            improving += 1
        elif gain < -tolerance:
            worsening += 1
    steps = len(values) - 1
    if steps < 1:
        verdict = "single dose"
    elif improving == steps:
        verdict = "improves with every dose step"
    elif improving == 0:
        verdict = "does not improve with dose"
    else:
        verdict = "improves at some dose steps only"
    return {"verdict": verdict, "improving_steps": improving, "worsening_steps": worsening, "steps": max(steps, 0),
            "doses": doses, "values": values}


# ---------------------------------------------------------------------------------------
# Markdown


def render_markdown(inputs: dict[str, Any], figures: dict[str, Path | None], analysis: Path) -> str:
    """Return the report's Markdown text; figure links are relative to `analysis`."""
    sections = [
        _header(inputs),
        _design_section(inputs),
        _data_section(inputs),
        _training_section(inputs, figures, analysis),
        _reconstruction_section(inputs),
        _comparison_section(inputs, figures, analysis),
        _trend_section(inputs),
        _delta_section(inputs),
        _missing_section(inputs),
    ]
    return "\n\n".join(section.strip() for section in sections if section) + "\n"


def _header(inputs: dict[str, Any]) -> str:
    timestamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return (
        "# fly64 dose/overlap study report\n\n"
        f"Study root `{inputs['root']}`, written {timestamp} by fly64 {__version__}. Every number below is read "
        "from the study's artifacts; trends are computed from the measured metrics."
    )


def _design_section(inputs: dict[str, Any]) -> str:
    design = inputs["design"]
    # The spacing Phase D used, which follows `[overlap] spacing_rule`; the design's
    # (1 - f) x N spacing only for views without Phase D metrics.
    spacing_px = dict(design.spacing_thresholds)
    for row in inputs["overlap"]:
        if row.get("spacing_threshold_px") is not None:
            spacing_px[row["view"]] = float(row["spacing_threshold_px"])
    views = ", ".join(
        f"{view} (target overlap {fraction:g}, spacing threshold {spacing_px[view]:.1f} px)"
        for view, fraction in design.overlap_views.items()
    )
    return (
        "## Design\n\n"
        f"- Patch size N = {design.patch_size_pixels} px; doses {', '.join(dose_label(dose) for dose in design.dose_list)} "
        "photons per pattern.\n"
        f"- Overlap views: {views}.\n"
        f"- Gridsizes {list(design.gridsizes)}, K = {design.neighbor_count} neighbours; seeds {design.rng_seeds}.\n"
        f"- Comparison: MS-SSIM amplitude smoothing sigma {design.metrics_config.get('ms_ssim_sigma', 1.0)} px; "
        "phase is the primary figure, amplitude is reported beside it."
    )


def _data_section(inputs: dict[str, Any]) -> str:
    lines = ["## Data", "", "### Photons per pattern (Phase C, measured)", ""]
    photon_rows = [row for row in inputs["photons"] if row.get("all_photons") is not None]
    if photon_rows:
        lines += [
            "| dose | measured, whole scan | train split | test split | scale factor c | within 5 standard errors of nominal |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in photon_rows:
            lines.append(
                f"| {dose_label(row['dose'])} | {_number(row['all_photons'], 1)} | {_number(row['train_photons'], 1)} "
                f"| {_number(row['test_photons'], 1)} | {_number(row['scale_factor'], 4, general=True)} | {_yes_no(row['matches'])} |"
            )
    else:
        lines.append("Not available: no Phase C provenance found.")

    lines += ["", "### Overlap views (Phase D)", ""]
    if inputs["overlap"]:
        lines += [
            (
                "| dose | view | split | positions kept | spacing threshold (px) | mean nearest spacing (px) "
                "| target overlap | image overlap | group overlap | group-to-group overlap |"
            ),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in inputs["overlap"]:
            lines.append(
                f"| {dose_label(float(row['dose']))} | {row['view']} | {row['split']} | {row.get('n_selected')} of {row.get('n_input')} "
                f"| {_number(row.get('spacing_threshold_px'), 1)} | {_number(row.get('mean_nearest_neighbor_spacing_px'), 1)} "
                f"| {_number(row.get('target_overlap_fraction'), 2)} | {_number(row.get('image_overlap'), 3)} "
                f"| {_number(row.get('group_overlap'), 3)} | {_number(row.get('group_to_group_overlap'), 3)} |"
            )
        first = inputs["overlap"][0]
        rule = SPACING_RULE_TEXT.get(first.get("spacing_rule", "patch_size"), str(first.get("spacing_rule")))
        lines += [
            "",
            f"Probe diameter {_number(first.get('probe_diameter_px'), 1)} px ({first.get('probe_diameter_method')}). "
            f"Spacing threshold: {rule}.",
        ]
    else:
        lines.append("Not available: no Phase D metrics found.")
    return "\n".join(lines)


def _training_section(inputs: dict[str, Any], figures: dict[str, Path | None], analysis: Path) -> str:
    lines = ["## Training (Phase E)", ""]
    training = inputs["training"]
    if not training:
        return "\n".join(lines + ["Not available: training manifest not found."])
    lines += [
        (
            "| dose | view | model | status | epochs | final train loss | final validation loss | train time (s) "
            "| samples/s | amplitude r | phase r |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for job in training.get("jobs", []):
        result = job.get("result") or {}
        lines.append(
            f"| {dose_label(float(job['dose']))} | {job['view']} | {job.get('model_kind')} gs{job.get('gridsize')} "
            f"| {result.get('status')} | {result.get('epochs_run', '')} | {_number(result.get('final_train_loss'), 4, general=True)} "
            f"| {_number(result.get('final_val_loss'), 4, general=True)} | {_number(result.get('train_seconds'), 1)} "
            f"| {_number(result.get('samples_per_second'), 1)} | {_number(result.get('amplitude_correlation'), 3)} "
            f"| {_number(result.get('phase_correlation'), 3)} |"
        )
    lines += ["", "The correlations are Phase E's patch-level check on the test split, inside the probe footprint."]
    for skipped in training.get("skipped_views", []):
        lines.append(f"- Skipped in training: {skipped['view']} at dose {dose_label(float(skipped['dose']))}: {skipped['reason']}")
    lines += ["", _image_link("Training loss", figures.get("loss"), analysis)]
    return "\n".join(lines)


def _reconstruction_section(inputs: dict[str, Any]) -> str:
    lines = ["## Reconstruction (Phase F)", ""]
    manifest = inputs["reconstruction"]
    if not manifest:
        return "\n".join(lines + ["Not available: reconstruction manifest not found."])
    lines += [
        "| dose | view | model | status | patterns | time per pattern (ms) | patterns/s | PtyChi time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for job in manifest.get("jobs", []):
        per_pattern = job.get("seconds_per_pattern")
        ptychi_seconds = _number(job.get("ptychi_seconds"), 1)
        if job.get("reused_from"):
            # The reconstruction was copied from another view with the same measurement.
            ptychi_seconds += f" (run of the {Path(job['reused_from']).parent.parent.name} view)"
        lines.append(
            f"| {dose_label(float(job['dose']))} | {job['view']} | {job['model']} | {job['status']} | {job.get('n_patterns', '')} "
            f"| {_number(None if per_pattern is None else 1000 * per_pattern, 2)} | {_number(job.get('patterns_per_second'), 1)} "
            f"| {ptychi_seconds} |"
        )
    settings = manifest.get("reconstruction", {})
    timing_note = (
        "Learned models: time in `predict` only, after one warm-up batch (batch size "
        f"{settings.get('batch_size')}). PtyChi: LSQML with the known probe fixed, {settings.get('ptychi_epochs')} "
        f"epochs, minibatch {settings.get('ptychi_batch_size')}, noise model {manifest.get('ptychi_noise_model')}. "
        "Its time counts the LSQML iterations alone; `ptychi_process_seconds` in the reconstruction manifest adds "
        "importing torch and pty-chi in its own process."
    )
    lines += ["", timing_note]
    return "\n".join(lines)


def _comparison_section(inputs: dict[str, Any], figures: dict[str, Path | None], analysis: Path) -> str:
    lines = ["## Comparison with the ground truth (Phase G)", ""]
    crop = inputs["comparison_manifest"].get("crop", "")
    lines.append(
        f"Each reconstruction is registered to the ground truth (sub-pixel), its phase offset and ramp removed, and cropped: {crop}."
    )
    for component in ("phase", "amplitude"):
        lines += ["", f"### {component.capitalize()}", ""]
        lines.append("| dose | view | model | " + " | ".join(METRIC_TITLES[metric] for metric in METRICS) + " |")
        lines.append("| --- | --- | --- | " + " | ".join("---" for _ in METRICS) + " |")
        for record in _sorted_records(inputs):
            values = " | ".join(_metric_cell(record["metrics"][component][metric], metric) for metric in METRICS)
            lines.append(f"| {dose_label(float(record['dose']))} | {record['view']} | {record['model']} | {values} |")
    lines += [
        "",
        (
            "PSNR `inf` means a perfect match. An FRC resolution `inf` means the FRC is below the threshold already "
            "at the lowest frequency, and 2 px means it never falls below it."
        ),
        "",
        _image_link("Reconstructed phase", figures.get("phase_grid"), analysis),
        "",
        _image_link("Reconstructed amplitude", figures.get("amplitude_grid"), analysis),
        "",
        _image_link("Metrics against dose", figures.get("metrics"), analysis),
        "",
        _image_link("FRC curves", figures.get("frc"), analysis),
    ]
    return "\n".join(lines)


def _sorted_records(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    view_order = [*inputs["views"], layout.BASELINE_VIEW]
    return sorted(
        inputs["records"],
        key=lambda record: (
            float(record["dose"]),
            view_order.index(record["view"]) if record["view"] in view_order else len(view_order),
            MODELS.index(record["model"]),
        ),
    )


def _trend_section(inputs: dict[str, Any]) -> str:
    lines = ["## Trends with dose (measured)", ""]
    tolerance_text = ", ".join(
        f"{METRIC_TITLES[metric]} {value:g}{' (relative)' if kind == 'relative' else ''}"
        for metric, (kind, value) in TREND_TOLERANCES.items()
    )
    lines.append(f"A dose step counts as an improvement when the metric gets better by more than: {tolerance_text}.")
    lines.append("")
    findings = []
    for model, view in _series_keys(inputs):
        for metric in TREND_METRICS:
            for component in ("phase", "amplitude"):
                doses, values = _metric_series(inputs, model, view, metric, component)
                if len(values) < 2:
                    continue
                trend = dose_trend(doses, values, metric)
                series = " → ".join(f"{_metric_cell(value, metric)} ({dose_label(dose)})" for dose, value in zip(doses, values))
                findings.append((model, view, metric, component, trend["verdict"], series))
    if not findings:
        return "\n".join(lines + ["Not available: trends need comparisons at two or more doses."])
    lines += ["| model | view | metric | component | verdict | values (dose) |", "| --- | --- | --- | --- | --- | --- |"]
    for model, view, metric, component, verdict, series in findings:
        lines.append(f"| {model} | {view} | {METRIC_TITLES[metric]} | {component} | {verdict} | {series} |")

    flat = [
        f"{model} ({view})" for model, view, metric, component, verdict, _ in findings
        if metric == "ssim" and component == "phase" and verdict == "does not improve with dose"
    ]
    lines.append("")
    if flat:
        lines.append(f"Phase SSIM does not improve with dose for: {', '.join(flat)}.")
    else:
        lines.append("Phase SSIM improves with dose, at least at one step, for every model and view compared.")
    return "\n".join(lines)


def _delta_section(inputs: dict[str, Any]) -> str:
    deltas = inputs["deltas"].get("deltas", [])
    if not deltas:
        return "## PtychoPINN against the references\n\nNot available: no dose and view has PtychoPINN and a reference."
    lines = [
        "## PtychoPINN against the references",
        "",
        (
            "PtychoPINN's metric minus the reference's on the same data. For PSNR and SSIM a positive difference "
            "favours PtychoPINN, for the FRC resolution a negative one."
        ),
        "",
        "| dose | view | reference | phase SSIM | phase PSNR (dB) | phase FRC 0.5 (px) | amplitude SSIM | amplitude PSNR (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table: dict[tuple[float, str, str], dict[str, dict[str, Any]]] = {}
    for delta in deltas:
        table.setdefault((float(delta["dose"]), delta["view"], delta["reference"]), {})[delta["metric"]] = delta
    wins = {reference: [0, 0] for reference in (MODEL_BASELINE, MODEL_PTYCHI)}
    for (dose, view, reference), by_metric in sorted(table.items()):
        cells = [
            _signed(by_metric.get("ssim", {}).get("phase"), 3),
            _signed(by_metric.get("psnr", {}).get("phase"), 2),
            _signed(by_metric.get("frc50", {}).get("phase"), 2),
            _signed(by_metric.get("ssim", {}).get("amplitude"), 3),
            _signed(by_metric.get("psnr", {}).get("amplitude"), 2),
        ]
        lines.append(f"| {dose_label(dose)} | {view} | {reference} | " + " | ".join(cells) + " |")
        phase_ssim = by_metric.get("ssim", {}).get("phase")
        if phase_ssim is not None and reference in wins:
            wins[reference][1] += 1
            wins[reference][0] += int(phase_ssim > 0)
    lines.append("")
    for reference, (won, total) in wins.items():
        if total:
            lines.append(f"- PtychoPINN has the higher phase SSIM than {reference} in {won} of {total} dose/view comparisons.")
    return "\n".join(lines)


def _missing_section(inputs: dict[str, Any]) -> str:
    items = []
    for item in (inputs["reconstruction"] or {}).get("missing", []):
        items.append(f"- Not reconstructed: {item['model']} {item['view']} at dose {dose_label(float(item['dose']))}: {item['reason']}")
    for job in (inputs["reconstruction"] or {}).get("jobs", []):
        if job.get("status") != STATUS_COMPLETED:
            items.append(f"- Reconstruction failed: {job['model']} {job['view']} at dose {dose_label(float(job['dose']))}: {job.get('error')}")
    for record in inputs["comparison_manifest"].get("comparisons", []):
        if record.get("status") != STATUS_COMPLETED:
            items.append(
                f"- Comparison failed: {record['model']} {record['view']} at dose {dose_label(float(record['dose']))}: {record.get('error')}"
            )
    if not items:
        return "## Missing and failed jobs\n\nNone: every planned reconstruction and comparison completed."
    return "\n".join(["## Missing and failed jobs", "", *items])


def _image_link(title: str, path: Path | None, analysis: Path) -> str:
    if path is None:
        return f"*{title}: not available.*"
    return f"![{title}]({path.relative_to(analysis).as_posix()})"


def _number(value: Any, digits: int, general: bool = False) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if not math.isfinite(value):
        return "inf" if value > 0 else "n/a"
    return f"{value:.{digits}g}" if general else f"{value:.{digits}f}"


def _metric_cell(value: Any, metric: str) -> str:
    if value is None:
        # JSON stores an infinite PSNR or FRC resolution as null.
        return "inf"
    digits = {"mae": 4, "mse": 4, "psnr": 2, "ssim": 3, "ms_ssim": 3, "frc50": 1, "frc17": 1}[metric]
    return _number(float(value), digits)


def _signed(value: Any, digits: int) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def _yes_no(value: Any) -> str:
    if value is None:
        return "n/a"
    return "yes" if value else "no"
