"""The CI smoke sweep end to end through the `fly64` command, with the real fly64 probe.

One `fly64 run` over `configs/smoke.toml` (three doses, baseline + dense + sparse) is
shared by the checks below: the stdout result lines against the manifest and the files,
the bundles' manifests, the data contract of every NPZ, reloading each bundle in a fresh
process, and determinism of a second generation and training.
"""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_fly64
from fly64.atomic import sha256_file
from fly64.bundle.safe_pickle import loads_plain
from fly64.contract import load_dataset

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPOSITORY_ROOT / "configs" / "smoke.toml"
RESULT_LINE = re.compile(r"^    → (Bundle|SHA256|Size) \[(\w+)/dose=(\d\.?\d*e[+-]\d+)\]: (.+)$")

SUMMARY_LINES = {"Study root", "Training manifest", "Reconstruction manifest", "Metrics summary", "Report"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, fly64_probe_path):
    root = tmp_path_factory.mktemp("smoke") / "root"
    result = run_fly64("run", "--root", root, "--config", SMOKE_CONFIG, "--probe", fly64_probe_path, timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result


def parse_result_lines(stdout: str) -> dict[str, dict[str, str]]:
    jobs: dict[str, dict[str, str]] = {}
    for line in stdout.splitlines():
        match = RESULT_LINE.match(line)
        if match:
            kind, view, dose, value = match.groups()
            jobs.setdefault(f"{view}/dose={dose}", {})[kind] = value
    return jobs


def manifest(root: Path) -> dict:
    return json.loads((root / "phase_e" / "training_manifest.json").read_text())


def test_smoke_trains_nine_jobs(smoke_run):
    root, _ = smoke_run
    jobs = manifest(root)["jobs"]
    assert len(jobs) == 9
    assert {(job["view"], job["gridsize"]) for job in jobs} == {("baseline", 1), ("dense", 2), ("sparse", 2)}
    assert all(job["result"]["status"] == "completed" for job in jobs)
    assert manifest(root)["skipped_count"] == 0


def test_stdout_lines_match_manifest_and_files(smoke_run):
    root, result = smoke_run
    printed = parse_result_lines(result.stdout)
    assert len(printed) == 9
    for job in manifest(root)["jobs"]:
        label = f"{job['view']}/dose={job['dose']:.0e}"
        lines = printed[label]
        bundle = Path(job["log_path"]).parent / job["result"]["bundle_path"]
        assert lines["Bundle"] == "wts.h5.zip"
        assert lines["SHA256"] == job["result"]["bundle_sha256"]
        assert re.fullmatch(r"[0-9a-f]{64}", lines["SHA256"])
        assert lines["SHA256"] == sha256_file(bundle)
        assert lines["Size"] == f"{job['result']['bundle_size_bytes']} bytes"
        assert job["result"]["bundle_size_bytes"] == bundle.stat().st_size > 0


def test_stdout_holds_only_result_lines(smoke_run):
    _, result = smoke_run
    for line in result.stdout.splitlines():
        assert RESULT_LINE.match(line) or line.split(":")[0] in SUMMARY_LINES, line


def test_bundle_manifests_name_pytorch(smoke_run):
    root, _ = smoke_run
    for bundle in sorted(root.glob("phase_e/dose_*/*/gs*/wts.h5.zip")):
        with zipfile.ZipFile(bundle) as archive:
            contents = loads_plain(archive.read("manifest.dill"), source=str(bundle))
        assert contents["backend"] == "pytorch"
        assert contents["models"] == ["autoencoder", "diffraction_to_obj"]
        assert re.fullmatch(r"\d+\.\d+", contents["version"])


def test_every_npz_loads_without_pickle(smoke_run):
    root, _ = smoke_run
    paths = sorted(root.rglob("*.npz"))
    assert len(paths) >= 6 + 12
    for path in paths:
        with np.load(path, allow_pickle=False) as archive:
            assert all(archive[key].dtype != object for key in archive.files)
    for path in sorted(root.glob("data/**/*.npz")):
        load_dataset(path)


def test_phase_c_records_dose(smoke_run):
    root, _ = smoke_run
    for dose in (1000, 10000, 100000):
        metadata = load_dataset(root / "data" / "phase_c" / f"dose_{dose}" / "patched_train.npz").metadata
        text = json.dumps(metadata)
        assert "scale_factor" in text
        assert str(dose) in text or f"{float(dose)}" in text


def test_bundles_reload_in_fresh_process(smoke_run):
    root, _ = smoke_run
    bundles = [str(path) for path in sorted(root.glob("phase_e/dose_*/*/gs*/wts.h5.zip"))]
    script = (
        "import sys\n"
        "from fly64.backends import load_bundle\n"
        "for path in sys.argv[1:]:\n"
        "    model = load_bundle(path, verify=False)\n"
        "    print(path, model.verify())\n"
    )
    completed = subprocess.run([sys.executable, "-c", script, *bundles], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    deviations = [float(line.split()[-1]) for line in completed.stdout.splitlines()]
    assert len(deviations) == 9
    assert max(deviations) <= 1e-5


def test_baseline_learns_amplitude(smoke_run):
    root, _ = smoke_run
    for job in manifest(root)["jobs"]:
        result = job["result"]
        assert np.isfinite(result["amplitude_correlation"])
        assert np.isfinite(result["phase_correlation"])
        if job["view"] == "baseline":
            assert result["amplitude_correlation"] > 0.3, job


def test_second_run_is_identical(smoke_run, tmp_path, fly64_probe_path):
    root, _ = smoke_run
    second = tmp_path / "second"
    result = run_fly64("generate", "--root", second, "--config", SMOKE_CONFIG, "--probe", fly64_probe_path)
    assert result.returncode == 0, result.stderr
    for path in sorted((root / "data" / "phase_c").rglob("*.npz")):
        twin = second / path.relative_to(root)
        assert sha256_file(twin) == sha256_file(path), path

    result = run_fly64("train", "--phase-c-root", root / "data" / "phase_c", "--phase-d-root", root / "data" / "phase_d",
                       "--artifact-root", second / "phase_e", "--config", SMOKE_CONFIG,
                       "--view", "sparse", "--dose", "1e3")
    assert result.returncode == 0, result.stderr[-3000:]
    first_bundle = root / "phase_e" / "dose_1000" / "sparse" / "gs2" / "wts.h5.zip"
    second_bundle = second / "phase_e" / "dose_1000" / "sparse" / "gs2" / "wts.h5.zip"
    with zipfile.ZipFile(first_bundle) as first, zipfile.ZipFile(second_bundle) as other:
        weights = [name for name in first.namelist() if name.endswith("model.pth")]
        assert weights
        for name in weights:
            assert first.read(name) == other.read(name), name


def test_reconstructions_written_for_three_models(smoke_run):
    root, _ = smoke_run
    manifest = json.loads((root / "phase_f" / "reconstruction_manifest.json").read_text())
    entries = manifest["jobs"]
    assert {entry["model"] for entry in entries} >= {"PtychoPINN", "Baseline", "PtyChi"}
    assert all(entry["status"] == "completed" for entry in entries), [e for e in entries if e["status"] != "completed"]
    for path in sorted((root / "phase_f").rglob("*.npz")):
        with np.load(path, allow_pickle=False) as archive:
            assert archive["object"].dtype == np.complex64


def test_metrics_finite_for_three_models(smoke_run):
    root, _ = smoke_run
    tables = sorted((root / "analysis").rglob("comparison_metrics.csv"))
    assert len(tables) >= 6
    models = set()
    for table in tables:
        lines = table.read_text().splitlines()
        assert lines[0] == "model,metric,amplitude,phase"
        for line in lines[1:]:
            model, metric, amplitude, phase = line.split(",")
            models.add(model)
            values = (float(amplitude), float(phase))
            # PSNR is inf for a perfect match, and an FRC resolution is inf when the curve
            # never reaches its threshold. Every other metric is a finite number.
            if metric in ("psnr", "frc50", "frc17"):
                assert not any(np.isnan(value) for value in values), (table, line)
            else:
                assert all(np.isfinite(value) for value in values), (table, line)
    assert models == {"PtychoPINN", "Baseline", "PtyChi"}
    summary = json.loads((root / "analysis" / "metrics_summary.json").read_text())
    assert summary


def test_report_figures_are_png(smoke_run):
    import matplotlib.image

    root, result = smoke_run
    report = root / "analysis" / "report.md"
    assert f"Report: {report}" in result.stdout
    text = report.read_text()
    figures = sorted((root / "analysis").rglob("*.png"))
    assert len(figures) >= 4
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(figure).ndim == 3
        assert figure.name in text
