"""Tests of Phase G (comparison with the ground truth) on the tiny study of `test_phase_f`."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_phase_f import DOSES, reconstructed_study, tiny_config

from fly64.atomic import save_npz, write_json
from fly64.contract import load_dataset
from fly64.errors import InputError
from fly64.metrics.quality import json_ready
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.comparison import (
    METRICS,
    GroundTruth,
    compare_all,
    compare_reconstruction,
    metrics_csv,
    metrics_summary,
    read_metrics_csv,
)
from studies.fly64_dose_overlap.reconstruction import (
    MODEL_BASELINE,
    MODEL_PINN,
    MODEL_PTYCHI,
    reconstruction_manifest_path,
)

_COMPARED: dict[str, Path] = {}


def compared_study(tmp_path_factory) -> Path:
    """Run Phase G once per session on the reconstructed tiny study; return the study root."""
    if "compared" not in _COMPARED:
        root = reconstructed_study(tmp_path_factory)
        compare_all(tiny_config(), root)
        _COMPARED["compared"] = root
    return _COMPARED["compared"]


@pytest.fixture(scope="session")
def study_root(tmp_path_factory) -> Path:
    return compared_study(tmp_path_factory)


def analysis(root: Path) -> Path:
    return layout.analysis_root(root)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def phase_f_jobs(root: Path) -> list[dict]:
    return read_json(reconstruction_manifest_path(root))["jobs"]


def test_comparison_csv_header(study_root):
    with open(analysis(study_root) / "dose_1000" / "dense" / "comparison_metrics.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ["model", "metric", "amplitude", "phase"]


def test_comparison_csv_rows(study_root):
    rows = read_metrics_csv(analysis(study_root) / "dose_1000" / "dense" / "comparison_metrics.csv")
    expected = [(model, metric) for model in (MODEL_PINN, MODEL_BASELINE, MODEL_PTYCHI) for metric in METRICS]
    assert [(row["model"], row["metric"]) for row in rows] == expected


def test_comparison_csv_per_dose_and_view(study_root):
    written = sorted(path.relative_to(analysis(study_root)).as_posix() for path in analysis(study_root).glob("dose_*/*/comparison_metrics.csv"))
    expected = sorted(f"dose_{int(dose)}/{view}/comparison_metrics.csv" for dose in DOSES for view in ("dense", "baseline"))
    assert written == expected


def test_comparison_ssim_in_range(study_root):
    rows = read_metrics_csv(analysis(study_root) / "dose_100000" / "dense" / "comparison_metrics.csv")
    ssim = [row[component] for row in rows if row["metric"] == "ssim" for component in ("amplitude", "phase")]
    assert all(-1.0 <= value <= 1.0 for value in ssim)


def test_comparison_aligned_crops_share_shape(study_root):
    with np.load(analysis(study_root) / "dose_1000" / "dense" / "aligned.npz", allow_pickle=False) as archive:
        shapes = {key: archive[key].shape for key in ("ground_truth", MODEL_PINN, MODEL_BASELINE, MODEL_PTYCHI)}
    assert len(set(shapes.values())) == 1


def test_summary_best_is_max_for_ssim(study_root):
    summary = read_json(analysis(study_root) / "metrics_summary.json")
    rows = [
        row for dose in DOSES for view in ("dense", "baseline")
        for row in read_metrics_csv(analysis(study_root) / f"dose_{int(dose)}" / view / "comparison_metrics.csv")
        if row["model"] == MODEL_PTYCHI and row["metric"] == "ssim"
    ]
    assert summary["models"][MODEL_PTYCHI]["ssim"]["phase"]["best"] == pytest.approx(max(row["phase"] for row in rows))


def test_summary_best_is_min_for_mae(study_root):
    summary = read_json(analysis(study_root) / "metrics_summary.json")
    rows = [
        row for dose in DOSES
        for row in read_metrics_csv(analysis(study_root) / f"dose_{int(dose)}" / "dense" / "comparison_metrics.csv")
        if row["model"] == MODEL_PINN and row["metric"] == "mae"
    ]
    assert summary["models"][MODEL_PINN]["mae"]["amplitude"]["best"] == pytest.approx(min(row["amplitude"] for row in rows))


def test_summary_mean_over_jobs(study_root):
    summary = read_json(analysis(study_root) / "metrics_summary.json")
    rows = [
        row for dose in DOSES
        for row in read_metrics_csv(analysis(study_root) / f"dose_{int(dose)}" / "dense" / "comparison_metrics.csv")
        if row["model"] == MODEL_PINN and row["metric"] == "ssim"
    ]
    assert summary["models"][MODEL_PINN]["ssim"]["phase"]["mean"] == pytest.approx(np.mean([row["phase"] for row in rows]))


def test_deltas_equal_table_differences(study_root):
    deltas = read_json(analysis(study_root) / "metrics_deltas.json")["deltas"]
    rows = read_metrics_csv(analysis(study_root) / "dose_1000" / "dense" / "comparison_metrics.csv")
    value = {(row["model"], row["metric"]): row["phase"] for row in rows}
    delta = next(
        item for item in deltas
        if (item["dose"], item["view"], item["reference"], item["metric"]) == (1000.0, "dense", MODEL_PTYCHI, "psnr")
    )
    assert delta["phase"] == pytest.approx(value[(MODEL_PINN, "psnr")] - value[(MODEL_PTYCHI, "psnr")], abs=1e-8)


def test_deltas_cover_both_references(study_root):
    deltas = read_json(analysis(study_root) / "metrics_deltas.json")["deltas"]
    pairs = {(item["dose"], item["view"], item["reference"]) for item in deltas}
    assert pairs == {(dose, "dense", reference) for dose in DOSES for reference in (MODEL_BASELINE, MODEL_PTYCHI)}


def test_frc_curves_written(study_root):
    curves = read_json(analysis(study_root) / "frc_curves.json")["curves"]
    assert len(curves) == len(phase_f_jobs(study_root))


def test_comparison_manifest_records_alignment(study_root):
    comparisons = read_json(analysis(study_root) / "comparison_manifest.json")["comparisons"]
    assert all(len(record["alignment"]["crop_box"]) == 4 for record in comparisons)


# --- ground truth against itself ---


def ground_truth_of(root: Path) -> tuple[GroundTruth, Path]:
    data_path = Path(next(job["data_path"] for job in phase_f_jobs(root) if job["view"] == "dense"))
    dataset = load_dataset(data_path)
    return GroundTruth(data_path, dataset.object, dataset.positions_xy, dataset.patch_size), data_path


def test_ground_truth_against_itself_is_perfect(study_root):
    ground_truth, _ = ground_truth_of(study_root)
    metrics, _, _, _ = compare_reconstruction(ground_truth.object, ground_truth, ms_ssim_sigma=1.0)
    for component in ("amplitude", "phase"):
        values = {name: metrics[component][name] for name in ("mae", "mse", "ssim", "ms_ssim")}
        assert values == {"mae": pytest.approx(0, abs=1e-12), "mse": pytest.approx(0, abs=1e-24),
                          "ssim": pytest.approx(1.0), "ms_ssim": pytest.approx(1.0)}, component


def test_ground_truth_against_itself_psnr_at_float_limit(study_root):
    # The registration's Fourier shift leaves float64 rounding (about 1e-16), so the
    # PSNR is finite but far above any real reconstruction's.
    ground_truth, _ = ground_truth_of(study_root)
    metrics, _, _, _ = compare_reconstruction(ground_truth.object, ground_truth, ms_ssim_sigma=1.0)
    assert min(metrics["amplitude"]["psnr"], metrics["phase"]["psnr"]) > 250.0


def test_ground_truth_frc_reaches_nyquist(study_root):
    ground_truth, _ = ground_truth_of(study_root)
    metrics, _, _, _ = compare_reconstruction(ground_truth.object, ground_truth, ms_ssim_sigma=1.0)
    assert (metrics["phase"]["frc50"], metrics["amplitude"]["frc50"]) == (pytest.approx(2.0), pytest.approx(2.0))


def single_job_root(tmp_path: Path, entry: dict) -> Path:
    root = tmp_path / "study"
    write_json(reconstruction_manifest_path(root), {"jobs": [entry]})
    return root


def perfect_entry(study_root: Path, tmp_path: Path) -> dict:
    """Return a PtyChi job entry whose reconstruction is the ground truth itself."""
    ground_truth, data_path = ground_truth_of(study_root)
    output_path = tmp_path / "perfect.npz"
    save_npz(output_path, {"object": ground_truth.object})
    return {"dose": 1000.0, "view": "dense", "model": MODEL_PTYCHI, "status": "completed",
            "output_path": str(output_path), "data_path": str(data_path)}


def infinite_psnr_record() -> dict:
    component = {metric: 0.0 for metric in METRICS} | {"psnr": math.inf, "ssim": 1.0, "ms_ssim": 1.0, "frc50": 2.0, "frc17": 2.0}
    return {"dose": 1000.0, "view": "dense", "model": MODEL_PTYCHI,
            "metrics": {"amplitude": dict(component), "phase": dict(component)}}


def test_infinite_psnr_written_as_inf_in_csv(tmp_path):
    path = tmp_path / "comparison_metrics.csv"
    path.write_text(metrics_csv([infinite_psnr_record()]))
    rows = read_metrics_csv(path)
    assert next(row for row in rows if row["metric"] == "psnr")["phase"] == math.inf


def test_infinite_psnr_written_as_null_in_json(tmp_path):
    path = tmp_path / "metrics_summary.json"
    write_json(path, json_ready(metrics_summary([infinite_psnr_record()])))
    assert read_json(path)["models"][MODEL_PTYCHI]["psnr"]["phase"]["best"] is None


def test_compare_all_writes_every_file(study_root, tmp_path):
    root = single_job_root(tmp_path, perfect_entry(study_root, tmp_path))
    compare_all(tiny_config(), root)
    names = sorted(path.relative_to(analysis(root)).as_posix() for path in analysis(root).rglob("*") if path.is_file())
    assert names == [
        "comparison_manifest.json",
        "dose_1000/dense/aligned.npz",
        "dose_1000/dense/comparison_metrics.csv",
        "frc_curves.json",
        "metrics_deltas.json",
        "metrics_summary.json",
    ]


# --- bad input and failures ---


def test_compare_rejects_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="reconstruction_manifest.json"):
        compare_all(tiny_config(), tmp_path)


def test_compare_rejects_missing_reconstruction(study_root, tmp_path):
    entry = {**perfect_entry(study_root, tmp_path), "output_path": str(tmp_path / "absent.npz")}
    with pytest.raises(InputError, match="absent.npz: reconstruction file not found"):
        compare_all(tiny_config(), single_job_root(tmp_path, entry))


def test_compare_rejects_real_object(study_root, tmp_path):
    entry = perfect_entry(study_root, tmp_path)
    save_npz(entry["output_path"], {"object": np.ones((8, 8), dtype=np.float32)})
    with pytest.raises(InputError, match="perfect.npz: key object has real dtype"):
        compare_all(tiny_config(), single_job_root(tmp_path, entry))


def test_compare_rejects_npz_without_object(study_root, tmp_path):
    entry = perfect_entry(study_root, tmp_path)
    save_npz(entry["output_path"], {"reconstruction": np.ones((8, 8), dtype=np.complex64)})
    with pytest.raises(InputError, match="perfect.npz: missing key object"):
        compare_all(tiny_config(), single_job_root(tmp_path, entry))


def test_compare_rejects_ground_truth_of_other_shape(study_root, tmp_path):
    entry = perfect_entry(study_root, tmp_path)
    save_npz(entry["output_path"], {"object": np.ones((64, 64), dtype=np.complex64)})
    with pytest.raises(InputError, match="perfect.npz: object has shape"):
        compare_all(tiny_config(), single_job_root(tmp_path, entry))


def test_compare_rejects_empty_test_split(study_root, tmp_path):
    entry = perfect_entry(study_root, tmp_path)
    dataset = load_dataset(entry["data_path"])
    empty_path = tmp_path / "empty_test.npz"
    save_npz(
        empty_path,
        {
            "diffraction": np.zeros((0, 32, 32), dtype=np.float32),
            "objectGuess": dataset.object,
            "probeGuess": dataset.probe,
            "xcoords": np.zeros(0),
            "ycoords": np.zeros(0),
        },
    )
    with pytest.raises(InputError, match="empty_test.npz: key diffraction holds no patterns"):
        compare_all(tiny_config(), single_job_root(tmp_path, {**entry, "data_path": str(empty_path)}))


def test_compare_rejects_missing_bundle(study_root, tmp_path):
    entry = {**perfect_entry(study_root, tmp_path), "model": MODEL_PINN, "bundle_path": str(tmp_path / "gone.zip")}
    with pytest.raises(InputError, match="gone.zip: bundle of PtychoPINN"):
        compare_all(tiny_config(), single_job_root(tmp_path, entry))


def test_compare_rejects_changed_bundle(study_root, tmp_path):
    job = next(job for job in phase_f_jobs(study_root) if job["model"] == MODEL_PINN)
    bundle_copy = tmp_path / "wts.h5.zip"
    shutil.copyfile(job["bundle_path"], bundle_copy)
    entry = {**job, "bundle_path": str(bundle_copy), "bundle_sha256": "0" * 64}
    with pytest.raises(InputError, match="bundle changed"):
        compare_all(tiny_config(), single_job_root(tmp_path, entry))


@pytest.mark.filterwarnings("ignore:Could not determine RMS error:UserWarning")
def test_compare_records_failure_and_finishes_others(study_root, tmp_path):
    good = perfect_entry(study_root, tmp_path)
    zeros_path = tmp_path / "zeros.npz"
    save_npz(zeros_path, {"object": np.zeros_like(load_dataset(good["data_path"]).object)})
    bad = {**good, "view": "baseline", "output_path": str(zeros_path)}
    root = tmp_path / "study"
    write_json(reconstruction_manifest_path(root), {"jobs": [bad, good]})
    summary = compare_all(tiny_config(), root)
    statuses = [record["status"] for record in read_json(analysis(root) / "comparison_manifest.json")["comparisons"]]
    assert (statuses, summary["compared"], summary["failed"]) == (["failed", "completed"], 1, 1)


def test_compare_skips_failed_reconstruction(study_root, tmp_path):
    good = perfect_entry(study_root, tmp_path)
    failed = {**good, "model": MODEL_PINN, "status": "failed", "error": "worker crashed", "output_path": str(tmp_path / "none.npz")}
    root = tmp_path / "study"
    write_json(reconstruction_manifest_path(root), {"jobs": [failed, good]})
    summary = compare_all(tiny_config(), root)
    assert (summary["compared"], summary["not_compared"]) == (1, 1)
