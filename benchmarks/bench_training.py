"""Benchmark training throughput of both backends per job kind and model preset.

Runs `python -m fly64.backends.pytorch.benchmark` and `python -m
fly64.backends.tensorflow.benchmark` in separate processes (the two frameworks must not
share one), on the same synthetic scan, and prints one Markdown table of groups per
second over the training steps. A group contains C = gridsize² patterns, so patterns per
second is groups per second times C.

Usage:
    python benchmarks/bench_training.py [--patch-size 64] [--groups 96] [--epochs 2]
        [--presets compact reference] [--threads 1] [--output-dir benchmarks/results]

It writes `training.json` and `training.md` to the output folder.
"""

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

BACKEND_MODULES = {
    "pytorch": "fly64.backends.pytorch.benchmark",
    "tensorflow": "fly64.backends.tensorflow.benchmark",
}


def run_backend(backend: str, args: argparse.Namespace) -> list[dict]:
    """Run one backend's benchmark module and return its JSON lines."""
    command = [
        sys.executable, "-m", BACKEND_MODULES[backend],
        "--patch-size", str(args.patch_size), "--groups", str(args.groups), "--epochs", str(args.epochs),
        "--presets", *args.presets,
    ]
    if backend == "pytorch":
        command += ["--threads", str(args.threads), "--channels-last", "on"]
    else:
        command += ["--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row["backend"] = backend
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| backend | job kind | preset | threads | groups/s | patterns/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        kind = row.get("job") or f"{row.get('model_kind')}-gs{row.get('gridsize')}"
        gridsize = int(row.get("gridsize", 1))
        groups = float(row["groups_per_second"])
        lines.append(
            f"| {row['backend']} | {kind} | {row.get('preset')} | {row.get('threads')} | "
            f"{groups:.1f} | {groups * gridsize**2:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=64, help="N, pixels per side (default 64)")
    parser.add_argument("--groups", type=int, default=96, help="training groups per configuration (default 96)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per configuration (default 2)")
    parser.add_argument("--presets", nargs="+", default=["compact", "reference"], help="model presets (default both)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per backend process (default 1)")
    parser.add_argument("--backends", nargs="+", default=list(BACKEND_MODULES), choices=list(BACKEND_MODULES))
    parser.add_argument("--output-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    rows: list[dict] = []
    for backend in args.backends:
        rows += run_backend(backend, args)
    table = markdown(rows)
    print(table)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "rows": rows,
    }
    (args.output_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.output_dir / "training.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
