"""Measure TensorFlow training throughput per job kind, preset and thread count.

    python -m fly64.backends.tensorflow.benchmark [--patch-size 64] [--groups 96] [--epochs 2] [--threads 0]

Each configuration trains on a synthetic scan through the same Keras path as a job
(`fly64.backends.tensorflow.training.fit_models`). It reports groups per second over the
training steps (forward, backward, optimiser), leaving out the steps that trace the
training function and the first `--skip-steps` steps. The arguments and the synthetic
data match `fly64.backends.pytorch.benchmark`, so the two backends' figures compare.

TensorFlow fixes its thread pools at the first op, so one process measures one thread
count; run the command once per `--threads` value. One JSON line per configuration goes
to stdout; progress goes to stderr. Timings depend on what else runs on the machine, so
compare numbers from one session.
"""

import argparse
import itertools
import json
import logging
import sys

from fly64.backends.base import TrainingSettings
from fly64.learning.data import build_training_arrays, canvas_pad_px, split_validation
from fly64.learning.spec import PRESETS, ModelSpec
from fly64.learning.synthetic import make_synthetic_dataset

logger = logging.getLogger(__name__)

JOB_KINDS = {"baseline-gs1": ("baseline", 1), "pinn-gs1": ("pinn", 1), "pinn-gs2": ("pinn", 2)}


def measure(kind: str, gridsize: int, preset: str, threads: int, args: argparse.Namespace) -> dict:
    """Train one configuration and return its figures."""
    import keras
    import tensorflow as tf

    from fly64.backends.tensorflow.models import build_models, set_initial_weights
    from fly64.backends.tensorflow.training import calibrate_intensity_scale, fit_models

    side = max(4, int(round(args.groups**0.5)))
    dataset = make_synthetic_dataset(patch_size=args.patch_size, scan_side=side, step_px=args.patch_size // 4, seed=0)
    arrays = build_training_arrays(dataset, gridsize, neighbor_count=7, seed=0, max_groups=args.groups)
    train, validation = split_validation(arrays, 0.0, seed=0)
    pad = canvas_pad_px(arrays.offsets_px) if kind == "pinn" and gridsize > 1 else 0
    spec = ModelSpec(args.patch_size, gridsize, kind, preset, pad)

    settings = TrainingSettings(
        epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.0,
        early_stopping_patience=args.epochs, threads=threads, device="cpu", model_preset=preset,
    )
    keras.utils.set_random_seed(0)
    pair = build_models(spec, dataset.probe)
    set_initial_weights(pair, spec, seed=0)
    if kind == "pinn":
        calibrate_intensity_scale(pair, spec, train)
    outcome = fit_models(pair, spec, train, validation, settings, seed=0, skip_first_steps=args.skip_steps)
    return {
        "job": f"{kind}-gs{gridsize}",
        "preset": preset,
        "parameters": spec.parameter_count(),
        "patch_size": args.patch_size,
        "batch_size": args.batch_size,
        "threads": threads,
        "groups_per_second": round(outcome.samples_per_second, 2),
        "tensorflow_version": tf.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=64, help="N, pixels per side (default 64)")
    parser.add_argument("--groups", type=int, default=96, help="training groups per configuration (default 96)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per configuration (default 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="groups per step (default 16)")
    parser.add_argument("--skip-steps", type=int, default=2, help="first training steps left out of the timing (default 2)")
    parser.add_argument("--jobs", nargs="+", default=list(JOB_KINDS), choices=list(JOB_KINDS))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument(
        "--threads", type=int, default=0, help="intra-op CPU threads of this process; 0 uses every available CPU (default 0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")

    from fly64.backends.tensorflow.runtime import configure_runtime

    runtime = configure_runtime("cpu", args.threads, seed=0)
    for job, preset in itertools.product(args.jobs, args.presets):
        kind, gridsize = JOB_KINDS[job]
        figures = measure(kind, gridsize, preset, runtime.threads, args)
        print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
