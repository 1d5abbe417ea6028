"""Resuming, locking, failure isolation, executors and `fly64 verify` on a tiny real sweep."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import fly64_executable, run_fly64
from fly64.atomic import sha256_file

pytestmark = pytest.mark.slow

TINY_CONFIG = """
[study]
dose_list = [1e4]
patch_size_pixels = 32
overlap_views = {dense = 0.7}

[simulation]
object_size_px = 224
scan_step_px = 6.0

[training]
epochs = 1
max_train_groups = 32
"""


def bundle_digests(root: Path) -> dict[str, str]:
    manifest = json.loads((root / "phase_e" / "training_manifest.json").read_text())
    return {f"{job['view']}/{job['dose']:g}": job["result"].get("bundle_sha256") for job in manifest["jobs"]}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY_CONFIG)
    return path


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory, config_path) -> Path:
    """An uninterrupted serial sweep."""
    root = tmp_path_factory.mktemp("reference") / "root"
    result = run_fly64("run", "--until", "train", "--root", root, "--config", config_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_rerun_reuses_up_to_date_bundles(reference_root, config_path):
    before = bundle_digests(reference_root)
    result = run_fly64("run", "--until", "train", "--root", reference_root, "--config", config_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert bundle_digests(reference_root) == before
    assert "skipped: bundle up to date, reused" in result.stderr
    assert result.stdout.count("→ SHA256") == 2


def test_training_is_byte_reproducible(reference_root, config_path, tmp_path):
    result = run_fly64("run", "--until", "train", "--root", tmp_path / "again", "--config", config_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert bundle_digests(tmp_path / "again") == bundle_digests(reference_root)


def test_local_pool_matches_serial(reference_root, config_path, tmp_path):
    result = run_fly64("run", "--until", "train", "--root", tmp_path / "pool", "--config", config_path, "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert bundle_digests(tmp_path / "pool") == bundle_digests(reference_root)


def test_ray_executor_matches_serial(reference_root, config_path, tmp_path):
    result = run_fly64("run", "--until", "train", "--root", tmp_path / "ray", "--config", config_path, "--executor", "ray",
                       "--cpus-per-job", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert bundle_digests(tmp_path / "ray") == bundle_digests(reference_root)


def test_submitit_local_executor_matches_serial(reference_root, config_path, tmp_path):
    result = run_fly64("run", "--until", "train", "--root", tmp_path / "slurm", "--config", config_path, "--executor", "slurm",
                       "--slurm-cluster", "local", "--cpus-per-job", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert bundle_digests(tmp_path / "slurm") == bundle_digests(reference_root)


def test_kill_and_resume_trials(reference_root, config_path, tmp_path):
    """SIGKILL a sweep at 10 seeded moments; each resume must end with the reference bundles."""
    reference = bundle_digests(reference_root)
    started = time.monotonic()
    result = run_fly64("run", "--until", "train", "--root", tmp_path / "timing", "--config", config_path, "--jobs", "2")
    assert result.returncode == 0
    full_seconds = time.monotonic() - started
    moments = np.random.default_rng(2026).uniform(0.5, full_seconds, size=10)

    outcomes = []
    for trial, moment in enumerate(moments):
        root = tmp_path / f"trial{trial}"
        process = subprocess.Popen(
            [fly64_executable(), "run", "--until", "train", "--root", str(root), "--config", str(config_path),
             "--jobs", "2", "-q"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        time.sleep(moment)
        # The whole process group: the runner and the job worker it started.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

        resumed = run_fly64("run", "--until", "train", "--root", root, "--config", config_path, "--jobs", "2")
        outcomes.append((round(float(moment), 1), resumed.returncode))
        assert resumed.returncode == 0, (trial, moment, resumed.stderr[-3000:])
        assert bundle_digests(root) == reference, (trial, moment)
        leftovers = [path for path in root.rglob("*.tmp")]
        assert leftovers == [], leftovers
    print("kill trials (moment s, resume exit code):", outcomes)


def test_second_runner_is_locked_out(reference_root, config_path):
    digests = bundle_digests(reference_root)
    first = subprocess.Popen(
        [fly64_executable(), "run", "--until", "train", "--root", str(reference_root), "--config", str(config_path),
         "--force", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        lock_file = reference_root / ".fly64.lock"
        while time.monotonic() < deadline and str(first.pid) not in lock_file.read_text():
            time.sleep(0.2)
        second = run_fly64("run", "--until", "train", "--root", reference_root, "--config", config_path)
        assert second.returncode == 2
        assert f"locked by process {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.wait(timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert bundle_digests(reference_root) == digests


def test_failed_job_is_isolated(config_path, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text(TINY_CONFIG.replace("epochs = 1", "epochs = 1\nlearning_rate = 1e30"))
    result = run_fly64("run", "--until", "train", "--root", tmp_path / "root", "--config", broken)
    assert result.returncode == 1
    assert "job(s) failed" in result.stderr
    manifest = json.loads((tmp_path / "root" / "phase_e" / "training_manifest.json").read_text())
    statuses = {job["view"]: job["result"]["status"] for job in manifest["jobs"]}
    assert "failed" in statuses.values()
    for job in manifest["jobs"]:
        if job["result"]["status"] == "failed":
            assert job["result"]["error"]
            assert Path(job["result"]["log_path"]).is_file()


def test_read_only_job_folder_fails_cleanly(reference_root, config_path, tmp_path):
    root = tmp_path / "root"
    result = run_fly64("generate", "--root", root, "--config", config_path)
    assert result.returncode == 0
    result = run_fly64("overlap", "--root", root, "--config", config_path)
    assert result.returncode == 0
    data_digests = {path: sha256_file(path) for path in root.rglob("*.npz")}
    job_folder = root / "phase_e" / "dose_10000" / "dense" / "gs2"
    job_folder.mkdir(parents=True)
    job_folder.chmod(0o555)
    try:
        result = run_fly64("train", "--root", root, "--config", config_path)
    finally:
        job_folder.chmod(0o755)
    if os.geteuid() == 0:
        # root ignores directory permissions; the file-size limit test covers failing writes.
        assert result.returncode == 0
    else:
        assert result.returncode == 1
    assert {path: sha256_file(path) for path in root.rglob("*.npz")} == data_digests


def test_file_size_limit_fails_job_cleanly(reference_root, config_path, tmp_path):
    root = tmp_path / "root"
    assert run_fly64("generate", "--root", root, "--config", config_path).returncode == 0
    assert run_fly64("overlap", "--root", root, "--config", config_path).returncode == 0
    data_digests = {path: sha256_file(path) for path in root.rglob("*.npz")}
    limit = 512 * 1024  # smaller than any bundle, larger than the logs and JSON files
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from studies.fly64_dose_overlap.cli import main\n"
        "main(sys.argv[1:], prog_name='fly64')\n"
    )
    import sys

    result = subprocess.run(
        [sys.executable, "-c", script, "train", "--root", str(root), "--config", str(config_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr.split("\n")[-3:]
    assert {path: sha256_file(path) for path in root.rglob("*.npz")} == data_digests
    assert list(root.rglob("*.tmp")) == []
    manifest = json.loads((root / "phase_e" / "training_manifest.json").read_text())
    assert all(job["result"]["status"] == "failed" for job in manifest["jobs"])


def test_verify_study_root_passes(reference_root):
    result = run_fly64("verify", reference_root)
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout
    assert result.stdout.count("reloaded in a fresh process") == 2


def test_verify_reports_flipped_byte(reference_root, tmp_path):
    bundle = reference_root / "phase_e" / "dose_10000" / "baseline" / "gs1" / "wts.h5.zip"
    damaged = tmp_path / "wts.h5.zip"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    result = run_fly64("verify", damaged)
    assert result.returncode == 1
    assert "FAIL" in result.stdout


def test_tensorflow_backend_sweep(config_path, tmp_path):
    from fly64.bundle.archive import read_bundle

    root = tmp_path / "tensorflow"
    result = run_fly64("run", "--until", "train", "--root", root, "--config", config_path, "--backend", "tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((root / "phase_e" / "training_manifest.json").read_text())
    assert manifest["backend"] == "tensorflow"
    assert result.stdout.count("→ SHA256") == len(manifest["jobs"]) == 2
    for job in manifest["jobs"]:
        bundle = Path(job["log_path"]).parent / job["result"]["bundle_path"]
        assert read_bundle(bundle).backend == "tensorflow"
        assert sha256_file(bundle) == job["result"]["bundle_sha256"]
