"""The `fly64` command line: one command per phase, and `run` for the whole sweep.

Result lines go to stdout; logs and progress go to stderr. Invalid input ends with a
one-line message naming the file, key or option, and exit code 2. A sweep with failed
jobs ends with exit code 1.
"""

import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from fly64 import __version__
from fly64.errors import InputError
from studies.fly64_dose_overlap import layout
from studies.fly64_dose_overlap.config import BACKENDS, StudyConfig, load_config
from studies.fly64_dose_overlap.executors import EXECUTORS, SLURM_CLUSTERS, ExecutorSettings
from studies.fly64_dose_overlap.lock import study_lock

logger = logging.getLogger("fly64.cli")

EXIT_FAILED_JOBS = 1
EXIT_BAD_INPUT = 2
RUN_STAGES = ("generate", "overlap", "train", "reconstruct", "compare", "report")


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _handle_input_errors(function: Callable) -> Callable:
    """Turn `InputError` into a one-line message on stderr and exit code 2."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except InputError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Study config (TOML). Default: the built-in full design (N = 128, doses 1e3, 1e4, 1e5).",
)
root_option = click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Study root; sets every phase folder to the default layout under it (data/phase_c, data/phase_d, phase_e, ...).",
)
probe_option = click.option(
    "--probe",
    "probe_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="NPZ file with a complex `probeGuess` array (zero-padded to N). Default: the embedded modelled focusing probe.",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Deep-learning backend for training. Default: the config's [training] backend (pytorch).",
)
verbosity_options = [
    click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr."),
    click.option("-q", "--quiet", is_flag=True, help="Log only warnings and errors to stderr."),
]


def _with_verbosity(function: Callable) -> Callable:
    for option in reversed(verbosity_options):
        function = option(function)
    return function


def _require(value: Path | None, option: str, root_hint: str) -> Path:
    if value is None:
        raise click.UsageError(f"{option} is required unless --root is given ({root_hint})")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fly64")
def main() -> None:
    """Run the fly64 dose/overlap ptychography study: simulate, derive overlap views, train, compare.

    Phases: `generate` (C, simulation), `overlap` (D, dense and sparse views), `train`
    (E, models and bundles), `reconstruct` (F, held-out reconstructions and the pty-chi
    reference), `compare` (G, metrics) and `report`. `run` does them in order under one
    study root, and `verify` checks bundles, NPZ files and study roots.
    """


@main.command("generate")
@root_option
@click.option("--phase-c-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder of Phase C. Default with --root: ROOT/data/phase_c.")
@config_option
@probe_option
@_with_verbosity
@_handle_input_errors
def generate_command(root, phase_c_root, config_path, probe_path, verbose, quiet) -> None:
    """Phase C: simulate the scan at every dose and write patched_{train,test}.npz per dose."""
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    phase_c = phase_c_root or (layout.phase_c_root(root) if root else None)
    phase_c = _require(phase_c, "--phase-c-root", "ROOT/data/phase_c")
    _check_probe(probe_path, config)
    with study_lock(root or phase_c):
        _run_generate(config, phase_c, probe_path)
    click.echo(f"Phase C data: {phase_c}")


@main.command("overlap")
@root_option
@click.option("--phase-c-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Input folder (Phase C). Default with --root: ROOT/data/phase_c.")
@click.option("--phase-d-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder of Phase D. Default with --root: ROOT/data/phase_d.")
@config_option
@_with_verbosity
@_handle_input_errors
def overlap_command(root, phase_c_root, phase_d_root, config_path, verbose, quiet) -> None:
    """Phase D: derive the dense and sparse overlap views with their overlap metrics."""
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    phase_c = _require(phase_c_root or (layout.phase_c_root(root) if root else None), "--phase-c-root", "ROOT/data/phase_c")
    phase_d = _require(phase_d_root or (layout.phase_d_root(root) if root else None), "--phase-d-root", "ROOT/data/phase_d")
    with study_lock(root or phase_d):
        _run_overlap(config, phase_c, phase_d)
    click.echo(f"Phase D views: {phase_d}")


def _executor_options(function: Callable) -> Callable:
    options = [
        click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
                     help="Where training jobs run: local worker processes, Ray tasks, or Slurm jobs through submitit."),
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Local executor: training jobs run at once, each in its own process."),
        click.option("--address", type=str, default="", help="Ray executor: address of an existing cluster. Default: start a local one."),
        click.option("--cpus-per-job", type=click.IntRange(min=0), default=0, show_default=True,
                     help="CPUs each job requests from Ray or Slurm; 0 = the machine's cores divided by --jobs."),
        click.option("--gpus-per-job", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="GPUs each job requests from Ray or Slurm."),
        click.option("--slurm-partition", type=str, default="", help="Slurm executor: partition. Default: the cluster's default."),
        click.option("--slurm-time-min", type=click.IntRange(min=1), default=60, show_default=True,
                     help="Slurm executor: time limit per job, in minutes."),
        click.option("--slurm-cluster", type=click.Choice(SLURM_CLUSTERS), default="slurm", show_default=True,
                     help="Slurm executor: `slurm`, or `local` to run the same path with submitit's local executor."),
        click.option("--force", is_flag=True, help="Retrain jobs whose bundle is up to date (same inputs and SHA-256)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _executor_settings(artifact_root: Path, executor, jobs, address, cpus_per_job, gpus_per_job, slurm_partition,
                       slurm_time_min, slurm_cluster) -> ExecutorSettings:
    return ExecutorSettings(
        kind=executor, jobs=jobs, cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, address=address,
        slurm_partition=slurm_partition, slurm_time_min=slurm_time_min, slurm_cluster=slurm_cluster,
        work_folder=Path(artifact_root) / ".submitit",
    )


def _train_options(function: Callable) -> Callable:
    options = [
        root_option,
        click.option("--phase-c-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Phase C folder (baseline data). Default with --root: ROOT/data/phase_c."),
        click.option("--phase-d-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Phase D folder (view data). Default with --root: ROOT/data/phase_d."),
        click.option("--artifact-root", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output folder of Phase E (bundles, logs, manifest). Default with --root: ROOT/phase_e."),
        click.option("--dose", "doses", type=float, multiple=True,
                     help="Train only this dose, in photons per pattern (for example 1e5). Repeatable. Default: every dose."),
        click.option("--view", "views", type=str, multiple=True,
                     help="Train only this view: baseline, or an overlap view of the design (dense, sparse). Repeatable. Default: all."),
        click.option("--gridsize", "gridsizes", type=int, multiple=True,
                     help="Train only jobs of this gridsize (1 or 2). Repeatable. Default: all."),
        backend_option,
        click.option("--dry-run", is_flag=True, help="Write the manifest and job folders without training."),
        config_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


@main.command("train")
@_train_options
@_executor_options
@_with_verbosity
@_handle_input_errors
def train_command(root, phase_c_root, phase_d_root, artifact_root, doses, views, gridsizes, backend, dry_run,
                  config_path, executor, jobs, address, cpus_per_job, gpus_per_job, slurm_partition, slurm_time_min,
                  slurm_cluster, force, verbose, quiet) -> None:
    """Phase E: train the baseline and PINN jobs and write bundles and training_manifest.json.

    For each finished job, three lines go to stdout: `→ Bundle [view/dose=1e+05]: wts.h5.zip`,
    `→ SHA256 [...]: <hex>` and `→ Size [...]: <n> bytes`. Filters combine with AND.
    """
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    phase_c = _require(phase_c_root or (layout.phase_c_root(root) if root else None), "--phase-c-root", "ROOT/data/phase_c")
    phase_d = _require(phase_d_root or (layout.phase_d_root(root) if root else None), "--phase-d-root", "ROOT/data/phase_d")
    artifacts = _require(artifact_root or (layout.phase_e_root(root) if root else None), "--artifact-root", "ROOT/phase_e")
    settings = _executor_settings(artifacts, executor, jobs, address, cpus_per_job, gpus_per_job, slurm_partition,
                                  slurm_time_min, slurm_cluster)
    with study_lock(root or artifacts):
        summary = _run_train(config, phase_c, phase_d, artifacts, backend, doses or None, views or None,
                             gridsizes or None, dry_run, settings, force, quiet)
    _finish_training(summary)


@main.command("run")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Study root that receives every phase's artifacts.")
@config_option
@probe_option
@backend_option
@click.option("--until", type=click.Choice(RUN_STAGES), default="report", show_default=True,
              help="Last stage to run: stop after training, for example, to reconstruct and compare later.")
@_executor_options
@_with_verbosity
@_handle_input_errors
def run_command(root, config_path, probe_path, backend, until, executor, jobs, address, cpus_per_job, gpus_per_job,
                slurm_partition, slurm_time_min, slurm_cluster, force, verbose, quiet) -> None:
    """Run the whole sweep under ROOT: phases C (simulation) to G (comparison) and the report.

    Re-running resumes: jobs whose bundle is up to date are reused (see --force).
    """
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    settings = _executor_settings(layout.phase_e_root(root), executor, jobs, address, cpus_per_job, gpus_per_job,
                                  slurm_partition, slurm_time_min, slurm_cluster)
    _check_probe(probe_path, config)
    started = time.perf_counter()
    last = RUN_STAGES.index(until)
    training: dict = {}
    reconstruction: dict = {}
    comparison: dict = {}
    with study_lock(root):
        _run_generate(config, layout.phase_c_root(root), probe_path)
        if last >= RUN_STAGES.index("overlap"):
            _run_overlap(config, layout.phase_c_root(root), layout.phase_d_root(root))
        if last >= RUN_STAGES.index("train"):
            training = _run_train(config, layout.phase_c_root(root), layout.phase_d_root(root),
                                  layout.phase_e_root(root), backend, None, None, None, False, settings, force, quiet)
            click.echo(f"Training manifest: {training['manifest_path']}")
        if last >= RUN_STAGES.index("reconstruct"):
            reconstruction = _run_reconstruct(config, root)
            click.echo(f"Reconstruction manifest: {reconstruction.get('manifest_path')}")
        if last >= RUN_STAGES.index("compare"):
            comparison = _run_compare(config, root)
            click.echo(f"Metrics summary: {comparison.get('summary_path')}")
        if last >= RUN_STAGES.index("report"):
            click.echo(f"Report: {_run_report(config, root)}")
    logger.info("sweep finished in %.1f s", time.perf_counter() - started)
    click.echo(f"Study root: {root}")
    _exit_on_failures(training, reconstruction, comparison)


def _check_probe(probe_path: Path | None, config: StudyConfig) -> None:
    """Reject an unusable probe file before the study root and its lock file are created."""
    if probe_path is not None:
        from fly64.physics.probe import load_probe

        load_probe(probe_path, config.design().patch_size_pixels)


def _run_generate(config: StudyConfig, phase_c: Path, probe_path: Path | None) -> dict:
    from studies.fly64_dose_overlap.generation import generate_phase_c

    return generate_phase_c(config, phase_c, probe_path)


def _run_overlap(config: StudyConfig, phase_c: Path, phase_d: Path) -> dict:
    from studies.fly64_dose_overlap.overlap import generate_phase_d

    return generate_phase_d(config, phase_c, phase_d)


def _run_train(config, phase_c, phase_d, artifacts, backend, doses, views, gridsizes, dry_run, settings=None,
               force=False, quiet=False) -> dict:
    from studies.fly64_dose_overlap.training import train_all

    return train_all(config, phase_c, phase_d, artifacts, backend=backend, doses=doses, views=views,
                     gridsizes=gridsizes, dry_run=dry_run, emit=_emit_result_line, executor=settings, force=force,
                     quiet=quiet)


def _emit_result_line(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _finish_training(summary: dict) -> None:
    click.echo(f"Training manifest: {summary['manifest_path']}")
    _exit_on_failures(summary)


def _exit_on_failures(training: dict, reconstruction: dict | None = None, comparison: dict | None = None) -> None:
    """Print a summary of failed jobs to stderr and exit with code 1 when there is any."""
    problems = []
    if training and training.get("failed"):
        problems.append(f"{training['failed']} of {training['jobs']} training job(s) failed (see each job's train.log)")
    if reconstruction and reconstruction.get("failed"):
        problems.append(f"{reconstruction['failed']} reconstruction(s) failed (see reconstruction_manifest.json)")
    if comparison and comparison.get("failed"):
        problems.append(f"{comparison['failed']} comparison(s) failed (see the metrics summary)")
    if problems:
        click.echo("Error: " + "; ".join(problems), err=True)
        sys.exit(EXIT_FAILED_JOBS)


def _run_reconstruct(config: StudyConfig, root: Path) -> dict:
    from studies.fly64_dose_overlap.reconstruction import reconstruct_all

    return reconstruct_all(config, root)


def _run_compare(config: StudyConfig, root: Path) -> dict:
    from studies.fly64_dose_overlap.comparison import compare_all

    return compare_all(config, root)


def _run_report(config: StudyConfig, root: Path) -> Path:
    from studies.fly64_dose_overlap.report import write_report

    return write_report(config, root)


@main.command("reconstruct")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Study root with Phase E bundles; reconstructions go to ROOT/phase_f.")
@config_option
@_with_verbosity
@_handle_input_errors
def reconstruct_command(root, config_path, verbose, quiet) -> None:
    """Phase F: reconstruct each view's test split with PtychoPINN, Baseline and PtyChi (pty-chi LSQML)."""
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    with study_lock(root):
        summary = _run_reconstruct(config, root)
    click.echo(f"Reconstruction manifest: {summary.get('manifest_path')}")
    _exit_on_failures({}, reconstruction=summary)


@main.command("compare")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Study root with Phase F reconstructions; metrics go to ROOT/analysis.")
@config_option
@_with_verbosity
@_handle_input_errors
def compare_command(root, config_path, verbose, quiet) -> None:
    """Phase G: register each reconstruction to the ground truth and compute MAE, MSE, PSNR, SSIM, MS-SSIM and FRC."""
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    with study_lock(root):
        summary = _run_compare(config, root)
    click.echo(f"Metrics summary: {summary.get('summary_path')}")
    _exit_on_failures({}, comparison=summary)


@main.command("report")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Study root with Phase G metrics; the report goes to ROOT/analysis/report.md.")
@config_option
@_with_verbosity
@_handle_input_errors
def report_command(root, config_path, verbose, quiet) -> None:
    """Write the Markdown report and its PNG figures (image grid, metrics versus dose, FRC, training loss)."""
    _configure_logging(verbose, quiet)
    config = load_config(config_path)
    with study_lock(root):
        report_path = _run_report(config, root)
    click.echo(f"Report: {report_path}")


@main.command("verify")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-reload", is_flag=True, help="Skip reloading each bundle in a fresh process (faster).")
@_with_verbosity
@_handle_input_errors
def verify_command(paths, no_reload, verbose, quiet) -> None:
    """Check bundles, NPZ files and whole study roots; print one line per finding.

    Bundles: ZIP integrity, manifest keys, SHA-256 and size against the record, and a
    reload in a fresh process that reproduces the stored prediction. NPZ files: loading
    without pickle and the data contract. Exit code 0 when every check passes, 1 otherwise.
    """
    _configure_logging(verbose, quiet=True)
    from fly64.verify import verify_paths

    findings = verify_paths(paths, reload=not no_reload)
    for finding in findings:
        click.echo(finding.line())
    failed = sum(1 for finding in findings if not finding.passed)
    click.echo(f"{len(findings) - failed} passed, {failed} failed", err=True)
    sys.exit(1 if failed else 0)
