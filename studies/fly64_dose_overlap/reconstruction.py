"""Phase F: reconstruct each view's held-out split with the trained models and with pty-chi.

For every dose and every overlap view that Phase E trained (the training manifest lists
it), the view's test split, the PINN job's `test_data_path`, is reconstructed by three
models on the same diffraction and positions:

- `PtychoPINN`: the view's PINN bundle (gridsize 2; see `fly64.inference.worker` for the
  grouping and averaging);
- `Baseline`: the dose's supervised baseline bundle (gridsize 1);
- `PtyChi`: pty-chi's LSQML with the known probe fixed (`fly64.classical.worker`), with
  `[reconstruction] ptychi_epochs`, `ptychi_batch_size` and `ptychi_max_patterns`.

With `include_baseline_view`, the baseline job's own Phase C test split is also
reconstructed, as view `baseline`, by `Baseline` and `PtyChi`.

pty-chi runs once per distinct measurement. A view whose diffraction, positions, probe
and object shape equal those of a view reconstructed earlier in the same run (a dense
view that keeps every position is the Phase C split itself) gets a copy of that
reconstruction, with `reused_from` naming the source in its manifest entry and
provenance.

Learned models run in `python -m fly64.inference.worker`, one process per backend, and
pty-chi in `python -m fly64.classical.worker`, one process per reconstruction, so this
process never imports torch or TensorFlow. Outputs:

    <root>/phase_f/dose_<d>/<view>/test/<model>.npz   object, xcoords, ycoords, coverage, _metadata
    <root>/phase_f/dose_<d>/<view>/test/PtyChi.log    pty-chi's log
    <root>/phase_f/inference_<backend>.log            the inference worker's log
    <root>/phase_f/reconstruction_manifest.json

A model whose training job failed or whose bundle is missing is recorded under `missing`
and the other models still run. A reconstruction that fails is recorded with its error
and the others still finish.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fly64 import __version__
from fly64.atomic import save_npz, write_json
from fly64.classical.worker import WorkerSpec, run_worker
from fly64.contract import (
    KEY_METADATA,
    KEY_X,
    KEY_Y,
    Dataset,
    load_dataset,
    provenance,
    save_dataset,
)
from fly64.errors import InputError, JobFailedError
from fly64.inference.stitching import (
    DEFAULT_CENTRAL_FRACTION,
    DEFAULT_MIN_WEIGHT,
    PatchStitcher,
)
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.config import StudyConfig
from studies.fly64_dose_overlap.design import dose_folder_name, dose_label

logger = logging.getLogger(__name__)

MODEL_PINN = "PtychoPINN"
MODEL_BASELINE = "Baseline"
MODEL_PTYCHI = "PtyChi"
MODELS = (MODEL_PINN, MODEL_BASELINE, MODEL_PTYCHI)
LEARNED_MODELS = (MODEL_PINN, MODEL_BASELINE)

TEST_SPLIT = "test"
RECONSTRUCTION_MANIFEST_NAME = "reconstruction_manifest.json"
PROVENANCE_STEP = "phase_f"

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"

# pty-chi's likelihood: its amplitude (Gaussian) model, which the classical worker's
# tests validate; Poisson is the alternative for very low counts.
PTYCHI_NOISE_MODEL = "gaussian"
# Patterns per step when splatting pty-chi's coverage map; bounds the temporary arrays.
COVERAGE_CHUNK_PATTERNS = 256


@dataclasses.dataclass(frozen=True)
class ReconstructionJob:
    """One model applied to one dataset.

    Attributes:
        dose: nominal dose of the data, photons per pattern.
        view: `dense`, `sparse` (Phase D views) or `baseline` (the Phase C test split).
        split: always `test`.
        model: `PtychoPINN`, `Baseline` or `PtyChi`.
        data_path: the NPZ dataset to reconstruct.
        output_path: the reconstruction NPZ to write.
        bundle_path: the model bundle; None for PtyChi.
        backend: the bundle's backend from the training manifest; None for PtyChi.
        grouping_seed: seed of gridsize-2 grouping, the training job's seed.
    """

    dose: float
    view: str
    split: str
    model: str
    data_path: Path
    output_path: Path
    bundle_path: Path | None = None
    backend: str | None = None
    grouping_seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.model} {self.view}/dose={dose_label(self.dose)}"

    def describe(self) -> dict[str, Any]:
        """Return the job's identity as JSON-ready data."""
        return {
            "dose": self.dose,
            "view": self.view,
            "split": self.split,
            "model": self.model,
            "data_path": str(self.data_path),
            "output_path": str(self.output_path),
            "bundle_path": None if self.bundle_path is None else str(self.bundle_path),
            "backend": self.backend,
        }


def reconstruction_dir(root: Path, dose_photons: float, view: str, split: str = TEST_SPLIT) -> Path:
    """Return `<root>/phase_f/dose_<d>/<view>/<split>`."""
    return layout.phase_f_root(root) / dose_folder_name(dose_photons) / view / split


def reconstruction_path(root: Path, dose_photons: float, view: str, model: str, split: str = TEST_SPLIT) -> Path:
    """Return `<root>/phase_f/dose_<d>/<view>/<split>/<model>.npz`."""
    return reconstruction_dir(root, dose_photons, view, split) / f"{model}.npz"


def reconstruction_manifest_path(root: Path) -> Path:
    return layout.phase_f_root(root) / RECONSTRUCTION_MANIFEST_NAME


def read_training_manifest(root: Path) -> dict[str, Any]:
    """Read `<root>/phase_e/training_manifest.json`.

    Raises:
        InputError: the file is missing, not JSON, or has no `jobs` list.
    """
    path = layout.phase_e_root(root) / layout.TRAINING_MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{path}: training manifest not found; run `fly64 train` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON training manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("jobs"), list):
        raise InputError(f"{path}: training manifest has no `jobs` list")
    return manifest


def plan_reconstructions(
    config: StudyConfig, root: Path, training_manifest: dict[str, Any], include_baseline_view: bool = True
) -> tuple[list[ReconstructionJob], list[dict[str, Any]]]:
    """List the reconstructions to run and the models that cannot run, in dose, view, model order.

    Returns:
        `(jobs, missing)`; each missing entry has `dose, view, split, model, reason`.

    Raises:
        InputError: a training job entry lacks a key, or a test split it names is not found.
    """
    design = config.design()
    root = Path(root)
    manifest_path = layout.phase_e_root(root) / layout.TRAINING_MANIFEST_NAME
    training_jobs = {}
    for index, entry in enumerate(training_manifest["jobs"]):
        if not isinstance(entry, dict) or any(key not in entry for key in ("dose", "view", "gridsize", "test_data_path")):
            raise InputError(f"{manifest_path}: jobs[{index}] lacks dose, view, gridsize or test_data_path")
        training_jobs[(float(entry["dose"]), str(entry["view"]))] = entry

    doses = sorted({dose for dose, _ in training_jobs})
    # Design views come first, so a view that Phase D or E skipped is recorded as missing.
    views = list(design.overlap_views)
    views += [view for _, view in training_jobs if view not in views and view != layout.BASELINE_VIEW]
    skipped = {(float(item["dose"]), item["view"]): item.get("reason", "") for item in training_manifest.get("skipped_views", [])}

    jobs: list[ReconstructionJob] = []
    missing: list[dict[str, Any]] = []
    for dose in doses:
        baseline_entry = training_jobs.get((dose, layout.BASELINE_VIEW))
        for view in views:
            pinn_entry = training_jobs.get((dose, view))
            if pinn_entry is None:
                reason = skipped.get((dose, view), "no training job for this dose and view")
                for model in MODELS:
                    missing.append(_missing(dose, view, model, f"view not trained: {reason}"))
                continue
            data_path = _test_data_path(pinn_entry, root, manifest_path)
            planned = [
                _learned_job(root, dose, view, MODEL_PINN, pinn_entry, data_path, design.training_seed),
                _learned_job(root, dose, view, MODEL_BASELINE, baseline_entry, data_path, design.training_seed),
                _ptychi_job(root, dose, view, data_path),
            ]
            _sort_planned(planned, jobs, missing)

        if include_baseline_view and baseline_entry is not None:
            data_path = _test_data_path(baseline_entry, root, manifest_path)
            view = layout.BASELINE_VIEW
            planned = [
                _learned_job(root, dose, view, MODEL_BASELINE, baseline_entry, data_path, design.training_seed),
                _ptychi_job(root, dose, view, data_path),
            ]
            _sort_planned(planned, jobs, missing)
    return jobs, missing


def _sort_planned(
    planned: list[ReconstructionJob | dict[str, Any]], jobs: list[ReconstructionJob], missing: list[dict[str, Any]]
) -> None:
    """Append each planned item to `jobs` when it is a job, else to `missing`."""
    for item in planned:
        if isinstance(item, ReconstructionJob):
            jobs.append(item)
        else:
            missing.append(item)


def _ptychi_job(root: Path, dose: float, view: str, data_path: Path) -> ReconstructionJob:
    return ReconstructionJob(dose, view, TEST_SPLIT, MODEL_PTYCHI, data_path, reconstruction_path(root, dose, view, MODEL_PTYCHI))


def _missing(dose: float, view: str, model: str, reason: str) -> dict[str, Any]:
    return {"dose": dose, "view": view, "split": TEST_SPLIT, "model": model, "reason": reason}


def _learned_job(
    root: Path, dose: float, view: str, model: str, entry: dict[str, Any] | None, data_path: Path, default_seed: int
) -> ReconstructionJob | dict[str, Any]:
    """Return the job of a learned model, or its `missing` record when its bundle is unusable."""
    if entry is None:
        return _missing(dose, view, model, f"no {model} training job at dose {dose_label(dose)}")
    result = entry.get("result") or {}
    if result.get("status") != "completed":
        error = result.get("error", "no error recorded")
        return _missing(dose, view, model, f"training job status is {result.get('status')!r} ({error})")
    job_folder = layout.job_dir(layout.phase_e_root(root), float(entry["dose"]), str(entry["view"]), int(entry["gridsize"]))
    bundle_path = job_folder / str(result.get("bundle_path", layout.BUNDLE_NAME))
    if not bundle_path.is_file():
        return _missing(dose, view, model, f"bundle not found: {bundle_path}")
    return ReconstructionJob(
        dose=dose,
        view=view,
        split=TEST_SPLIT,
        model=model,
        data_path=data_path,
        output_path=reconstruction_path(root, dose, view, model),
        bundle_path=bundle_path,
        backend=str(entry.get("backend") or result.get("backend") or "pytorch"),
        grouping_seed=int(result.get("seed", default_seed)),
    )


def _test_data_path(entry: dict[str, Any], root: Path, manifest_path: Path) -> Path:
    """Return the job's test split: the manifest's path, else the same split in the layout under `root`.

    A study folder that was moved keeps working because the layout path is tried second.
    """
    recorded = Path(entry["test_data_path"])
    if recorded.is_file():
        return recorded
    dose, view = float(entry["dose"]), str(entry["view"])
    if view == layout.BASELINE_VIEW:
        fallback = layout.phase_c_file(layout.phase_c_root(root), dose, TEST_SPLIT)
    else:
        fallback = layout.phase_d_file(layout.phase_d_root(root), dose, view, TEST_SPLIT)
    if fallback.is_file():
        return fallback
    raise InputError(
        f"{recorded}: test split of {view} at dose {dose_label(dose)} not found "
        f"(listed in {manifest_path}; also looked for {fallback})"
    )


def reconstruct_all(config: StudyConfig, root: Path, include_baseline_view: bool = True) -> dict[str, Any]:
    """Run Phase F under the study `root` and write the reconstruction manifest.

    Returns:
        Summary: `manifest_path`, `jobs` (reconstructions attempted), `completed`,
        `failed` and `missing` counts.

    Raises:
        InputError: the training manifest is missing or malformed, a test split is
            missing, or there is nothing to reconstruct.
    """
    root = Path(root)
    started = time.perf_counter()
    training_manifest = read_training_manifest(root)
    jobs, missing = plan_reconstructions(config, root, training_manifest, include_baseline_view)
    if not jobs:
        raise InputError(
            f"{layout.phase_e_root(root) / layout.TRAINING_MANIFEST_NAME}: no reconstruction to run "
            f"({len(missing)} model(s) missing: trained views or bundles); run `fly64 train` first"
        )
    for item in missing:
        logger.warning("Phase F: %s %s/dose=%s missing: %s", item["model"], item["view"], dose_label(item["dose"]), item["reason"])
    logger.info("Phase F: %d reconstruction(s), %d missing", len(jobs), len(missing))

    for job in jobs:
        if job.output_path.exists():
            logger.warning("Phase F: overwriting %s", job.output_path)
            job.output_path.unlink()

    results: dict[ReconstructionJob, dict[str, Any]] = {}
    learned = [job for job in jobs if job.model in LEARNED_MODELS]
    for backend in sorted({job.backend for job in learned}):
        backend_jobs = [job for job in learned if job.backend == backend]
        results.update(run_inference_jobs(backend_jobs, config, root, backend))
    results.update(run_ptychi_jobs([job for job in jobs if job.model == MODEL_PTYCHI], config))

    entries = [{**job.describe(), **results[job]} for job in jobs]
    manifest_path = write_reconstruction_manifest(root, config, entries, missing)
    completed = sum(1 for entry in entries if entry["status"] == STATUS_COMPLETED)
    logger.info(
        "Phase F: %d of %d reconstruction(s) completed in %.1f s; manifest %s",
        completed, len(entries), time.perf_counter() - started, manifest_path,
    )
    return {
        "manifest_path": manifest_path,
        "jobs": len(entries),
        "completed": completed,
        "failed": len(entries) - completed,
        "missing": len(missing),
    }


def run_inference_jobs(
    jobs: list[ReconstructionJob], config: StudyConfig, root: Path, backend: str
) -> dict[ReconstructionJob, dict[str, Any]]:
    """Run learned-model jobs of one backend in one `fly64.inference.worker` process.

    Returns each job's result: `status` and, when completed, the worker's figures
    (`n_patterns`, `inference_seconds`, `patterns_per_second`, `bundle_sha256`, ...).
    """
    design = config.design()
    log_path = layout.phase_f_root(root) / f"inference_{backend}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec = {
        "batch_size": config.reconstruction.batch_size,
        "neighbor_count": design.neighbor_count,
        "threads": config.training.threads,
        "stitching": {"central_fraction": DEFAULT_CENTRAL_FRACTION, "min_weight": DEFAULT_MIN_WEIGHT},
        "tasks": [
            {
                "model": job.model,
                "bundle_path": str(job.bundle_path),
                "data_path": str(job.data_path),
                "output_path": str(job.output_path),
                "grouping_seed": job.grouping_seed,
                "metadata": {"dose": job.dose, "view": job.view, "split": job.split, "fly64_version": __version__},
            }
            for job in jobs
        ],
    }
    logger.info("Phase F: %d %s reconstruction(s) in the inference worker (log: %s)", len(jobs), backend, log_path)
    with tempfile.TemporaryDirectory(prefix="fly64-inference-") as scratch:
        spec_path = Path(scratch) / "spec.json"
        result_path = Path(scratch) / "result.json"
        spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
        with open(log_path, "w", encoding="utf-8") as log:
            completed = subprocess.run(
                [sys.executable, "-m", "fly64.inference.worker", str(spec_path), str(result_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False,
            )
        worker_results = []
        if result_path.is_file():
            try:
                worker_results = json.loads(result_path.read_text(encoding="utf-8")).get("tasks", [])
            except json.JSONDecodeError as error:
                logger.error("Phase F: unreadable inference worker result %s (%s)", result_path, error)

    results = {}
    for index, job in enumerate(jobs):
        if index < len(worker_results):
            result = dict(worker_results[index])
        else:
            result = {"status": STATUS_FAILED, "error": f"inference worker exited with code {completed.returncode} before this task"}
        result["log_path"] = str(log_path)
        if result["status"] == STATUS_COMPLETED:
            logger.info(
                "Phase F: %s: %d patterns, %.1f patterns/s", job.label, result["n_patterns"], result["patterns_per_second"] or 0.0
            )
        else:
            logger.error("Phase F: %s failed: %s (log: %s)", job.label, result.get("error"), log_path)
        results[job] = result
    return results


def run_ptychi_job(job: ReconstructionJob, config: StudyConfig) -> dict[str, Any]:
    """Reconstruct `job.data_path` with pty-chi in its own process and write the reconstruction NPZ.

    The written object carries a `coverage` computed like the learned models' (the
    stitching window splatted at the positions pty-chi used), so coverage maps compare.
    Returns the result with `status`, `ptychi_seconds`, `n_patterns` and the options.
    """
    settings = config.reconstruction
    log_path = job.output_path.with_suffix(".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("", encoding="utf-8")
    logger.info("Phase F: %s with LSQML, %d epochs (log: %s)", job.label, settings.ptychi_epochs, log_path)
    try:
        with tempfile.TemporaryDirectory(prefix="fly64-ptychi-") as scratch:
            scratch_path = Path(scratch)
            dataset = load_dataset(job.data_path)
            spec = WorkerSpec(
                dataset=str(_dataset_with_scale_factor(dataset, job.data_path, scratch_path).resolve()),
                output=str((scratch_path / "object.npz").resolve()),
                epochs=settings.ptychi_epochs,
                batch_size=settings.ptychi_batch_size,
                max_patterns=settings.ptychi_max_patterns,
                seed=config.design().training_seed,
                noise_model=PTYCHI_NOISE_MODEL,
                # `[training] threads`, as for the learned models' inference.
                threads=config.training.threads,
            )
            worker_result = run_worker(spec, scratch_path / "spec.json", scratch_path / "result.json", log_path=log_path)
            result = _write_ptychi_reconstruction(job, dataset.patch_size, Path(spec.output), worker_result)
    except (JobFailedError, InputError, OSError, ValueError, KeyError) as error:
        logger.error("Phase F: %s failed: %s (log: %s)", job.label, error, log_path)
        return {"status": STATUS_FAILED, "error": str(error), "log_path": str(log_path)}
    result["log_path"] = str(log_path)
    logger.info("Phase F: %s: %d patterns in %.1f s", job.label, result["n_patterns"], result["ptychi_seconds"])
    return result


def run_ptychi_jobs(jobs: list[ReconstructionJob], config: StudyConfig) -> dict[ReconstructionJob, dict[str, Any]]:
    """Run pty-chi once per distinct measurement in `jobs`, copying the result to later jobs of the same one."""
    results: dict[ReconstructionJob, dict[str, Any]] = {}
    source_by_measurement: dict[str, ReconstructionJob] = {}
    for job in jobs:
        measurement = measurement_digest(job.data_path)
        source = source_by_measurement.get(measurement)
        if source is not None and results[source]["status"] == STATUS_COMPLETED:
            results[job] = reuse_ptychi_reconstruction(source, results[source], job)
            continue
        results[job] = run_ptychi_job(job, config)
        if measurement:
            source_by_measurement[measurement] = job
    return results


def measurement_digest(data_path: Path) -> str:
    """Return the SHA-256 of what pty-chi reconstructs from: diffraction, positions, probe and object shape.

    Returns "" when the file cannot be read, so the caller runs pty-chi and reports the error.
    """
    try:
        dataset = load_dataset(data_path)
    except (InputError, OSError):
        return ""
    digest = hashlib.sha256()
    for array in (dataset.diffraction, dataset.positions_xy, dataset.probe):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(dataset.object.shape).encode())
    return digest.hexdigest()


def reuse_ptychi_reconstruction(
    source: ReconstructionJob, source_result: dict[str, Any], job: ReconstructionJob
) -> dict[str, Any]:
    """Write `source`'s pty-chi reconstruction as `job`'s, for the same measurement under another view.

    The arrays are copied unchanged; the provenance names `job`'s view and data file and
    records `reused_from`. Returns `job`'s result: `source_result` with `reused_from` and
    `job`'s `data_sha256`.
    """
    try:
        with np.load(source.output_path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        metadata = json.loads(str(arrays[KEY_METADATA][()]))
        parameters = {**metadata.get("parameters", {}), "view": job.view, "split": job.split, "reused_from": str(source.output_path)}
        metadata = provenance(PROVENANCE_STEP, parameters, inputs=[job.data_path])
        arrays[KEY_METADATA] = np.array(json.dumps(metadata, sort_keys=True))
        save_npz(job.output_path, arrays)
    except (OSError, ValueError, KeyError) as error:
        logger.error("Phase F: %s: cannot copy %s (%s)", job.label, source.output_path, error)
        return {"status": STATUS_FAILED, "error": f"cannot copy {source.output_path}: {error}"}
    logger.info("Phase F: %s has the same measurement as %s; reconstruction copied", job.label, source.label)
    return {
        **source_result,
        "reused_from": str(source.output_path),
        "data_sha256": metadata["inputs"][0]["sha256"],
    }


def _dataset_with_scale_factor(dataset: Dataset, data_path: Path, scratch: Path) -> Path:
    """Return a dataset path whose provenance carries the dose scale factor at `parameters.scale_factor`.

    Phase C records the factor there. Phase D keeps Phase C's provenance under
    `input_metadata`, where the classical worker does not look (it would estimate the
    factor assuming |object| = 1, which misjudges the amplitude). A Phase D file is
    therefore copied to `scratch` with the factor lifted into `parameters`.
    """
    parameters = dataset.metadata.get("parameters")
    if isinstance(parameters, dict) and "scale_factor" in parameters:
        return data_path
    inherited = (dataset.metadata.get("input_metadata") or {}).get("parameters") or {}
    if "scale_factor" not in inherited:
        return data_path
    metadata = {**dataset.metadata, "parameters": {**(parameters or {}), "scale_factor": inherited["scale_factor"]}}
    copy_path = scratch / data_path.name
    save_dataset(copy_path, dataclasses.replace(dataset, metadata=metadata))
    return copy_path


def _write_ptychi_reconstruction(
    job: ReconstructionJob, patch_size: int, worker_output: Path, worker_result: dict[str, Any]
) -> dict[str, Any]:
    """Copy pty-chi's object into the Phase F layout, adding the coverage map and Phase F provenance."""
    with np.load(worker_output, allow_pickle=False) as archive:
        reconstructed = archive["object"]
        xcoords, ycoords = archive[KEY_X], archive[KEY_Y]
        worker_metadata = json.loads(str(archive[KEY_METADATA][()]))

    stitcher = PatchStitcher(reconstructed.shape, patch_size)
    positions_xy = np.stack([xcoords, ycoords], axis=1)
    ones = np.ones((COVERAGE_CHUNK_PATTERNS, patch_size, patch_size), dtype=np.complex64)
    for start in range(0, positions_xy.shape[0], COVERAGE_CHUNK_PATTERNS):
        chunk_positions = positions_xy[start : start + COVERAGE_CHUNK_PATTERNS]
        stitcher.add(ones[: chunk_positions.shape[0]], chunk_positions)

    # LSQML's own time; the reconstruct step also counts importing torch and pty-chi.
    seconds = float(worker_result["timings_s"].get("lsqml", worker_result["timings_s"]["reconstruct"]))
    figures = {
        "model": job.model,
        "n_patterns": int(worker_result["n_patterns"]),
        "n_patterns_available": int(worker_result["n_patterns_available"]),
        "ptychi_seconds": seconds,
        "ptychi_process_seconds": float(worker_result["timings_s"].get("total", seconds)),
        "patterns_per_second": worker_result["n_patterns"] / seconds if seconds > 0 else None,
        "seconds_per_pattern": seconds / worker_result["n_patterns"],
        "ptychi_options": worker_result["options"],
        "coverage": "stitching window splatted at the positions pty-chi used",
    }
    parameters = {"dose": job.dose, "view": job.view, "split": job.split, **figures, "classical_metadata": worker_metadata}
    metadata = provenance(PROVENANCE_STEP, parameters, inputs=[job.data_path])
    save_npz(
        job.output_path,
        {
            "object": reconstructed.astype(np.complex64),
            KEY_X: xcoords.astype(np.float64),
            KEY_Y: ycoords.astype(np.float64),
            "coverage": stitcher.result().coverage,
            KEY_METADATA: np.array(json.dumps(metadata, sort_keys=True)),
        },
    )
    return {"status": STATUS_COMPLETED, **figures, "data_sha256": metadata["inputs"][0]["sha256"]}


def write_reconstruction_manifest(
    root: Path, config: StudyConfig, entries: list[dict[str, Any]], missing: list[dict[str, Any]]
) -> Path:
    """Write `<root>/phase_f/reconstruction_manifest.json` and return its path."""
    path = reconstruction_manifest_path(root)
    manifest = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "study_root": str(root),
        "fly64_version": __version__,
        "reconstruction": config.reconstruction.model_dump(),
        "ptychi_noise_model": PTYCHI_NOISE_MODEL,
        "stitching": {"central_fraction": DEFAULT_CENTRAL_FRACTION, "min_weight": DEFAULT_MIN_WEIGHT},
        "jobs": entries,
        "missing": missing,
        "completed_count": sum(1 for entry in entries if entry["status"] == STATUS_COMPLETED),
        "failed_count": sum(1 for entry in entries if entry["status"] != STATUS_COMPLETED),
        "missing_count": len(missing),
    }
    write_json(path, manifest)
    return path
