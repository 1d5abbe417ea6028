"""Measure PyTorch training throughput per job kind, preset, thread count and memory layout.

    python -m fly64.backends.pytorch.benchmark [--patch-size 64] [--groups 96] [--epochs 2]

Each configuration trains on a synthetic scan through the same Lightning path as a job
(`fly64.backends.pytorch.training.fit_model`) and reports groups per second over the
training steps (forward, backward, optimiser), leaving out the first steps of the run,
which allocate memory. With `--repeats R` every configuration runs R times, interleaved
with the others. Its JSON line on stdout gives the fastest round, the one least disturbed
by other processes, as `groups_per_second`, and all rounds as `groups_per_second_rounds`. Timings depend on what else runs
on the machine, so compare numbers from one run.
"""

import argparse
import itertools
import json
import logging
import sys

import torch

from fly64.backends.base import TrainingSettings
from fly64.backends.pytorch.runtime import configure_runtime
from fly64.backends.pytorch.training import (
    build_model,
    calibrate_intensity_scale,
    fit_model,
)
from fly64.learning.data import build_training_arrays, canvas_pad_px, split_validation
from fly64.learning.spec import PRESETS, ModelSpec
from fly64.learning.synthetic import make_synthetic_dataset

logger = logging.getLogger(__name__)

JOB_KINDS = {"baseline-gs1": ("baseline", 1), "pinn-gs1": ("pinn", 1), "pinn-gs2": ("pinn", 2)}


def measure(kind: str, gridsize: int, preset: str, threads: int, channels_last: bool, args: argparse.Namespace) -> dict:
    """Train one configuration and return its figures."""
    side = max(4, round(args.groups**0.5))
    dataset = make_synthetic_dataset(patch_size=args.patch_size, scan_side=side, step_px=args.patch_size // 4, seed=0)
    arrays = build_training_arrays(dataset, gridsize, neighbor_count=7, seed=0, max_groups=args.groups)
    train, validation = split_validation(arrays, 0.0, seed=0)
    pad = canvas_pad_px(arrays.offsets_px) if kind == "pinn" and gridsize > 1 else 0
    spec = ModelSpec(args.patch_size, gridsize, kind, preset, pad)

    settings = TrainingSettings(
        epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.0,
        early_stopping_patience=args.epochs, threads=threads, device="cpu", model_preset=preset,
        channels_last=channels_last,
    )
    runtime = configure_runtime(settings.device, threads, channels_last)
    model = build_model(spec, dataset.probe, seed=0)
    if kind == "pinn":
        calibrate_intensity_scale(model, train)
    outcome = fit_model(model, train, validation, settings, runtime, seed=0, skip_first_steps=args.skip_steps)
    return {
        "job": f"{kind}-gs{gridsize}",
        "preset": preset,
        "parameters": spec.parameter_count(),
        "patch_size": args.patch_size,
        "batch_size": args.batch_size,
        "threads": threads,
        "channels_last": channels_last,
        "groups_per_second": round(outcome.samples_per_second, 2),
        "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=64, help="N, pixels per side (default 64)")
    parser.add_argument("--groups", type=int, default=96, help="training groups per configuration (default 96)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per configuration (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="groups per step (default 16)")
    parser.add_argument("--skip-steps", type=int, default=2, help="first training steps left out of the timing (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all configurations; each line reports every round (default 1)")
    parser.add_argument("--jobs", nargs="+", default=list(JOB_KINDS), choices=list(JOB_KINDS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU thread counts to compare")
    parser.add_argument("--channels-last", nargs="+", default=["on", "off"], choices=["on", "off"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    configurations = list(itertools.product(args.jobs, args.presets, args.threads, args.channels_last))
    rounds: dict[tuple, list[dict]] = {configuration: [] for configuration in configurations}
    # Rounds interleave the configurations, so that load from other processes spreads over all of them.
    for _ in range(args.repeats):
        for configuration in configurations:
            job, preset, threads, layout = configuration
            kind, gridsize = JOB_KINDS[job]
            rounds[configuration].append(measure(kind, gridsize, preset, threads, layout == "on", args))

    for configuration, figures in rounds.items():
        speeds = [entry["groups_per_second"] for entry in figures]
        summary = {**figures[0], "groups_per_second": max(speeds), "groups_per_second_rounds": speeds}
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
