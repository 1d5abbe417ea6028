"""Tests of Phase F (reconstruction) on a tiny study made by the real phases C, D and E.

The study is built once per test session (`reconstructed_study`) and shared with the
Phase G and report tests, which import the builders from this module.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fly64.atomic import sha256_file, write_json
from fly64.errors import InputError
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.config import parse_config
from studies.fly64_dose_overlap.generation import generate_phase_c
from studies.fly64_dose_overlap.overlap import generate_phase_d
from studies.fly64_dose_overlap.reconstruction import (
    MODEL_BASELINE,
    MODEL_PINN,
    MODEL_PTYCHI,
    ReconstructionJob,
    plan_reconstructions,
    read_training_manifest,
    reconstruct_all,
    reconstruction_path,
    run_inference_jobs,
    run_ptychi_jobs,
)
from studies.fly64_dose_overlap.training import train_all

DOSES = (1e3, 1e5)
PATCH_SIZE = 32
OBJECT_SIZE_PX = 160
PTYCHI_MAX_PATTERNS = 48
# N = 32 on a 160 px object with a 4 px raster: 189 test positions, of which the dense
# view (9.6 px spacing) keeps 26 and the sparse view (25.6 px) only 3, fewer than K = 7,
# so Phase D skips sparse and Phase F must record it as missing.
TINY_STUDY = {
    "study": {"dose_list": list(DOSES), "patch_size_pixels": PATCH_SIZE},
    "simulation": {"object_size_px": OBJECT_SIZE_PX, "scan_step_px": 4.0, "jitter_px": 0.5},
    "training": {"epochs": 2, "batch_size": 16, "max_train_groups": 64, "early_stopping_patience": 2},
    "reconstruction": {"batch_size": 32, "ptychi_epochs": 10, "ptychi_max_patterns": PTYCHI_MAX_PATTERNS},
}

_BUILT: dict[str, Path] = {}


def tiny_config():
    return parse_config(TINY_STUDY, source="test")


def trained_study(tmp_path_factory) -> Path:
    """Run phases C, D and E once per session; return the study root."""
    if "trained" not in _BUILT:
        root = tmp_path_factory.mktemp("tiny_study")
        config = tiny_config()
        generate_phase_c(config, layout.phase_c_root(root))
        generate_phase_d(config, layout.phase_c_root(root), layout.phase_d_root(root))
        train_all(config, layout.phase_c_root(root), layout.phase_d_root(root), layout.phase_e_root(root), emit=lambda line: None)
        _BUILT["trained"] = root
    return _BUILT["trained"]


def reconstructed_study(tmp_path_factory) -> Path:
    """Run Phase F once per session on the trained study; return the study root."""
    if "reconstructed" not in _BUILT:
        root = trained_study(tmp_path_factory)
        reconstruct_all(tiny_config(), root)
        _BUILT["reconstructed"] = root
    return _BUILT["reconstructed"]


@pytest.fixture(scope="session")
def study_root(tmp_path_factory) -> Path:
    return reconstructed_study(tmp_path_factory)


@pytest.fixture(scope="session")
def manifest(study_root) -> dict:
    return json.loads((layout.phase_f_root(study_root) / "reconstruction_manifest.json").read_text())


def completed_jobs(manifest: dict) -> list[dict]:
    return [job for job in manifest["jobs"] if job["status"] == "completed"]


def test_phase_f_completes_every_job(manifest):
    assert [job["status"] for job in manifest["jobs"]] == ["completed"] * len(manifest["jobs"])


def test_phase_f_job_set(manifest):
    expected = {
        (dose, view, model)
        for dose in DOSES
        for view, model in (
            ("dense", MODEL_PINN), ("dense", MODEL_BASELINE), ("dense", MODEL_PTYCHI),
            ("baseline", MODEL_BASELINE), ("baseline", MODEL_PTYCHI),
        )
    }
    assert {(job["dose"], job["view"], job["model"]) for job in manifest["jobs"]} == expected


def test_phase_f_records_skipped_view_as_missing(manifest):
    missing = {(item["dose"], item["view"], item["model"]) for item in manifest["missing"]}
    assert missing == {(dose, "sparse", model) for dose in DOSES for model in (MODEL_PINN, MODEL_BASELINE, MODEL_PTYCHI)}


def test_phase_f_output_paths_follow_layout(study_root, manifest):
    for job in manifest["jobs"]:
        assert Path(job["output_path"]) == reconstruction_path(study_root, job["dose"], job["view"], job["model"])


def test_phase_f_npz_keys_and_dtypes(manifest):
    for job in completed_jobs(manifest):
        with np.load(job["output_path"], allow_pickle=False) as archive:
            kinds = {key: archive[key].dtype.str[1:] for key in archive.files}
        assert kinds == {"object": "c8", "xcoords": "f8", "ycoords": "f8", "coverage": "f4", "_metadata": kinds["_metadata"]}
        assert kinds["_metadata"].startswith("U"), job["output_path"]


def test_phase_f_object_shape_matches_ground_truth(manifest):
    for job in completed_jobs(manifest):
        with np.load(job["output_path"]) as reconstruction, np.load(job["data_path"]) as data:
            assert reconstruction["object"].shape == data["objectGuess"].shape, job["output_path"]


def test_phase_f_objects_are_finite(manifest):
    for job in completed_jobs(manifest):
        with np.load(job["output_path"]) as archive:
            assert np.all(np.isfinite(archive["object"])), job["output_path"]


def test_phase_f_uncovered_pixels_are_one(manifest):
    job = next(job for job in completed_jobs(manifest) if job["model"] == MODEL_PINN)
    with np.load(job["output_path"]) as archive:
        uncovered = archive["coverage"] < 1e-3
        assert np.all(archive["object"][uncovered] == 1.0 + 0.0j)


def test_phase_f_metadata_records_bundle_digest(manifest):
    for job in completed_jobs(manifest):
        if job["model"] == MODEL_PTYCHI:
            continue
        with np.load(job["output_path"]) as archive:
            parameters = json.loads(str(archive["_metadata"]))["parameters"]
        recorded = (parameters["bundle_path"], parameters["bundle_sha256"])
        assert recorded == (job["bundle_path"], sha256_file(job["bundle_path"]))


def test_phase_f_metadata_records_job_identity(manifest):
    for job in completed_jobs(manifest):
        with np.load(job["output_path"]) as archive:
            parameters = json.loads(str(archive["_metadata"]))["parameters"]
        identity = {key: parameters[key] for key in ("model", "dose", "view", "split")}
        assert identity == {"model": job["model"], "dose": job["dose"], "view": job["view"], "split": "test"}


def test_phase_f_learned_models_report_throughput(manifest):
    for job in completed_jobs(manifest):
        if job["model"] != MODEL_PTYCHI:
            assert job["patterns_per_second"] > 0, job["output_path"]


def test_phase_f_ptychi_reports_seconds(manifest):
    for job in completed_jobs(manifest):
        if job["model"] == MODEL_PTYCHI:
            assert job["ptychi_seconds"] > 0, job["output_path"]


def test_phase_f_ptychi_respects_pattern_cap(manifest):
    baseline_view = [job for job in completed_jobs(manifest) if job["model"] == MODEL_PTYCHI and job["view"] == "baseline"]
    assert [job["n_patterns"] for job in baseline_view] == [PTYCHI_MAX_PATTERNS] * len(DOSES)


def test_phase_f_pinn_sees_every_test_pattern(manifest):
    for job in completed_jobs(manifest):
        if job["model"] == MODEL_PINN:
            with np.load(job["data_path"]) as data:
                assert job["n_patterns"] == data["xcoords"].shape[0]


def test_phase_f_baseline_on_view_data(manifest):
    for job in completed_jobs(manifest):
        if job["model"] == MODEL_BASELINE and job["view"] == "dense":
            assert Path(job["bundle_path"]).parent.name == "gs1"


# --- planning and bad input, on copies of the training manifest ---


def write_training_manifest(root: Path, manifest: dict) -> None:
    write_json(layout.phase_e_root(root) / layout.TRAINING_MANIFEST_NAME, manifest)


def test_plan_records_failed_training_job_as_missing(study_root):
    manifest = read_training_manifest(study_root)
    failed = next(job for job in manifest["jobs"] if job["view"] == "dense")
    failed["result"] = {"status": "failed", "error": "loss is NaN"}
    _, missing = plan_reconstructions(tiny_config(), study_root, manifest)
    reasons = [item["reason"] for item in missing if (item["dose"], item["view"], item["model"]) == (failed["dose"], "dense", MODEL_PINN)]
    assert reasons and "failed" in reasons[0]


def test_plan_keeps_references_when_pinn_failed(study_root):
    manifest = read_training_manifest(study_root)
    failed = next(job for job in manifest["jobs"] if job["view"] == "dense")
    failed["result"] = {"status": "failed", "error": "loss is NaN"}
    jobs, _ = plan_reconstructions(tiny_config(), study_root, manifest)
    models = {job.model for job in jobs if (job.dose, job.view) == (failed["dose"], "dense")}
    assert models == {MODEL_BASELINE, MODEL_PTYCHI}


def test_plan_records_missing_bundle(study_root, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(layout.phase_e_root(study_root), layout.phase_e_root(root))
    bundle = layout.job_dir(layout.phase_e_root(root), DOSES[0], "baseline", 1) / layout.BUNDLE_NAME
    bundle.unlink()
    _, missing = plan_reconstructions(tiny_config(), root, read_training_manifest(root))
    reasons = [
        item["reason"] for item in missing
        if item["model"] == MODEL_BASELINE and item["dose"] == DOSES[0] and item["view"] != "sparse"
    ]
    assert reasons == [f"bundle not found: {bundle}"] * 2


def test_reconstruct_rejects_missing_training_manifest(tmp_path):
    with pytest.raises(InputError, match="training_manifest.json"):
        reconstruct_all(tiny_config(), tmp_path)


def test_reconstruct_rejects_missing_test_split(study_root, tmp_path):
    manifest = read_training_manifest(study_root)
    absent = tmp_path / "absent_test.npz"
    for job in manifest["jobs"]:
        job["test_data_path"] = str(absent)
    write_training_manifest(tmp_path, manifest)
    with pytest.raises(InputError, match="absent_test.npz"):
        reconstruct_all(tiny_config(), tmp_path)


def test_reconstruct_rejects_manifest_without_jobs(tmp_path):
    write_training_manifest(tmp_path, {"timestamp": "now"})
    with pytest.raises(InputError, match="jobs"):
        reconstruct_all(tiny_config(), tmp_path)


def test_inference_failure_recorded_others_finish(study_root, tmp_path):
    training = read_training_manifest(study_root)
    baseline = next(job for job in training["jobs"] if job["view"] == "baseline")
    good_bundle = layout.job_dir(layout.phase_e_root(study_root), baseline["dose"], "baseline", 1) / layout.BUNDLE_NAME
    broken_bundle = tmp_path / "broken.zip"
    broken_bundle.write_bytes(good_bundle.read_bytes()[:1000])
    data_path = Path(baseline["test_data_path"])
    jobs = [
        ReconstructionJob(baseline["dose"], "baseline", "test", MODEL_BASELINE, data_path, tmp_path / "broken.npz", broken_bundle, "pytorch"),
        ReconstructionJob(baseline["dose"], "baseline", "test", MODEL_BASELINE, data_path, tmp_path / "good.npz", good_bundle, "pytorch"),
    ]
    results = run_inference_jobs(jobs, tiny_config(), tmp_path, "pytorch")
    assert [results[job]["status"] for job in jobs] == ["failed", "completed"]


def test_ptychi_runs_once_per_measurement(study_root, tmp_path):
    training = read_training_manifest(study_root)
    dense = [job for job in training["jobs"] if job["view"] == "dense"]
    first_path = Path(dense[0]["test_data_path"])
    same_path = tmp_path / "same_measurement.npz"
    shutil.copyfile(first_path, same_path)
    other_path = Path(dense[1]["test_data_path"])
    jobs = [
        ReconstructionJob(dense[0]["dose"], "dense", "test", MODEL_PTYCHI, first_path, tmp_path / "a" / "PtyChi.npz"),
        ReconstructionJob(dense[0]["dose"], "baseline", "test", MODEL_PTYCHI, same_path, tmp_path / "b" / "PtyChi.npz"),
        ReconstructionJob(dense[1]["dose"], "dense", "test", MODEL_PTYCHI, other_path, tmp_path / "c" / "PtyChi.npz"),
    ]
    results = run_ptychi_jobs(jobs, tiny_config())

    assert [results[job]["status"] for job in jobs] == ["completed"] * 3
    assert results[jobs[1]]["reused_from"] == str(jobs[0].output_path)
    assert "reused_from" not in results[jobs[2]]
    assert not jobs[1].output_path.with_suffix(".log").exists()
    with np.load(jobs[0].output_path) as source, np.load(jobs[1].output_path) as copy:
        np.testing.assert_array_equal(copy["object"], source["object"])
        metadata = json.loads(str(copy["_metadata"][()]))
    assert metadata["parameters"]["view"] == "baseline"
    assert metadata["inputs"][0]["sha256"] == sha256_file(same_path)


def test_inference_worker_rejects_bad_spec(tmp_path):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps({"tasks": [], "batch_size": 0}))
    completed = subprocess.run(
        [sys.executable, "-m", "fly64.inference.worker", str(spec_path), str(tmp_path / "result.json")],
        capture_output=True, text=True, check=False,
    )
    assert (completed.returncode, completed.stdout) == (2, "")
