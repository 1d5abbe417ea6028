"""Executors that run Phase E jobs: serially, in a local pool, as Ray tasks, or through Slurm.

Every executor calls the same function, `run_job_payload`, on plain data (a job and a
config as dicts), so a job runs identically wherever it lands. The job trains in its own
subprocess and writes its bundle, log and `result.json` into the shared study root. The
parent process only collects the returned results and assembles the manifest.

- `local` (default): `jobs` worker threads, each waiting on one job subprocess.
- `ray`: one Ray task per job with its CPU and GPU needs; `address` joins an existing
  cluster, otherwise a local one is started.
- `slurm`: one submitit job per training job with partition, time limit and GPUs; the
  cluster `local` runs the same path through submitit's local executor (for tests and
  machines without Slurm).
"""

import concurrent.futures
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fly64.errors import InputError

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local")


@dataclasses.dataclass(frozen=True)
class ExecutorSettings:
    """Dispatch settings of Phase E jobs.

    Attributes:
        kind: `local`, `ray` or `slurm`.
        jobs: local executor: jobs run at once.
        cpus_per_job: CPU threads each job uses and requests (Ray, Slurm); 0 derives it
            from the machine's cores and `jobs`.
        gpus_per_job: GPUs each job requests (Ray, Slurm).
        address: Ray cluster address; empty starts a local cluster.
        slurm_partition: Slurm partition; empty uses the cluster default.
        slurm_time_min: Slurm time limit per job, in minutes.
        slurm_cluster: `slurm`, or `local` for submitit's local executor.
        work_folder: where submitit keeps its job files.
    """

    kind: str = "local"
    jobs: int = 1
    cpus_per_job: int = 0
    gpus_per_job: float = 0.0
    address: str = ""
    slurm_partition: str = ""
    slurm_time_min: int = 60
    slurm_cluster: str = "slurm"
    work_folder: Path | None = None

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise InputError(f"--executor {self.kind!r} is not known; expected one of {', '.join(EXECUTORS)}")
        if self.jobs < 1:
            raise InputError(f"--jobs {self.jobs} is invalid; expected at least 1")
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise InputError(f"--slurm-cluster {self.slurm_cluster!r} is not known; expected one of {', '.join(SLURM_CLUSTERS)}")

    def threads_per_job(self) -> int:
        """CPU threads for each job: `cpus_per_job`, else the cores shared among the local pool's jobs."""
        if self.cpus_per_job > 0:
            return self.cpus_per_job
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        parallel = self.jobs if self.kind == "local" else 1
        return max(1, cores // parallel)


Payload = tuple[dict[str, Any], dict[str, Any]]


def run_payloads(
    settings: ExecutorSettings,
    payloads: list[Payload],
    run_one: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]],
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Run every payload with `run_one` and yield `(index, result)` as jobs finish.

    An exception inside one job becomes that job's failed result; the others still run.
    """
    if not payloads:
        return
    if settings.kind == "local":
        yield from _run_local(settings, payloads, run_one)
    elif settings.kind == "ray":
        yield from _run_ray(settings, payloads, run_one)
    else:
        yield from _run_submitit(settings, payloads, run_one)


def _call(run_one, job: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Call `run_one`; Ray turns only plain functions into tasks, and `run_one` may be a callable object."""
    return run_one(job, config)


def _failure(error: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(error).__name__}: {error}", "error_type": type(error).__name__}


def _run_local(settings, payloads, run_one) -> Iterator[tuple[int, dict[str, Any]]]:
    if settings.jobs == 1:
        for index, (job, config) in enumerate(payloads):
            try:
                yield index, run_one(job, config)
            except InputError:
                raise
            except Exception as error:  # a job's crash must not stop the sweep
                logger.exception("job %d raised", index)
                yield index, _failure(error)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=settings.jobs, thread_name_prefix="fly64-job") as pool:
        futures = {pool.submit(run_one, job, config): index for index, (job, config) in enumerate(payloads)}
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            try:
                yield index, future.result()
            except Exception as error:
                logger.error("job %d raised: %s", index, error)
                yield index, _failure(error)


def _run_ray(settings, payloads, run_one) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("--executor ray needs the `ray` package; install fly64 with the `cluster` extra") from None

    started_here = False
    if not ray.is_initialized():
        if settings.address:
            ray.init(address=settings.address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(
                num_cpus=max(settings.threads_per_job(), os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        started_here = True
    try:
        remote = ray.remote(num_cpus=settings.threads_per_job(), num_gpus=settings.gpus_per_job, max_retries=0)(_call)
        pending = {remote.remote(run_one, job, config): index for index, (job, config) in enumerate(payloads)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for reference in done:
                index = pending.pop(reference)
                try:
                    yield index, ray.get(reference)
                except Exception as error:
                    logger.error("Ray task of job %d failed: %s", index, error)
                    yield index, _failure(error)
    finally:
        if started_here:
            ray.shutdown()


def _run_submitit(settings, payloads, run_one) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import submitit
    except ModuleNotFoundError:
        raise InputError("--executor slurm needs the `submitit` package; install fly64 with the `cluster` extra") from None

    folder = Path(settings.work_folder or Path.cwd() / ".submitit") / "%j"
    if settings.slurm_cluster == "local":
        executor = submitit.AutoExecutor(folder=folder, cluster="local")
        executor.update_parameters(timeout_min=settings.slurm_time_min, cpus_per_task=settings.threads_per_job())
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        parameters: dict[str, Any] = {
            "timeout_min": settings.slurm_time_min,
            "cpus_per_task": settings.threads_per_job(),
            "tasks_per_node": 1,
            "nodes": 1,
        }
        if settings.gpus_per_job:
            parameters["gpus_per_node"] = int(settings.gpus_per_job)
        if settings.slurm_partition:
            parameters["slurm_partition"] = settings.slurm_partition
        executor.update_parameters(**parameters)

    submitted = [(index, executor.submit(run_one, job, config)) for index, (job, config) in enumerate(payloads)]
    for index, job in submitted:
        logger.info("submitted job %d as %s job %s", index, settings.slurm_cluster, job.job_id)
    remaining = dict(submitted)
    while remaining:
        for index, job in list(remaining.items()):
            if not job.done():
                continue
            del remaining[index]
            try:
                yield index, job.result()
            except Exception as error:
                logger.error("submitit job %d failed: %s", index, error)
                yield index, _failure(error)
        if remaining:
            time.sleep(0.5)
