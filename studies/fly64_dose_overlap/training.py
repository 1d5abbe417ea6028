"""Phase E: build the training jobs of the study, run each in its own process, write the manifest.

Jobs per dose: `baseline` (gridsize 1, Phase C data, supervised baseline model) and one
PINN job per overlap view (the largest gridsize, Phase D data). A view whose Phase D
files are missing is skipped with its reason and recorded in `skip_summary.json`.

Each job runs `python -m fly64.backends.worker` in a subprocess, so the command-line
process never imports a deep-learning framework, one sweep can mix backends, and a crash
in one job cannot take the others down. The job's log goes to `train.log` in its folder
and its result to `result.json`; the manifest is assembled from those results.

Run as `python -m studies.fly64_dose_overlap.training` for the `fly64 train` command.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from fly64 import __version__
from fly64.atomic import sha256_file, write_json
from fly64.errors import InputError
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.config import BACKENDS, StudyConfig
from studies.fly64_dose_overlap.design import StudyDesign, dose_label
from studies.fly64_dose_overlap.executors import ExecutorSettings, run_payloads
from studies.fly64_dose_overlap.progress import SweepProgress

logger = logging.getLogger(__name__)

MODEL_KIND_BASELINE = "baseline"
MODEL_KIND_PINN = "pinn"


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    """One model to train: a dose, a view and a gridsize, with its data and artifact paths."""

    dose: float
    view: str
    gridsize: int
    model_kind: str
    backend: str
    train_data_path: Path
    test_data_path: Path
    artifact_dir: Path

    @property
    def bundle_path(self) -> Path:
        return self.artifact_dir / layout.BUNDLE_NAME

    @property
    def log_path(self) -> Path:
        return self.artifact_dir / layout.TRAIN_LOG_NAME

    @property
    def result_path(self) -> Path:
        return self.artifact_dir / layout.JOB_RESULT_NAME

    @property
    def label(self) -> str:
        """Label used in result lines, for example `dense/dose=1e+05`."""
        return f"{self.view}/dose={dose_label(self.dose)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dose": self.dose,
            "view": self.view,
            "gridsize": self.gridsize,
            "model_kind": self.model_kind,
            "backend": self.backend,
            "train_data_path": str(self.train_data_path),
            "test_data_path": str(self.test_data_path),
            "artifact_dir": str(self.artifact_dir),
        }

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> "TrainingJob":
        return cls(
            dose=float(document["dose"]),
            view=str(document["view"]),
            gridsize=int(document["gridsize"]),
            model_kind=str(document["model_kind"]),
            backend=str(document["backend"]),
            train_data_path=Path(document["train_data_path"]),
            test_data_path=Path(document["test_data_path"]),
            artifact_dir=Path(document["artifact_dir"]),
        )

    def manifest_entry(self, result: dict[str, Any]) -> dict[str, Any]:
        return {
            "dose": self.dose,
            "view": self.view,
            "gridsize": self.gridsize,
            "model_kind": self.model_kind,
            "backend": self.backend,
            "train_data_path": str(self.train_data_path),
            "test_data_path": str(self.test_data_path),
            "log_path": str(self.log_path),
            "result": result,
        }


@dataclasses.dataclass(frozen=True)
class SkippedView:
    dose: float
    view: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"dose": self.dose, "view": self.view, "reason": self.reason}


def build_training_jobs(
    design: StudyDesign,
    phase_c_root: Path,
    phase_d_root: Path,
    artifact_root: Path,
    backend: str = "pytorch",
    doses: Iterable[float] | None = None,
    views: Iterable[str] | None = None,
    gridsizes: Iterable[int] | None = None,
) -> tuple[list[TrainingJob], list[SkippedView]]:
    """Enumerate the jobs of the design that match every given filter (filters combine with AND).

    Returns the jobs in order (dose, then baseline before the views) and the views skipped
    because their Phase D files are missing. A missing Phase C file of a matching baseline
    job raises `InputError`, since Phase C is the input of the whole phase.
    """
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend!r} is not known; expected one of {', '.join(BACKENDS)}")
    known_views = (layout.BASELINE_VIEW, *design.overlap_views)
    view_filter = None if views is None else set(views)
    if view_filter is not None:
        unknown = sorted(view_filter - set(known_views))
        if unknown:
            raise InputError(f"--view {', '.join(unknown)} is not known; expected one of {', '.join(known_views)}")
    dose_filter = None if doses is None else [float(dose) for dose in doses]
    gridsize_filter = None if gridsizes is None else {int(size) for size in gridsizes}

    baseline_gridsize = min(design.gridsizes)
    view_gridsize = max(design.gridsizes)
    jobs: list[TrainingJob] = []
    skipped: list[SkippedView] = []
    for dose in design.dose_list:
        if dose_filter is not None and not any(_same_dose(dose, wanted) for wanted in dose_filter):
            continue
        candidates = [(layout.BASELINE_VIEW, baseline_gridsize, MODEL_KIND_BASELINE)]
        candidates += [(view, view_gridsize, MODEL_KIND_PINN) for view in design.overlap_views]
        for view, gridsize, model_kind in candidates:
            if view_filter is not None and view not in view_filter:
                continue
            if gridsize_filter is not None and gridsize not in gridsize_filter:
                continue
            if view == layout.BASELINE_VIEW:
                train_path = layout.phase_c_file(phase_c_root, dose, "train")
                test_path = layout.phase_c_file(phase_c_root, dose, "test")
                for path in (train_path, test_path):
                    if not path.is_file():
                        raise InputError(f"{path}: Phase C file not found; run `fly64 generate` first")
            else:
                train_path = layout.phase_d_file(phase_d_root, dose, view, "train")
                test_path = layout.phase_d_file(phase_d_root, dose, view, "test")
                missing = [str(path) for path in (train_path, test_path) if not path.is_file()]
                if missing:
                    reason = f"Phase D file(s) not found: {', '.join(missing)}"
                    logger.warning("skipping %s at dose %s: %s", view, dose_label(dose), reason)
                    skipped.append(SkippedView(dose=dose, view=view, reason=reason))
                    continue
            jobs.append(
                TrainingJob(
                    dose=dose,
                    view=view,
                    gridsize=gridsize,
                    model_kind=model_kind,
                    backend=backend,
                    train_data_path=train_path,
                    test_data_path=test_path,
                    artifact_dir=layout.job_dir(artifact_root, dose, view, gridsize),
                )
            )

    if dose_filter is not None:
        unknown_doses = [dose for dose in dose_filter if not any(_same_dose(dose, known) for known in design.dose_list)]
        if unknown_doses:
            raise InputError(
                f"--dose {', '.join(f'{dose:g}' for dose in unknown_doses)} is not in the design's dose_list "
                f"({', '.join(f'{dose:g}' for dose in design.dose_list)})"
            )
    return jobs, skipped


def _same_dose(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def worker_spec(job: TrainingJob, config: StudyConfig, threads: int = 0) -> dict[str, Any]:
    """Return the JSON spec that `fly64.backends.worker` runs for `job`.

    `threads` > 0 overrides the config's CPU threads (the executor shares the cores).
    """
    design = config.design()
    training = config.training.model_dump(exclude={"backend"})
    if threads > 0 and training["threads"] == 0:
        training["threads"] = threads
    return {
        "backend": job.backend,
        "model_kind": job.model_kind,
        "gridsize": job.gridsize,
        "neighbor_count": design.neighbor_count,
        "seed": design.training_seed,
        "train_data_path": str(job.train_data_path),
        "test_data_path": str(job.test_data_path),
        "bundle_path": str(job.bundle_path),
        "training": training,
        "provenance": {
            "dose": job.dose,
            "view": job.view,
            "gridsize": job.gridsize,
            "model_kind": job.model_kind,
            "train_data_sha256": sha256_file(job.train_data_path),
            "test_data_sha256": sha256_file(job.test_data_path),
            "rng_seeds": dict(design.rng_seeds),
            "fly64_version": __version__,
        },
    }


def inputs_digest(spec: dict[str, Any]) -> str:
    """Return a SHA-256 over everything that determines a job's bundle, paths excluded.

    It covers the data files' SHA-256s, the model and training settings, the seeds, the
    backend and the fly64 version, so a bundle is reused only when all of them match.
    """
    relevant = {key: value for key, value in spec.items() if not key.endswith("_path")}
    encoded = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def up_to_date_result(job: TrainingJob, spec: dict[str, Any]) -> dict[str, Any] | None:
    """Return the recorded result of `job` when its bundle can be reused, else None.

    Reuse needs a completed `result.json` whose inputs digest equals the current one and a
    bundle whose SHA-256 equals the recorded one.
    """
    if not (job.result_path.is_file() and job.bundle_path.is_file()):
        return None
    try:
        recorded = json.loads(job.result_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if recorded.get("status") != "completed" or recorded.get("inputs_sha256") != inputs_digest(spec):
        return None
    if sha256_file(job.bundle_path) != recorded.get("bundle_sha256"):
        logger.warning("bundle %s differs from its recorded SHA-256; retraining", job.bundle_path)
        return None
    return recorded


def execute_training_job(
    job: TrainingJob,
    config: StudyConfig,
    threads: int = 0,
    on_line: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train `job` with its backend in a subprocess and return its result.

    The worker writes the bundle; this function adds the bundle's path (relative to the
    job folder), SHA-256 and size and the inputs digest, and writes `result.json`. A job
    that fails returns `status: "failed"` with the error and its log path instead of
    raising. `on_line` receives each line the worker logs.
    """
    if job.backend not in BACKENDS:
        raise InputError(f"backend {job.backend!r} is not known; expected one of {', '.join(BACKENDS)}")
    job.artifact_dir.mkdir(parents=True, exist_ok=True)
    spec = worker_spec(job, config, threads)
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="fly64-job-") as scratch:
        spec_path = Path(scratch) / "spec.json"
        worker_result_path = Path(scratch) / "result.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        command = [sys.executable, "-m", "fly64.backends.worker", str(spec_path), str(worker_result_path)]
        return_code = _run_logged(command, job.log_path, on_line)
        result = _read_worker_result(worker_result_path, return_code, job)

    result["wall_seconds"] = round(time.perf_counter() - started, 3)
    result["log_path"] = str(job.log_path)
    result["inputs_sha256"] = inputs_digest(spec)
    if result.get("status") == "completed":
        if not job.bundle_path.is_file():
            result = {"status": "failed", "error": f"worker reported success but {job.bundle_path} is missing"}
        else:
            result["bundle_path"] = job.bundle_path.name
            result["bundle_sha256"] = sha256_file(job.bundle_path)
            result["bundle_size_bytes"] = job.bundle_path.stat().st_size
    try:
        write_json(job.result_path, result)
    except OSError as error:
        logger.error("job %s: cannot write %s (%s)", job.label, job.result_path, error)
        result = {**result, "status": "failed", "error": f"cannot write {job.result_path}: {error}"}
    return result


def run_job_payload(job_document: dict[str, Any], config_document: dict[str, Any], threads: int = 0,
                    force: bool = False) -> dict[str, Any]:
    """Run one job from plain data; the function every executor calls, locally or remotely."""
    job = TrainingJob.from_dict(job_document)
    config = StudyConfig.model_validate(config_document)
    if not force:
        recorded = up_to_date_result(job, worker_spec(job, config, threads))
        if recorded is not None:
            return {**recorded, "reused": True}
    return execute_training_job(job, config, threads)


def _run_logged(command: list[str], log_path: Path, on_line: Callable[[str], None] | None) -> int:
    """Run `command`, writing its output line by line to `log_path` and passing each line to `on_line`."""
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=environment,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            log.flush()
            if on_line is not None:
                on_line(line)
        return process.wait()


def _read_worker_result(path: Path, return_code: int, job: TrainingJob) -> dict[str, Any]:
    if path.is_file():
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            result = {"status": "failed", "error": f"unreadable worker result ({error})"}
    else:
        result = {"status": "failed", "error": f"worker exited with code {return_code} and wrote no result"}
    if return_code != 0 and result.get("status") == "completed":
        result = {"status": "failed", "error": f"worker exited with code {return_code}"}
    if result.get("status") != "completed":
        logger.error("job %s failed: %s (log: %s)", job.label, result.get("error"), job.log_path)
    return result


def run_training_job(job: TrainingJob, config: StudyConfig) -> dict[str, Any]:
    """Run one job in a subprocess; the same as `execute_training_job` with default settings."""
    return execute_training_job(job, config)


def result_lines(job: TrainingJob, result: dict[str, Any]) -> list[str]:
    """Return the three stdout lines scripts read for a finished job."""
    return [
        f"    → Bundle [{job.label}]: {result['bundle_path']}",
        f"    → SHA256 [{job.label}]: {result['bundle_sha256']}",
        f"    → Size [{job.label}]: {result['bundle_size_bytes']} bytes",
    ]


def write_training_manifest(
    artifact_root: Path,
    phase_c_root: Path,
    phase_d_root: Path,
    entries: list[dict[str, Any]],
    skipped: list[SkippedView],
    config: StudyConfig,
    backend: str,
) -> Path:
    """Write `skip_summary.json` and `training_manifest.json` under `artifact_root`; return the manifest path."""
    artifact_root.mkdir(parents=True, exist_ok=True)
    skip_summary_path = artifact_root / layout.SKIP_SUMMARY_NAME
    write_json(
        skip_summary_path,
        {
            "skipped_views": [view.to_dict() for view in skipped],
            "skipped_count": len(skipped),
        },
    )
    manifest = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "phase_c_root": str(phase_c_root),
        "phase_d_root": str(phase_d_root),
        "artifact_root": str(artifact_root),
        "backend": backend,
        "fly64_version": __version__,
        "design": config.design().to_dict(),
        "training": config.training.model_dump(),
        "jobs": entries,
        "skipped_views": [view.to_dict() for view in skipped],
        "skipped_count": len(skipped),
        "skip_summary_path": str(skip_summary_path),
    }
    manifest_path = artifact_root / layout.TRAINING_MANIFEST_NAME
    write_json(manifest_path, manifest)
    return manifest_path


def train_all(
    config: StudyConfig,
    phase_c_root: Path,
    phase_d_root: Path,
    artifact_root: Path,
    backend: str | None = None,
    doses: Iterable[float] | None = None,
    views: Iterable[str] | None = None,
    gridsizes: Iterable[int] | None = None,
    dry_run: bool = False,
    emit: Callable[[str], None] = print,
    executor: ExecutorSettings | None = None,
    force: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run Phase E: build the jobs, train each, print result lines through `emit`, write the manifest.

    Jobs whose bundle is up to date (same inputs, same SHA-256) are reused unless `force`.
    Returns a summary with the manifest path and the number of completed, reused, failed
    and skipped jobs. Raises `InputError` when the filters match no job.
    """
    backend = backend or config.training.backend
    executor = executor or ExecutorSettings()
    design = config.design()
    jobs, skipped = build_training_jobs(
        design, phase_c_root, phase_d_root, artifact_root, backend, doses, views, gridsizes
    )
    if not jobs:
        if skipped:
            write_training_manifest(artifact_root, phase_c_root, phase_d_root, [], skipped, config, backend)
            raise InputError(
                f"no job to train: every matching view is missing its Phase D files "
                f"(see {artifact_root / layout.SKIP_SUMMARY_NAME}); run `fly64 overlap` first"
            )
        raise InputError("the filters --dose, --view and --gridsize match no job of the design")

    logger.info(
        "Phase E: %d job(s) with backend %s on the %s executor, %d view(s) skipped",
        len(jobs), backend, executor.kind, len(skipped),
    )
    if dry_run:
        for job in jobs:
            job.artifact_dir.mkdir(parents=True, exist_ok=True)
        entries = [job.manifest_entry({"status": "dry_run"}) for job in jobs]
        manifest_path = write_training_manifest(artifact_root, phase_c_root, phase_d_root, entries, skipped, config, backend)
        return {"manifest_path": manifest_path, "completed": 0, "reused": 0, "failed": 0,
                "skipped": len(skipped), "jobs": len(jobs)}

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    # Jobs keep the config's thread count whatever the executor, so every executor trains
    # the same bundles. The executor's share of cores only sizes resource requests.
    threads = 0
    config_document = config.model_dump()
    with SweepProgress([job.label for job in jobs], quiet=quiet) as progress:
        payloads = [(job.to_dict(), config_document) for job in jobs]
        run_one = _local_runner(jobs, threads, force, progress) if executor.kind == "local" else _RemoteRunner(threads, force)
        for job in jobs:
            if executor.kind != "local":
                progress.set_state(job.label, "running")
        for index, result in run_payloads(executor, payloads, run_one):
            job = jobs[index]
            results[index] = result
            if result.get("status") == "completed":
                for line in result_lines(job, result):
                    emit(line)
                state = "skipped" if result.get("reused") else "done"
                progress.set_state(job.label, state, _summary_text(result))
            else:
                progress.set_state(job.label, "failed", str(result.get("error")))

    entries = [job.manifest_entry(result or {"status": "failed", "error": "no result"}) for job, result in zip(jobs, results)]
    manifest_path = write_training_manifest(artifact_root, phase_c_root, phase_d_root, entries, skipped, config, backend)
    logger.info("training manifest: %s", manifest_path)
    statuses = [entry["result"].get("status") for entry in entries]
    return {
        "manifest_path": manifest_path,
        "completed": statuses.count("completed"),
        "reused": sum(1 for entry in entries if entry["result"].get("reused")),
        "failed": len(statuses) - statuses.count("completed"),
        "skipped": len(skipped),
        "jobs": len(jobs),
    }


def _summary_text(result: dict[str, Any]) -> str:
    if result.get("reused"):
        return "bundle up to date, reused"
    return (
        f"{result.get('wall_seconds', float('nan')):.1f} s, loss {result.get('final_train_loss', float('nan')):.4g}, "
        f"amplitude r {_number(result.get('amplitude_correlation')):.3f}, phase r {_number(result.get('phase_correlation')):.3f}"
    )


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _local_runner(jobs: list[TrainingJob], threads: int, force: bool, progress: SweepProgress):
    """Return the run function of the local executor: it reports states and worker lines to `progress`."""
    labels = {str(job.artifact_dir): job.label for job in jobs}
    prefix_width = max(len(label) for label in labels.values()) + 3

    def run_one(job_document: dict[str, Any], config_document: dict[str, Any]) -> dict[str, Any]:
        job = TrainingJob.from_dict(job_document)
        config = StudyConfig.model_validate(config_document)
        label = labels[str(job.artifact_dir)]
        if not force:
            recorded = up_to_date_result(job, worker_spec(job, config, threads))
            if recorded is not None:
                return {**recorded, "reused": True}
        progress.set_state(label, "running")

        def on_line(line: str) -> None:
            progress.worker_line(label, line)
            if progress.relays_worker_output:
                sys.stderr.write(f"[{label}]".ljust(prefix_width) + line)

        return execute_training_job(job, config, threads, on_line)

    return run_one


@dataclasses.dataclass(frozen=True)
class _RemoteRunner:
    """A picklable run function for Ray and submitit (no progress callbacks across processes)."""

    threads: int
    force: bool

    def __call__(self, job_document: dict[str, Any], config_document: dict[str, Any]) -> dict[str, Any]:
        return run_job_payload(job_document, config_document, self.threads, self.force)


if __name__ == "__main__":
    from studies.fly64_dose_overlap.cli import train_command

    train_command(prog_name="python -m studies.fly64_dose_overlap.training")
