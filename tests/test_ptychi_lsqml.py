"""Classical LSQML reconstruction with pty-chi, run through its worker process.

pty-chi changes torch's process-wide defaults, so every reconstruction here runs in a
subprocess (`python -m fly64.classical.worker`), never in the test process.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from fly64.classical.ptychi_lsqml import estimate_scale_factor, reconstruct_lsqml
from fly64.classical.worker import WorkerSpec, run_worker
from fly64.contract import Dataset, save_dataset
from fly64.errors import InputError, JobFailedError
from fly64.metrics.registration import register_shift, scanned_region_mask

OBJECT_SIZE_PX = 128
PATCH_SIZE_PX = 32
PROBE_RADIUS_PX = 8
DOSE_PHOTONS = 1e6


def simulate(seed: int = 0) -> tuple[Dataset, float]:
    """Simulate a 128 x 128 smooth object scanned on a 10 x 10 raster with a 32 x 32 disc probe.

    Patches follow this project's convention: the patch centred at (x, y) covers columns
    x - N/2 .. x + N/2 - 1 and the matching rows. Returns the dataset and the dose scale factor.
    """
    rng = np.random.default_rng(seed)

    def smooth_field() -> np.ndarray:
        field = gaussian_filter(rng.standard_normal((OBJECT_SIZE_PX, OBJECT_SIZE_PX)), 3.0)
        return field / np.abs(field).max()

    obj = ((0.9 + 0.1 * smooth_field()) * np.exp(1j * smooth_field())).astype(np.complex64)

    offsets = np.arange(PATCH_SIZE_PX) - PATCH_SIZE_PX / 2
    disc = (np.hypot(offsets[:, None], offsets[None, :]) <= PROBE_RADIUS_PX).astype(np.float64)
    probe = gaussian_filter(disc, 1.0).astype(np.complex64)
    probe /= np.sqrt(np.sum(np.abs(probe) ** 2))

    centres = np.arange(PATCH_SIZE_PX // 2 + 1, OBJECT_SIZE_PX - PATCH_SIZE_PX // 2 - 1, 10.0)
    x, y = np.meshgrid(centres, centres)
    positions_xy = np.stack([x.ravel(), y.ravel()], axis=1)

    first_rows = (positions_xy[:, 1] - PATCH_SIZE_PX // 2).astype(int)
    first_columns = (positions_xy[:, 0] - PATCH_SIZE_PX // 2).astype(int)
    pixel = np.arange(PATCH_SIZE_PX)
    patches = obj[first_rows[:, None, None] + pixel[None, :, None], first_columns[:, None, None] + pixel[None, None, :]]

    far_field = np.fft.fftshift(np.fft.fft2(probe * patches, norm="ortho"), axes=(-2, -1))
    intensity = np.abs(far_field) ** 2
    scale_factor = DOSE_PHOTONS / np.mean(np.sum(intensity, axis=(1, 2)))
    counts = rng.poisson(scale_factor * intensity)

    dataset = Dataset(
        diffraction=np.sqrt(counts).astype(np.float32),
        object=obj,
        probe=probe,
        xcoords=positions_xy[:, 0],
        ycoords=positions_xy[:, 1],
        metadata={"step": "test", "parameters": {"scale_factor": float(scale_factor)}},
    )
    return dataset, float(scale_factor)


def run_worker_process(spec: dict, tmp_path) -> subprocess.CompletedProcess:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    return subprocess.run(
        [sys.executable, "-m", "fly64.classical.worker", str(spec_path), str(tmp_path / "result.json")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def worker_run(tmp_path_factory):
    """Reconstruct the simulated dataset once in a worker process; share the outputs."""
    tmp_path = tmp_path_factory.mktemp("lsqml")
    dataset, _ = simulate()
    save_dataset(tmp_path / "data.npz", dataset)
    completed = run_worker_process(
        {"dataset": "data.npz", "output": "object.npz", "epochs": 30, "batch_size": 32, "seed": 1, "threads": 1},
        tmp_path,
    )
    return dataset, completed, tmp_path


def test_worker_exits_zero(worker_run):
    _, completed, _ = worker_run

    assert completed.returncode == 0, completed.stderr[-3000:]


def test_worker_writes_nothing_to_stdout(worker_run):
    _, completed, _ = worker_run

    assert completed.stdout == ""


def test_worker_result_json(worker_run):
    _, _, tmp_path = worker_run

    result = json.loads((tmp_path / "result.json").read_text())

    assert result["status"] == "ok"
    assert result["n_patterns"] == 100
    assert result["scale_factor_source"] == "metadata"
    assert result["timings_s"]["lsqml"] > 0
    assert result["options"]["optimised"] == ["object"]


def test_worker_output_npz_keys(worker_run):
    dataset, _, tmp_path = worker_run

    with np.load(tmp_path / "object.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["_metadata", "object", "xcoords", "ycoords"]
        assert archive["object"].dtype == np.complex64
        assert archive["object"].shape == (OBJECT_SIZE_PX, OBJECT_SIZE_PX)
        np.testing.assert_array_equal(archive["xcoords"], dataset.xcoords)
        metadata = json.loads(str(archive["_metadata"][()]))
    assert metadata["parameters"]["options"]["epochs"] == 30


def test_worker_recovers_phase(worker_run):
    dataset, _, tmp_path = worker_run
    with np.load(tmp_path / "object.npz", allow_pickle=False) as archive:
        reconstructed = archive["object"]
    # Patch corners outside the probe's disc are never lit, so shrink the patch footprint.
    region = scanned_region_mask(dataset.object.shape, dataset.positions_xy, PATCH_SIZE_PX, margin_px=8)
    truth = dataset.object[region]
    estimate = reconstructed[region]
    estimate = estimate * np.exp(-1j * np.angle(np.vdot(truth, estimate)))

    correlation = np.corrcoef(np.angle(estimate), np.angle(truth))[0, 1]

    assert correlation > 0.9


def test_worker_recovers_amplitude_scale(worker_run):
    dataset, _, tmp_path = worker_run
    with np.load(tmp_path / "object.npz", allow_pickle=False) as archive:
        reconstructed = archive["object"]
    region = scanned_region_mask(dataset.object.shape, dataset.positions_xy, PATCH_SIZE_PX, margin_px=8)

    ratio = np.mean(np.abs(reconstructed[region])) / np.mean(np.abs(dataset.object[region]))

    assert ratio == pytest.approx(1.0, abs=0.05)


def test_worker_positions_not_shifted(worker_run):
    dataset, _, tmp_path = worker_run
    with np.load(tmp_path / "object.npz", allow_pickle=False) as archive:
        reconstructed = archive["object"]
    region = scanned_region_mask(dataset.object.shape, dataset.positions_xy, PATCH_SIZE_PX, margin_px=8)
    rows, columns = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))

    dy, dx = register_shift(dataset.object[box], reconstructed[box])

    assert abs(dy) < 0.1
    assert abs(dx) < 0.1


def test_worker_missing_dataset_exits_two(tmp_path):
    completed = run_worker_process({"dataset": "absent.npz", "output": "object.npz"}, tmp_path)

    result = json.loads((tmp_path / "result.json").read_text())
    assert completed.returncode == 2
    assert result["status"] == "failed"
    assert "absent.npz" in result["error"]


def test_worker_unknown_spec_key_exits_two(tmp_path):
    completed = run_worker_process({"dataset": "d.npz", "output": "o.npz", "epoch": 5}, tmp_path)

    result = json.loads((tmp_path / "result.json").read_text())
    assert completed.returncode == 2
    assert "epoch" in result["error"]


def test_run_worker_raises_job_failed(tmp_path):
    spec = WorkerSpec(dataset=str(tmp_path / "absent.npz"), output=str(tmp_path / "object.npz"))

    with pytest.raises(JobFailedError, match="exit code 2"):
        run_worker(spec, tmp_path / "spec.json", tmp_path / "result.json", log_path=tmp_path / "worker.log")


def test_worker_spec_rejects_bad_epochs():
    with pytest.raises(InputError, match="epochs"):
        WorkerSpec.from_json({"dataset": "d.npz", "output": "o.npz", "epochs": 0}, source="spec.json")


def test_estimate_scale_factor_unit_object():
    dataset, _ = simulate()
    scale_factor = 3.0e5
    # Under a unit object every exit wave is the probe itself.
    intensity = np.abs(np.fft.fftshift(np.fft.fft2(dataset.probe, norm="ortho"))) ** 2
    counts = np.random.default_rng(3).poisson(scale_factor * intensity, size=(50, *intensity.shape))

    estimate = estimate_scale_factor(np.sqrt(counts), dataset.probe)

    assert estimate == pytest.approx(scale_factor, rel=0.01)


def test_reconstruct_rejects_scan_outside():
    dataset, scale_factor = simulate()
    positions_xy = dataset.positions_xy.copy()
    positions_xy[0] = [2.0, 2.0]

    with pytest.raises(InputError, match="leaves the object"):
        reconstruct_lsqml(dataset.diffraction, dataset.probe, positions_xy, dataset.object.shape, scale_factor=scale_factor)


def test_reconstruct_rejects_unknown_noise_model():
    dataset, scale_factor = simulate()

    with pytest.raises(InputError, match="noise_model"):
        reconstruct_lsqml(
            dataset.diffraction,
            dataset.probe,
            dataset.positions_xy,
            dataset.object.shape,
            scale_factor=scale_factor,
            noise_model="laplace",
        )
