"""Phase G: compare every Phase F reconstruction with the ground truth.

For each completed reconstruction in `phase_f/reconstruction_manifest.json`, the ground
truth is the `objectGuess` of the dataset it reconstructed. Both are cropped to the
scanned region. That region is the union of the N x N patches around the dataset's
positions (`fly64.metrics.registration.scanned_region_mask`), eroded by
`crop_margin_px(N) = N // 4`. The erosion drops the pixels within N/4 of the scan's
edge, which lie under the tapered outer quarter of the edge patches only. The
comparison box is that region's bounding box, equal for every model of a dose and view.
The reconstruction is registered to sub-pixel precision, and its phase offset and
linear ramp are removed (`align_to_reference`). Then `compare_images` computes MAE, MSE,
PSNR, SSIM, MS-SSIM and the FRC resolutions (0.5 and 1/7 thresholds, in pixels) of
amplitude and phase, with MS-SSIM's amplitude smoothing from `metrics_config`.

Outputs under `<root>/analysis/`:

    dose_<d>/<view>/comparison_metrics.csv   tidy: model, metric, amplitude, phase
    dose_<d>/<view>/aligned.npz              ground_truth and each model's aligned crop
    metrics_summary.json                     mean and best per model and metric
    metrics_deltas.json                      PtychoPINN minus Baseline and minus PtyChi
    frc_curves.json                          FRC curves of every comparison
    comparison_manifest.json                 per-comparison status, alignment, errors

An infinite PSNR (a perfect reconstruction) is written as `inf` in CSV and as null in
JSON, which has no infinity; a NaN (an undefined mean or difference) is null as well.

Bad input raises `InputError` before anything is computed: a missing reconstruction
manifest or reconstruction file, a reconstruction without a complex 2-D `object`, a
bundle that is missing or differs from the one that made the reconstruction, a test
split that is missing or empty, or a ground truth of another shape. A comparison that
fails while computing is recorded with its error, and the others still finish.
"""

import csv
import dataclasses
import datetime
import io
import json
import logging
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fly64 import __version__
from fly64.atomic import save_npz, sha256_file, write_json, write_text
from fly64.contract import load_dataset
from fly64.errors import InputError
from fly64.metrics.quality import compare_images, json_ready
from fly64.metrics.registration import align_to_reference, scanned_region_mask
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.config import StudyConfig
from studies.fly64_dose_overlap.design import dose_folder_name, dose_label
from studies.fly64_dose_overlap.reconstruction import (
    LEARNED_MODELS,
    MODEL_BASELINE,
    MODEL_PINN,
    MODEL_PTYCHI,
    MODELS,
    STATUS_COMPLETED,
    reconstruction_manifest_path,
)

logger = logging.getLogger(__name__)

METRICS = ("mae", "mse", "psnr", "ssim", "ms_ssim", "frc50", "frc17")
HIGHER_IS_BETTER = {"mae": False, "mse": False, "psnr": True, "ssim": True, "ms_ssim": True, "frc50": False, "frc17": False}
COMPONENTS = ("amplitude", "phase")
CSV_COLUMNS = ("model", "metric", "amplitude", "phase")
DELTA_REFERENCES = (MODEL_BASELINE, MODEL_PTYCHI)

COMPARISON_CSV_NAME = "comparison_metrics.csv"
ALIGNED_NAME = "aligned.npz"
SUMMARY_NAME = "metrics_summary.json"
DELTAS_NAME = "metrics_deltas.json"
FRC_CURVES_NAME = "frc_curves.json"
COMPARISON_MANIFEST_NAME = "comparison_manifest.json"
KEY_GROUND_TRUTH = "ground_truth"
KEY_CROP_BOX = "crop_box"

STATUS_FAILED = "failed"
STATUS_NOT_COMPARED = "not_compared"


def crop_margin_px(patch_size: int) -> int:
    """Return the erosion of the scanned region before comparison, N // 4 pixels."""
    return patch_size // 4


def comparison_dir(root: Path, dose_photons: float, view: str) -> Path:
    """Return `<root>/analysis/dose_<d>/<view>`."""
    return layout.analysis_root(root) / dose_folder_name(dose_photons) / view


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one test split: the object, the scan positions and the patch size N."""

    path: Path
    object: np.ndarray
    positions_xy: np.ndarray
    patch_size: int


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One validated reconstruction, ready to compare.

    The reconstructed object is read again when compared, so that memory contains one
    object at a time however many jobs the study has.

    Attributes:
        entry: the reconstruction manifest's job entry.
        reconstruction_path: the validated reconstruction NPZ.
        ground_truth: the test split it reconstructed.
    """

    entry: dict[str, Any]
    reconstruction_path: Path
    ground_truth: GroundTruth

    @property
    def key(self) -> tuple[float, str]:
        return float(self.entry["dose"]), str(self.entry["view"])

    @property
    def model(self) -> str:
        return str(self.entry["model"])


def read_reconstruction_manifest(root: Path) -> dict[str, Any]:
    """Read `<root>/phase_f/reconstruction_manifest.json`.

    Raises:
        InputError: the file is missing, not JSON or has no `jobs` list.
    """
    path = reconstruction_manifest_path(root)
    if not path.is_file():
        raise InputError(f"{path}: reconstruction manifest not found; run `fly64 reconstruct` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON reconstruction manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("jobs"), list):
        raise InputError(f"{path}: reconstruction manifest has no `jobs` list")
    return manifest


def load_reconstruction(path: Path) -> np.ndarray:
    """Return the complex (M, M) `object` of a reconstruction NPZ.

    Raises:
        InputError: the file is missing or unreadable, or `object` is missing, real, not
            2-D or not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: reconstruction file not found; run `fly64 reconstruct` again")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "object" not in archive.files:
                raise InputError(f"{path}: missing key object; expected a complex (M, M) reconstruction")
            reconstructed = archive["object"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise InputError(f"{path}: not a readable NPZ file without pickled objects ({error})") from None
    if not np.iscomplexobj(reconstructed):
        raise InputError(f"{path}: key object has real dtype {reconstructed.dtype}; expected a complex object")
    if reconstructed.ndim != 2:
        raise InputError(f"{path}: key object has shape {reconstructed.shape}; expected (M, M)")
    if not np.all(np.isfinite(reconstructed)):
        raise InputError(f"{path}: key object contains NaN or infinite values")
    return reconstructed


def validate_comparisons(manifest: dict[str, Any], root: Path) -> list[Comparison]:
    """Check every completed reconstruction and its inputs; return them ready to compare.

    Raises:
        InputError: see the module docstring; the message names the file and the reason.
    """
    manifest_path = reconstruction_manifest_path(root)
    ground_truths: dict[Path, GroundTruth] = {}
    comparisons = []
    for index, entry in enumerate(manifest["jobs"]):
        if not isinstance(entry, dict) or any(key not in entry for key in ("dose", "view", "model", "status", "output_path", "data_path")):
            raise InputError(f"{manifest_path}: jobs[{index}] lacks dose, view, model, status, output_path or data_path")
        if entry["status"] != STATUS_COMPLETED:
            continue
        if entry["model"] in LEARNED_MODELS:
            _check_bundle(entry, manifest_path)

        data_path = Path(entry["data_path"])
        if data_path not in ground_truths:
            ground_truths[data_path] = _load_ground_truth(data_path)
        ground_truth = ground_truths[data_path]

        output_path = Path(entry["output_path"])
        reconstructed = load_reconstruction(output_path)
        if reconstructed.shape != ground_truth.object.shape:
            raise InputError(
                f"{output_path}: object has shape {reconstructed.shape} but the ground truth objectGuess of "
                f"{data_path} has {ground_truth.object.shape}; expected equal shapes"
            )
        comparisons.append(Comparison(entry=entry, reconstruction_path=output_path, ground_truth=ground_truth))
    return comparisons


def _check_bundle(entry: dict[str, Any], manifest_path: Path) -> None:
    bundle_path = entry.get("bundle_path")
    if not bundle_path or not Path(bundle_path).is_file():
        raise InputError(
            f"{bundle_path}: bundle of {entry['model']} ({entry['view']}, dose {dose_label(entry['dose'])}) not found; "
            f"listed in {manifest_path}"
        )
    recorded = entry.get("bundle_sha256")
    if recorded and sha256_file(bundle_path) != recorded:
        raise InputError(
            f"{bundle_path}: bundle changed since Phase F reconstructed {entry['output_path']} "
            "(SHA-256 differs); run `fly64 reconstruct` again"
        )


def _load_ground_truth(data_path: Path) -> GroundTruth:
    if not data_path.is_file():
        raise InputError(f"{data_path}: test split not found; it is the ground truth of a reconstruction")
    dataset = load_dataset(data_path)
    return GroundTruth(path=data_path, object=dataset.object, positions_xy=dataset.positions_xy, patch_size=dataset.patch_size)


def compare_reconstruction(
    reconstruction: np.ndarray, ground_truth: GroundTruth, ms_ssim_sigma: float
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, dict[str, Any]]:
    """Align a reconstruction to its ground truth inside the scanned region and compute the metrics.

    Returns:
        `(metrics, aligned, reference_crop, alignment)`: the `compare_images` result, the
        complex aligned crop and ground-truth crop, and the alignment info (shift, phase
        offset and ramp, crop box, margin).

    Raises:
        InputError: the scanned region is empty or too small to compare.
    """
    margin_px = crop_margin_px(ground_truth.patch_size)
    region = scanned_region_mask(ground_truth.object.shape, ground_truth.positions_xy, ground_truth.patch_size, margin_px)
    aligned, reference_crop, alignment = align_to_reference(reconstruction, ground_truth.object, region)
    metrics = compare_images(aligned, reference_crop, ms_ssim_sigma=ms_ssim_sigma)
    alignment["crop_margin_px"] = margin_px
    return metrics, aligned, reference_crop, alignment


def compare_all(config: StudyConfig, root: Path) -> dict[str, Any]:
    """Run Phase G under the study `root`: compare, then write the tables, summary, deltas and curves.

    Returns:
        Summary: `analysis_root`, `summary_path`, `deltas_path`, `manifest_path`, the
        CSV paths, and the `compared`, `failed` and `not_compared` counts.

    Raises:
        InputError: bad input as listed in the module docstring, or no completed
            reconstruction to compare.
    """
    root = Path(root)
    started = time.perf_counter()
    ms_ssim_sigma = float(config.design().metrics_config.get("ms_ssim_sigma", 1.0))
    manifest = read_reconstruction_manifest(root)
    comparisons = validate_comparisons(manifest, root)
    if not comparisons:
        raise InputError(f"{reconstruction_manifest_path(root)}: no completed reconstruction to compare")

    records: list[dict[str, Any]] = []
    aligned_crops: dict[tuple[float, str], dict[str, np.ndarray]] = {}
    for comparison in comparisons:
        dose, view = comparison.key
        label = f"{comparison.model} {view}/dose={dose_label(dose)}"
        record = {
            "dose": dose,
            "view": view,
            "split": comparison.entry.get("split", "test"),
            "model": comparison.model,
            "reconstruction_path": comparison.entry["output_path"],
            "data_path": str(comparison.ground_truth.path),
        }
        try:
            reconstructed = load_reconstruction(comparison.reconstruction_path)
            metrics, aligned, reference_crop, alignment = compare_reconstruction(
                reconstructed, comparison.ground_truth, ms_ssim_sigma
            )
        except Exception as error:
            logger.exception("Phase G: comparing %s failed", label)
            records.append({**record, "status": STATUS_FAILED, "error": f"{type(error).__name__}: {error}"})
            continue
        crops = aligned_crops.setdefault(comparison.key, {KEY_GROUND_TRUTH: reference_crop.astype(np.complex64)})
        crops[comparison.model] = aligned.astype(np.complex64)
        crops[KEY_CROP_BOX] = np.asarray(alignment["crop_box"], dtype=np.int64)
        records.append({**record, "status": STATUS_COMPLETED, "metrics": metrics, "alignment": alignment})
        logger.info(
            "Phase G: %s: phase SSIM %.3f, PSNR %.2f dB, FRC50 %.1f px; amplitude SSIM %.3f",
            label, metrics["phase"]["ssim"], metrics["phase"]["psnr"], metrics["phase"]["frc50"], metrics["amplitude"]["ssim"],
        )

    not_compared = [
        {key: entry.get(key) for key in ("dose", "view", "split", "model", "status", "error")}
        for entry in manifest["jobs"]
        if isinstance(entry, dict) and entry.get("status") != STATUS_COMPLETED
    ]
    paths = write_outputs(root, records, aligned_crops, not_compared, manifest.get("missing", []), ms_ssim_sigma)
    compared = sum(1 for record in records if record["status"] == STATUS_COMPLETED)
    logger.info("Phase G: %d comparison(s), %d failed, in %.1f s", compared, len(records) - compared, time.perf_counter() - started)
    return {
        **paths,
        "analysis_root": layout.analysis_root(root),
        "compared": compared,
        "failed": len(records) - compared,
        "not_compared": len(not_compared),
    }


def write_outputs(
    root: Path,
    records: list[dict[str, Any]],
    aligned_crops: dict[tuple[float, str], dict[str, np.ndarray]],
    not_compared: list[dict[str, Any]],
    missing: list[dict[str, Any]],
    ms_ssim_sigma: float,
) -> dict[str, Any]:
    """Write every Phase G file and return their paths."""
    analysis = layout.analysis_root(root)
    completed = [record for record in records if record["status"] == STATUS_COMPLETED]

    csv_paths = []
    for dose, view in sorted({(record["dose"], record["view"]) for record in completed}):
        rows = [record for record in completed if (record["dose"], record["view"]) == (dose, view)]
        path = comparison_dir(root, dose, view) / COMPARISON_CSV_NAME
        write_text(path, metrics_csv(rows))
        csv_paths.append(path)
    for (dose, view), crops in aligned_crops.items():
        metadata = {"dose": dose, "view": view, "models": [name for name in crops if name in MODELS], "fly64_version": __version__}
        save_npz(comparison_dir(root, dose, view) / ALIGNED_NAME, {**crops, "_metadata": np.array(json.dumps(metadata))})
    _remove_stale_outputs(root, {(record["dose"], record["view"]) for record in records} - set(aligned_crops))

    summary_path = analysis / SUMMARY_NAME
    write_json(summary_path, json_ready(metrics_summary(completed)))
    deltas_path = analysis / DELTAS_NAME
    write_json(deltas_path, json_ready(metrics_deltas(completed)))
    write_json(analysis / FRC_CURVES_NAME, json_ready(frc_curves(completed)))

    manifest_path = analysis / COMPARISON_MANIFEST_NAME
    write_json(
        manifest_path,
        json_ready(
            {
                "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "study_root": str(root),
                "fly64_version": __version__,
                "ms_ssim_sigma": ms_ssim_sigma,
                "crop": "scanned region (union of the test patches) eroded by N // 4 px, then its bounding box",
                "comparisons": [_manifest_record(record) for record in records],
                "not_compared": not_compared,
                "missing": missing,
            }
        ),
    )
    return {"summary_path": summary_path, "deltas_path": deltas_path, "manifest_path": manifest_path, "csv_paths": csv_paths}


def _remove_stale_outputs(root: Path, keys: set[tuple[float, str]]) -> None:
    """Remove tables and crops of earlier runs for doses and views whose comparisons all failed now.

    Otherwise the report would show an earlier run's images beside this run's records.
    """
    for dose, view in keys:
        for name in (COMPARISON_CSV_NAME, ALIGNED_NAME):
            path = comparison_dir(root, dose, view) / name
            if path.exists():
                logger.warning("Phase G: removing stale %s", path)
                path.unlink()


def _manifest_record(record: dict[str, Any]) -> dict[str, Any]:
    """Return a comparison record without the FRC curves, which `frc_curves.json` contains."""
    if "metrics" not in record:
        return record
    metrics = {
        component: {name: record["metrics"][component][name] for name in METRICS} for component in COMPONENTS
    }
    metrics["ms_ssim_levels"] = record["metrics"]["ms_ssim_levels"]
    metrics["shape"] = record["metrics"]["shape"]
    return {**record, "metrics": metrics}


def metrics_csv(records: list[dict[str, Any]]) -> str:
    """Return the tidy CSV text (`model, metric, amplitude, phase`) of one dose and view.

    Models appear in the order PtychoPINN, Baseline, PtyChi and metrics in `METRICS`
    order. Values are written with 10 significant digits; infinity as `inf`.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in sorted(records, key=lambda item: MODELS.index(item["model"])):
        for metric in METRICS:
            writer.writerow(
                [record["model"], metric, *(_format_value(record["metrics"][component][metric]) for component in COMPONENTS)]
            )
    return buffer.getvalue()


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.10g}"


def metrics_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarise each model's metrics over its comparisons: mean and best, overall and per view.

    Best is the maximum for PSNR, SSIM and MS-SSIM and the minimum for MAE, MSE and the
    FRC resolutions (pixels), with the dose and view where it occurred. A mean that
    includes an infinite PSNR is infinite (written as null).
    """
    views = sorted({record["view"] for record in records})
    return {
        "metrics": list(METRICS),
        "higher_is_better": dict(HIGHER_IS_BETTER),
        "models": _summarise(records),
        "by_view": {view: _summarise([record for record in records if record["view"] == view]) for view in views},
    }


def _summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for model in MODELS:
        model_records = [record for record in records if record["model"] == model]
        if not model_records:
            continue
        summary[model] = {}
        for metric in METRICS:
            summary[model][metric] = {}
            for component in COMPONENTS:
                values = np.array([record["metrics"][component][metric] for record in model_records], dtype=np.float64)
                best_index = int(np.argmax(values) if HIGHER_IS_BETTER[metric] else np.argmin(values))
                summary[model][metric][component] = {
                    "mean": float(np.mean(values)),
                    "best": float(values[best_index]),
                    "best_dose": model_records[best_index]["dose"],
                    "best_view": model_records[best_index]["view"],
                    "n_comparisons": len(model_records),
                }
    return summary


def metrics_deltas(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Return PtychoPINN's metrics minus Baseline's and minus PtyChi's, per dose, view and metric.

    Only doses and views where both models were compared appear. A difference of two
    infinite PSNRs is NaN (written as null).
    """
    by_key = {(record["dose"], record["view"], record["model"]): record for record in records}
    deltas = []
    for (dose, view, model), pinn in sorted(by_key.items(), key=lambda item: (item[0][0], item[0][1])):
        if model != MODEL_PINN:
            continue
        for reference_model in DELTA_REFERENCES:
            reference = by_key.get((dose, view, reference_model))
            if reference is None:
                continue
            for metric in METRICS:
                entry = {"dose": dose, "view": view, "reference": reference_model, "metric": metric}
                for component in COMPONENTS:
                    with np.errstate(invalid="ignore"):
                        entry[component] = float(
                            np.float64(pinn["metrics"][component][metric]) - np.float64(reference["metrics"][component][metric])
                        )
                deltas.append(entry)
    return {
        "definition": f"{MODEL_PINN} minus reference; positive is better where higher_is_better is true, negative otherwise",
        "higher_is_better": dict(HIGHER_IS_BETTER),
        "deltas": deltas,
    }


def frc_curves(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the FRC curves of every comparison, for the report's figures."""
    curves = []
    for record in records:
        metrics = record["metrics"]
        curves.append(
            {
                "dose": record["dose"],
                "view": record["view"],
                "model": record["model"],
                "frequency_cycles_per_px": metrics["amplitude"]["frc_frequency"],
                "amplitude": metrics["amplitude"]["frc_curve"],
                "phase": metrics["phase"]["frc_curve"],
            }
        )
    return {"thresholds": [0.5, 1.0 / 7.0], "curves": curves}


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """Read a `comparison_metrics.csv` back into rows with float `amplitude` and `phase` (`inf` allowed).

    Raises:
        InputError: the file is missing or its header differs from `model, metric, amplitude, phase`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: comparison table not found; run `fly64 compare` first")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise InputError(f"{path}: header is {reader.fieldnames}; expected {', '.join(CSV_COLUMNS)}")
        return [
            {"model": row["model"], "metric": row["metric"], "amplitude": float(row["amplitude"]), "phase": float(row["phase"])}
            for row in reader
        ]
