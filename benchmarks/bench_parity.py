"""Measure training parity of the PyTorch and TensorFlow backends at demo size.

Trains the same jobs with both backends on the same simulated scan, seeds and
hyperparameters, each in its own worker process (`python -m fly64.backends.worker`, as
Phase E runs them). For each job and seed it prints the final training loss of both
backends and their relative gap, and the phase and amplitude correlations with the
ground-truth test patches and their differences. The parity targets are a loss gap of at
most 10 % and a phase-correlation difference below 0.05. The script reports whether each
run meets them and does not fail on a miss.

Defaults match `configs/demo.toml`'s training: N = 64, batch 16, 6 epochs, at most 512
training groups, learning rate 1e-3, patience 3. The training scan is a 24 x 24 raster
with an 8 px step (576 patterns), the test scan 10 x 10, both at 1e4 photons.

Usage:
    python benchmarks/bench_parity.py [--seeds 1 2 3] [--jobs baseline pinn-gs2]
        [--epochs 6] [--parallel 2] [--output-dir benchmarks/results]

It writes `parity.json` and `parity.md` to the output folder. `--parallel 2` trains the
two backends of a run at once, each on one thread.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from fly64.contract import save_dataset
from fly64.learning.synthetic import make_synthetic_dataset

BACKENDS = ("pytorch", "tensorflow")
JOBS = {"baseline": ("baseline", 1), "pinn-gs1": ("pinn", 1), "pinn-gs2": ("pinn", 2)}
LOSS_GAP_TARGET = 0.10
PHASE_GAP_TARGET = 0.05


def job_spec(backend: str, job: str, seed: int, folder: Path, data: tuple[Path, Path], args: argparse.Namespace) -> dict:
    """Return the worker spec of one training run."""
    model_kind, gridsize = JOBS[job]
    return {
        "backend": backend,
        "model_kind": model_kind,
        "gridsize": gridsize,
        "neighbor_count": 7,
        "seed": seed,
        "train_data_path": str(data[0]),
        "test_data_path": str(data[1]),
        "bundle_path": str(folder / "wts.h5.zip"),
        "training": {
            "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": 1e-3, "validation_fraction": 0.1,
            "early_stopping_patience": args.patience, "max_train_groups": args.max_train_groups, "threads": 1,
            "device": "cpu", "model_preset": "compact",
        },
        "provenance": {"dose": args.dose, "view": "parity-benchmark"},
    }


def train(backend: str, job: str, seed: int, scratch: Path, data: tuple[Path, Path], args: argparse.Namespace) -> dict:
    """Train one run in a worker process and return its result JSON."""
    folder = scratch / f"{job}-seed{seed}-{backend}"
    folder.mkdir(parents=True)
    spec_path, result_path = folder / "spec.json", folder / "result.json"
    spec_path.write_text(json.dumps(job_spec(backend, job, seed, folder, data, args)))
    print(f"training {job} seed {seed} with {backend}", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, "-m", "fly64.backends.worker", str(spec_path), str(result_path)],
        capture_output=True, text=True,
    )
    if completed.returncode != 0:
        print(completed.stderr[-4000:], file=sys.stderr)
        return {"status": "failed", "error": f"worker exit code {completed.returncode}"}
    return json.loads(result_path.read_text())


def compare(job: str, seed: int, results: dict[str, dict]) -> dict:
    """Return one table row: both backends' figures, the gaps and whether they meet the targets."""
    torch_result, keras_result = results["pytorch"], results["tensorflow"]
    row = {"job": job, "seed": seed}
    for backend, result in results.items():
        row[backend] = {
            key: result.get(key)
            for key in ("status", "final_train_loss", "final_val_loss", "epochs_run", "best_epoch",
                        "phase_correlation", "amplitude_correlation", "train_seconds")
        }
    if torch_result.get("status") != "completed" or keras_result.get("status") != "completed":
        row["meets_targets"] = False
        return row
    torch_loss, keras_loss = torch_result["final_train_loss"], keras_result["final_train_loss"]
    row["loss_gap"] = abs(keras_loss - torch_loss) / abs(torch_loss)
    row["phase_gap"] = abs(keras_result["phase_correlation"] - torch_result["phase_correlation"])
    row["amplitude_gap"] = abs(keras_result["amplitude_correlation"] - torch_result["amplitude_correlation"])
    row["meets_targets"] = row["loss_gap"] <= LOSS_GAP_TARGET and row["phase_gap"] < PHASE_GAP_TARGET
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| job | seed | loss PyTorch | loss TF | loss gap | phase r PyTorch / TF | phase gap "
        "| amplitude r PyTorch / TF | epochs PyTorch / TF | within targets |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        torch_figures, keras_figures = row["pytorch"], row["tensorflow"]
        if "loss_gap" not in row:
            lines.append(f"| {row['job']} | {row['seed']} | failed run | | | | | | | no |")
            continue
        lines.append(
            f"| {row['job']} | {row['seed']} | {torch_figures['final_train_loss']:.4f} | {keras_figures['final_train_loss']:.4f} "
            f"| {100 * row['loss_gap']:.1f} % "
            f"| {torch_figures['phase_correlation']:.3f} / {keras_figures['phase_correlation']:.3f} | {row['phase_gap']:.3f} "
            f"| {torch_figures['amplitude_correlation']:.3f} / {keras_figures['amplitude_correlation']:.3f} "
            f"| {torch_figures['epochs_run']} / {keras_figures['epochs_run']} | {'yes' if row['meets_targets'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="training seeds (default 1 2 3)")
    parser.add_argument("--jobs", nargs="+", default=["baseline", "pinn-gs2"], choices=list(JOBS))
    parser.add_argument("--patch-size", type=int, default=64, help="N, pixels per side (default 64)")
    parser.add_argument("--train-side", type=int, default=24, help="training raster side, positions (default 24)")
    parser.add_argument("--test-side", type=int, default=10, help="test raster side, positions (default 10)")
    parser.add_argument("--step", type=int, default=8, help="raster step, pixels (default 8)")
    parser.add_argument("--dose", type=float, default=1e4, help="photons per pattern (default 1e4)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs (default 6, as configs/demo.toml)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patience", type=int, default=3, help="early-stopping patience, epochs (default 3)")
    parser.add_argument("--max-train-groups", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=1, choices=[1, 2], help="backends trained at once (default 1)")
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="fly64-parity-") as scratch_name:
        scratch = Path(scratch_name)
        data = (scratch / "train.npz", scratch / "test.npz")
        save_dataset(data[0], make_synthetic_dataset(args.patch_size, args.train_side, args.step, args.dose, seed=0))
        save_dataset(data[1], make_synthetic_dataset(args.patch_size, args.test_side, args.step, args.dose, seed=1))
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
            for job in args.jobs:
                for seed in args.seeds:
                    futures = {backend: pool.submit(train, backend, job, seed, scratch, data, args) for backend in BACKENDS}
                    rows.append(compare(job, seed, {backend: future.result() for backend, future in futures.items()}))

    table = markdown(rows)
    print(table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "targets": {"loss_gap": LOSS_GAP_TARGET, "phase_gap": PHASE_GAP_TARGET},
        "rows": rows,
    }
    (args.output_dir / "parity.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.output_dir / "parity.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
