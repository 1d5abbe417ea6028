"""Benchmark the training executors on one sweep and check that their manifests agree.

Runs `fly64 run --until train` once per executor (serial local, local with `--jobs 2`,
Ray on a local cluster, submitit's local executor), each in its own study root, and
prints one Markdown table of wall times and overhead against the serial run. It then
compares each run's `training_manifest.json` with the serial one: job list, status,
bundle SHA-256 and size, epochs and final losses. Any difference is listed, and the
script exits 1.

Every run repeats phases C and D (a few seconds at smoke size), so the difference in wall
time is the executor's own cost: worker start-up, scheduling and result collection.

Usage:
    python benchmarks/bench_executors.py [--config configs/smoke.toml]
        [--probe ../shared/data/fly64_probe.npz] [--executors serial jobs2 ray submitit]
        [--output-dir benchmarks/results]

It writes `executors.json` and `executors.md` to the output folder. The study roots go
to a temporary folder, which is removed at the end unless `--keep` is given.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXECUTOR_OPTIONS = {
    "serial": ["--executor", "local", "--jobs", "1"],
    "jobs2": ["--executor", "local", "--jobs", "2"],
    "ray": ["--executor", "ray"],
    "submitit": ["--executor", "slurm", "--slurm-cluster", "local"],
}

# Result fields that identify what a job produced. Timings and paths differ between
# runs by design and are left out.
COMPARED_FIELDS = (
    "status", "bundle_sha256", "bundle_size_bytes", "epochs_run", "best_epoch",
    "final_train_loss", "final_val_loss", "amplitude_correlation", "phase_correlation",
)


def run_sweep(name: str, root: Path, args: argparse.Namespace) -> dict:
    """Run one sweep with the named executor and return its wall time and exit code."""
    command = [
        sys.executable, "-m", "studies.fly64_dose_overlap", "run",
        "--root", str(root), "--config", str(args.config), "--until", "train", "--quiet",
        *EXECUTOR_OPTIONS[name],
    ]
    if args.probe is not None:
        command += ["--probe", str(args.probe)]
    print(f"running {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        print(completed.stderr[-4000:], file=sys.stderr)
    return {"executor": name, "wall_seconds": wall, "exit_code": completed.returncode}


def job_signatures(root: Path) -> dict[str, dict]:
    """Return the compared result fields of each job, keyed by dose, view and gridsize."""
    manifest = json.loads((root / "phase_e" / "training_manifest.json").read_text())
    signatures = {}
    for job in manifest["jobs"]:
        key = f"{job['view']}/dose={job['dose']:g}/gs{job['gridsize']}"
        result = job.get("result", {})
        signatures[key] = {field: result.get(field) for field in COMPARED_FIELDS}
    return signatures


def compare(reference: dict[str, dict], other: dict[str, dict]) -> list[str]:
    """List every job or field where `other` differs from `reference`."""
    differences = []
    for key in sorted(set(reference) | set(other)):
        if key not in other:
            differences.append(f"{key}: missing")
            continue
        if key not in reference:
            differences.append(f"{key}: not in the serial run")
            continue
        for field in COMPARED_FIELDS:
            if reference[key][field] != other[key][field]:
                differences.append(f"{key}: {field} {reference[key][field]!r} != {other[key][field]!r}")
    return differences


def markdown(rows: list[dict]) -> str:
    serial = next((row["wall_seconds"] for row in rows if row["executor"] == "serial"), None)
    lines = [
        "| executor | exit code | wall (s) | overhead vs serial (s) | manifest vs serial |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        overhead = "" if serial is None else f"{row['wall_seconds'] - serial:+.1f}"
        agreement = row.get("manifest_agreement", "")
        lines.append(
            f"| {row['executor']} | {row['exit_code']} | {row['wall_seconds']:.1f} | {overhead} | {agreement} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/smoke.toml"))
    parser.add_argument("--probe", type=Path, default=None, help="probe NPZ (default: the embedded probe)")
    parser.add_argument(
        "--executors", nargs="+", default=list(EXECUTOR_OPTIONS), choices=list(EXECUTOR_OPTIONS),
        help="executors to run; the first is the reference unless `serial` is listed",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--keep", action="store_true", help="keep the study roots")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="fly64-executors-"))
    rows: list[dict] = []
    signatures: dict[str, dict] = {}
    try:
        for name in args.executors:
            root = scratch / name
            row = run_sweep(name, root, args)
            if row["exit_code"] == 0:
                signatures[name] = job_signatures(root)
            rows.append(row)
    finally:
        if args.keep:
            print(f"study roots kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    reference_name = "serial" if "serial" in signatures else next(iter(signatures), None)
    failed = any(row["exit_code"] != 0 for row in rows)
    for row in rows:
        name = row["executor"]
        if name not in signatures or reference_name is None:
            row["manifest_agreement"] = "no manifest"
            continue
        row["differences"] = compare(signatures[reference_name], signatures[name])
        row["jobs"] = len(signatures[name])
        if row["differences"]:
            failed = True
            row["manifest_agreement"] = f"{len(row['differences'])} differences"
        else:
            row["manifest_agreement"] = f"identical ({row['jobs']} jobs)"

    table = markdown(rows)
    print(table)
    for row in rows:
        for difference in row.get("differences", []):
            print(f"{row['executor']}: {difference}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "config": str(args.config),
        "probe": None if args.probe is None else str(args.probe),
        "reference": reference_name,
        "runs": rows,
    }
    (args.output_dir / "executors.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.output_dir / "executors.md").write_text(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
