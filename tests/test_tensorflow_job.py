"""TensorFlow training jobs through the worker process, their bundles and their reload.

Each job runs as `python -m fly64.backends.worker SPEC.json RESULT.json`, as the study's
Phase E runs it, so TensorFlow never enters the test process.
"""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fly64.atomic import sha256_file
from fly64.backends.base import RESULT_KEYS
from fly64.bundle.archive import read_bundle
from fly64.contract import save_dataset
from fly64.learning.synthetic import make_synthetic_dataset

N = 32
EPOCHS = 2
TRAIN_PATTERNS = 64


def write_datasets(folder: Path) -> tuple[Path, Path]:
    """Write a 64-pattern training scan and a 25-pattern test scan of the synthetic object."""
    train_path, test_path = folder / "train.npz", folder / "test.npz"
    save_dataset(train_path, make_synthetic_dataset(patch_size=N, scan_side=8, step_px=4, dose_photons=1e4, seed=0))
    save_dataset(test_path, make_synthetic_dataset(patch_size=N, scan_side=5, step_px=6, dose_photons=1e4, seed=1))
    return train_path, test_path


def job_spec(train_path: Path, test_path: Path, bundle_path: Path, **training) -> dict:
    return {
        "backend": "tensorflow",
        "model_kind": "pinn",
        "gridsize": 2,
        "neighbor_count": 7,
        "seed": 3,
        "train_data_path": str(train_path),
        "test_data_path": str(test_path),
        "bundle_path": str(bundle_path),
        "training": {
            "epochs": EPOCHS, "batch_size": 16, "learning_rate": 1e-3, "validation_fraction": 0.1,
            "early_stopping_patience": 5, "max_train_groups": 0, "threads": 1, "device": "cpu",
            "model_preset": "compact", **training,
        },
        "provenance": {"dose": 1e4, "view": "dense"},
    }


def run_worker(spec: dict, folder: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the worker on `spec` and return the process and its result JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = folder / "spec.json", folder / "result.json"
    spec_path.write_text(json.dumps(spec))
    completed = subprocess.run(
        [sys.executable, "-m", "fly64.backends.worker", str(spec_path), str(result_path)],
        capture_output=True, text=True, timeout=600,
    )
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    return completed, result


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    return write_datasets(tmp_path_factory.mktemp("tensorflow_job_data"))


@pytest.fixture(scope="module")
def first_run(datasets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensorflow_job_first")
    completed, result = run_worker(job_spec(*datasets, folder / "wts.h5.zip"), folder)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed, result, folder / "wts.h5.zip"


@pytest.fixture(scope="module")
def second_run(datasets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensorflow_job_second")
    completed, result = run_worker(job_spec(*datasets, folder / "wts.h5.zip"), folder)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed, result, folder / "wts.h5.zip"


def test_job_completes(first_run):
    assert first_run[1]["status"] == "completed"


def test_job_prints_nothing(first_run):
    assert first_run[0].stdout == ""


def test_job_logs_epochs(first_run):
    assert f"epoch {EPOCHS}/{EPOCHS}" in first_run[0].stderr


def test_job_result_keys(first_run):
    missing = [key for key in RESULT_KEYS if key not in first_run[1]]
    assert missing == []


def test_job_result_backend(first_run):
    assert first_run[1]["backend"] == "tensorflow"


def test_job_epochs_run(first_run):
    assert first_run[1]["epochs_run"] == EPOCHS


def test_job_loss_history(first_run):
    assert [entry["epoch"] for entry in first_run[1]["loss_history"]] == list(range(1, EPOCHS + 1))


def test_job_train_loss_finite(first_run):
    assert np.isfinite(first_run[1]["final_train_loss"])


def test_job_val_loss_finite(first_run):
    assert np.isfinite(first_run[1]["final_val_loss"])


def test_job_group_split(first_run):
    assert first_run[1]["n_train_groups"] + first_run[1]["n_val_groups"] == TRAIN_PATTERNS


def test_job_throughput_positive(first_run):
    assert first_run[1]["samples_per_second"] > 0


def test_job_intensity_scale_trained(first_run):
    initial = float(re.search(r"Initial intensity scale ([0-9.e+-]+)", first_run[0].stderr).group(1))
    assert first_run[1]["intensity_scale"] != pytest.approx(initial, rel=1e-4)


def test_bundle_manifest(first_run):
    manifest = read_bundle(first_run[2]).manifest
    assert manifest == {"models": ["autoencoder", "diffraction_to_obj"], "version": "1.0", "backend": "tensorflow"}


@pytest.mark.parametrize("model", ["autoencoder", "diffraction_to_obj"])
def test_bundle_params(first_run, model):
    params = read_bundle(first_run[2]).params[model]
    expected = {"N": N, "gridsize": 2, "model_kind": "pinn", "preset": "compact", "backend": "tensorflow"}
    assert {key: params[key] for key in expected} == expected


def test_bundle_params_intensity_scale(first_run):
    params = read_bundle(first_run[2]).params["autoencoder"]
    assert params["intensity_scale"] == pytest.approx(first_run[1]["intensity_scale"], rel=1e-6)


def test_bundle_params_norm_factor(first_run):
    params = read_bundle(first_run[2]).params["diffraction_to_obj"]
    assert params["norm_factor"] == pytest.approx(first_run[1]["norm_factor"], rel=1e-12)


def test_bundle_members(first_run):
    with zipfile.ZipFile(first_run[2]) as archive:
        names = set(archive.namelist())
    expected = {"autoencoder/model.keras", "diffraction_to_obj/model.keras", "probe.npy", "verification.npz", "manifest.json"}
    assert expected <= names


def test_bundle_json_provenance(first_run, datasets):
    provenance = read_bundle(first_run[2]).manifest_json["provenance"]
    assert provenance["train_data"]["sha256"] == sha256_file(datasets[0])


def test_bundle_json_versions(first_run):
    provenance = read_bundle(first_run[2]).manifest_json["provenance"]
    assert provenance["tensorflow_version"] and provenance["keras_version"]


RELOAD_SCRIPT = """
import json, sys
import numpy as np
from fly64.backends import load_bundle
from fly64.bundle.archive import read_bundle
model = load_bundle(sys.argv[1], verify=False)
stored = read_bundle(sys.argv[1]).load_arrays("verification.npz")
predicted = model.predict(stored["amplitude"], stored["offsets_px"], norm_factor=float(stored["norm_factor"]))
json.dump({"deviation": float(np.max(np.abs(predicted - stored["expected"]))), "shape": list(predicted.shape),
           "dtype": str(predicted.dtype), "class": type(model).__name__}, sys.stdout)
"""


@pytest.fixture(scope="module")
def fresh_reload(first_run) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(first_run[2])], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


def test_reload_fresh_process_reproduces(fresh_reload):
    assert fresh_reload["deviation"] <= 1e-5


def test_reload_prediction_layout(fresh_reload):
    assert fresh_reload["shape"][1:] == [4, N, N]


def test_reload_prediction_complex64(fresh_reload):
    assert fresh_reload["dtype"] == "complex64"


def test_reload_uses_keras_model(fresh_reload):
    assert fresh_reload["class"] == "KerasLoadedModel"


@pytest.mark.parametrize("model", ["autoencoder", "diffraction_to_obj"])
def test_training_deterministic_weights(first_run, second_run, model):
    with zipfile.ZipFile(first_run[2]) as first, zipfile.ZipFile(second_run[2]) as second:
        assert first.read(f"{model}/model.keras") == second.read(f"{model}/model.keras")


def test_training_deterministic_losses(first_run, second_run):
    assert first_run[1]["loss_history"] == second_run[1]["loss_history"]


def test_training_deterministic_bundle(first_run, second_run):
    assert first_run[2].read_bytes() == second_run[2].read_bytes()


def test_cli_process_imports_no_tensorflow():
    code = (
        "import sys, studies.fly64_dose_overlap.cli, fly64.backends, fly64.backends.tensorflow, fly64.backends.worker; "
        "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.stdout.strip() == "[]", completed.stderr[-2000:]


@pytest.fixture(scope="module")
def missing_data_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tensorflow_job_missing")
    spec = job_spec(folder / "absent.npz", folder / "absent_test.npz", folder / "wts.h5.zip")
    completed, result = run_worker(spec, folder)
    return completed, result, folder


def test_missing_data_exit_code(missing_data_run):
    assert missing_data_run[0].returncode == 1


def test_missing_data_status(missing_data_run):
    assert missing_data_run[1]["status"] == "failed"


def test_missing_data_error_names_file(missing_data_run):
    assert str(missing_data_run[2] / "absent.npz") in missing_data_run[1]["error"]
