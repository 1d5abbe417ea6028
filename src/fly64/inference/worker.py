"""Run trained models on held-out data and stitch their patches, in a process of its own.

    python -m fly64.inference.worker SPEC.json RESULT.json

The study's command-line process never imports a deep-learning framework: it writes a
spec, starts this worker, and reads the result. The worker loads each bundle with
`fly64.backends.load_bundle`, which imports the bundle's backend, so one worker should
only get bundles of one backend (importing TensorFlow before torch-side libraries
crashes Python).

Spec (JSON object):

| key              | type   | default | meaning                                                  |
| ---------------- | ------ | ------- | -------------------------------------------------------- |
| `tasks`          | list   | (none)  | one object per reconstruction, keys below                |
| `batch_size`     | int    | 64      | groups per forward pass and per stitching step           |
| `neighbor_count` | int    | 7       | K, neighbourhood of gridsize-2 grouping                  |
| `grouping_seed`  | int    | 0       | seed of `fly64.physics.grouping.build_groups`            |
| `stitching`      | object | {}      | `central_fraction`, `min_weight` (see `stitching`)       |
| `threads`        | int    | 0       | CPU threads of the framework; 0 = the backend's default  |

Each task has `model` (a label such as `PtychoPINN`), `bundle_path`, `data_path` (an NPZ
dataset) and `output_path`. Two keys are optional: `grouping_seed` overrides the spec's,
so each bundle is grouped with its own training seed, and `metadata` (plain data, for
example dose, view and split) is copied into the output's provenance.

Grouping: a gridsize-1 model predicts each pattern once. For gridsize C = g² > 1, the test
patterns are grouped as in training (`build_groups` with the given K and seed: one group
per scan position, drawn from its K nearest positions), every group is predicted, and
every member's patch is stitched at its own position. A pattern that appears in several
groups is thus averaged over all its predictions, with the stitching window as weights.
Patterns in no group contribute nothing themselves; their neighbours cover their area.

Timing: one untimed warm-up batch of up to two groups runs first, so that lazy
initialisation in the framework does not count. `inference_seconds` is the time spent in
`predict` only; `patterns_per_second` is the number of patterns in the dataset divided
by it, and `groups_per_second` the number of groups divided by it.

Output NPZ (`fly64.atomic.save_npz`, loads with `allow_pickle=False`): `object` complex64
(M, M) on the grid of the dataset's `objectGuess`, `xcoords`, `ycoords` float64 (the
dataset's positions), `coverage` float32 (M, M) splatted window weights, and `_metadata`
(JSON provenance with the model, bundle SHA-256, timings and stitching settings).

Result JSON: `status` (`completed` when every task completed, else `failed`) and `tasks`,
one entry per task with `status`, `error` and the figures above. It is rewritten after
every task, so a crash leaves the results of the finished tasks. Exit codes: 0 when every
task completed, 1 when a task failed, 2 for an invalid spec. Nothing goes to stdout.
"""

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fly64 import __version__
from fly64.atomic import save_npz, sha256_file, write_json
from fly64.contract import KEY_METADATA, KEY_X, KEY_Y, Dataset, load_dataset, provenance
from fly64.errors import InputError
from fly64.inference.stitching import (
    DEFAULT_CENTRAL_FRACTION,
    DEFAULT_MIN_WEIGHT,
    PatchStitcher,
)
from fly64.learning.data import normalisation_factor
from fly64.physics.grouping import build_groups, group_offsets_px

logger = logging.getLogger(__name__)

KEY_OBJECT = "object"
KEY_COVERAGE = "coverage"
PROVENANCE_STEP = "phase_f_inference"
WARM_UP_GROUPS = 2

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT_ERROR = 2

STATUS_COMPLETED = "completed"
STATUS_FAILED = "failed"

TASK_KEYS = {"model", "bundle_path", "data_path", "output_path", "grouping_seed", "metadata"}
SPEC_KEYS = {"tasks", "batch_size", "neighbor_count", "grouping_seed", "stitching", "threads"}


def read_spec(spec_path: Path) -> dict[str, Any]:
    """Read and validate a worker spec; return it with defaults filled in.

    Raises:
        InputError: the file is missing or not JSON, a key is unknown or missing, or a
            value has the wrong type or range. The message names the spec file and key.
    """
    try:
        document = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{spec_path}: spec file not found") from None
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{spec_path}: not a readable JSON spec ({error})") from None
    if not isinstance(document, dict):
        raise InputError(f"{spec_path}: spec is a {type(document).__name__}; expected a JSON object")
    unknown = sorted(set(document) - SPEC_KEYS)
    if unknown:
        raise InputError(f"{spec_path}: unknown spec key(s) {', '.join(unknown)}; expected {', '.join(sorted(SPEC_KEYS))}")

    spec = {
        "batch_size": _integer(document, "batch_size", 64, 1, spec_path),
        "neighbor_count": _integer(document, "neighbor_count", 7, 1, spec_path),
        "grouping_seed": _integer(document, "grouping_seed", 0, 0, spec_path),
        "threads": _integer(document, "threads", 0, 0, spec_path),
        "stitching": _stitching(document.get("stitching", {}), spec_path),
    }
    tasks = document.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise InputError(f"{spec_path}: spec key tasks must be a non-empty list of task objects")
    spec["tasks"] = [_task(task, index, spec_path, spec["grouping_seed"]) for index, task in enumerate(tasks)]
    return spec


def run_task(task: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Reconstruct one dataset with one bundle and write the stitched object; return the figures.

    Raises:
        InputError: the dataset or bundle is unusable, or they do not fit each other.
        Exception: anything the backend raises while predicting.
    """
    # Imported here: fly64.backends imports the bundle's framework when it loads one.
    from fly64.backends import load_bundle

    started = time.perf_counter()
    data_path = Path(task["data_path"])
    bundle_path = Path(task["bundle_path"])
    dataset = load_dataset(data_path)
    bundle_sha256 = sha256_file(bundle_path)
    model = load_bundle(bundle_path)
    threads = set_cpu_threads(model.manifest.get("backend"), spec["threads"])
    loaded = time.perf_counter()

    patch_size = model.spec.patch_size
    group_size = model.spec.channels
    if dataset.patch_size != patch_size:
        raise InputError(
            f"{data_path}: patterns are {dataset.patch_size} px but bundle {bundle_path} expects N = {patch_size}"
        )
    groups, offsets_px = _group(dataset, group_size, spec["neighbor_count"], task["grouping_seed"])
    norm_factor = normalisation_factor(dataset.diffraction)
    stitching = spec["stitching"]
    stitcher = PatchStitcher(
        dataset.object.shape, patch_size, stitching["central_fraction"], stitching["min_weight"]
    )

    warm_up = groups[:WARM_UP_GROUPS]
    model.predict(dataset.diffraction[warm_up], offsets_px[:WARM_UP_GROUPS], norm_factor=norm_factor)

    batch_size = spec["batch_size"]
    inference_seconds = 0.0
    stitch_seconds = 0.0
    positions_xy = dataset.positions_xy
    for start in range(0, groups.shape[0], batch_size):
        members = groups[start : start + batch_size]
        batch_started = time.perf_counter()
        patches = model.predict(
            dataset.diffraction[members], offsets_px[start : start + batch_size], norm_factor=norm_factor,
            batch_size=batch_size,
        )
        predicted = time.perf_counter()
        stitcher.add(patches.reshape(-1, patch_size, patch_size), positions_xy[members.ravel()])
        inference_seconds += predicted - batch_started
        stitch_seconds += time.perf_counter() - predicted

    stitched = stitcher.result()
    figures = {
        "model": task["model"],
        "bundle_path": str(bundle_path),
        "bundle_sha256": bundle_sha256,
        "backend": model.manifest.get("backend"),
        "model_kind": model.params.get("model_kind"),
        "gridsize": model.spec.gridsize,
        "n_patterns": dataset.n_patterns,
        "n_groups": int(groups.shape[0]),
        "n_patterns_in_groups": int(np.unique(groups).size),
        "norm_factor": norm_factor,
        "inference_seconds": inference_seconds,
        "patterns_per_second": dataset.n_patterns / inference_seconds if inference_seconds > 0 else None,
        "groups_per_second": groups.shape[0] / inference_seconds if inference_seconds > 0 else None,
        "seconds_per_pattern": inference_seconds / dataset.n_patterns,
        "load_seconds": loaded - started,
        "stitch_seconds": stitch_seconds,
        "batch_size": batch_size,
        "threads": threads,
        "grouping": {
            "strategy": "all groups, members averaged by stitching" if group_size > 1 else "one pattern per group",
            "neighbor_count": spec["neighbor_count"],
            "seed": task["grouping_seed"],
        },
        "stitching": stitcher.describe(),
    }
    parameters = {**task["metadata"], **figures}
    metadata = provenance(PROVENANCE_STEP, parameters, inputs=[data_path])
    save_npz(
        task["output_path"],
        {
            KEY_OBJECT: stitched.object,
            KEY_X: dataset.xcoords.astype(np.float64),
            KEY_Y: dataset.ycoords.astype(np.float64),
            KEY_COVERAGE: stitched.coverage,
            KEY_METADATA: np.array(json.dumps(metadata, sort_keys=True)),
        },
    )
    figures["data_sha256"] = metadata["inputs"][0]["sha256"]
    figures["output_path"] = str(task["output_path"])
    figures["total_seconds"] = time.perf_counter() - started
    logger.info(
        "%s on %s: %d patterns in %.3f s (%.1f patterns/s), stitched to %s",
        task["model"], data_path, dataset.n_patterns, inference_seconds,
        figures["patterns_per_second"] or float("nan"), task["output_path"],
    )
    return figures


def set_cpu_threads(backend: str | None, threads: int) -> int | None:
    """Set the CPU threads of the bundle's framework and return the count, or None when left unset.

    PyTorch gets `threads`, or the PyTorch backend's training default when 0. The default
    matters: on a machine with 2 shared CPU cores, the compact gridsize-2 PINN at N = 32
    predicted 340-440 groups/s with one thread and 80-95 groups/s with two (batches of 32).
    """
    if backend != "pytorch":
        # TODO: TensorFlow fixes its thread pools when it initialises, which happens while
        # the bundle loads, so its threads can only be set by the TensorFlow backend.
        return None
    import torch

    from fly64.backends.pytorch.runtime import DEFAULT_CPU_THREADS

    count = threads or DEFAULT_CPU_THREADS
    torch.set_num_threads(count)
    return count


def _group(dataset: Dataset, group_size: int, neighbor_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return int64 (G, C) member indices and float32 (G, C, 2) offsets for the model's C."""
    positions_xy = dataset.positions_xy
    if group_size == 1:
        groups = np.arange(dataset.n_patterns, dtype=np.int64)[:, None]
        return groups, np.zeros((dataset.n_patterns, 1, 2), dtype=np.float32)
    groups = build_groups(positions_xy, neighbor_count, group_size, seed)
    return groups, group_offsets_px(positions_xy, groups)


def run_spec(spec: dict[str, Any], result_path: Path) -> bool:
    """Run every task of a validated spec, rewriting `result_path` after each; return True when all completed."""
    results: list[dict[str, Any]] = []
    for task in spec["tasks"]:
        try:
            entry = {"status": STATUS_COMPLETED, **run_task(task, spec)}
        except Exception as error:
            logger.exception("%s on %s failed", task["model"], task["data_path"])
            entry = {
                "status": STATUS_FAILED,
                "model": task["model"],
                "output_path": str(task["output_path"]),
                "error": f"{type(error).__name__}: {error}",
                "input_error": isinstance(error, InputError),
            }
        results.append(entry)
        all_completed = all(result["status"] == STATUS_COMPLETED for result in results)
        write_json(result_path, {"status": STATUS_COMPLETED if all_completed else STATUS_FAILED, "tasks": results})
    return all(result["status"] == STATUS_COMPLETED for result in results)


def main(argv: list[str] | None = None) -> int:
    """Run `SPEC.json`, write `RESULT.json`, and return the exit code."""
    _send_stdout_to_stderr()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2:
        logger.error("usage: python -m fly64.inference.worker SPEC.json RESULT.json")
        return EXIT_INPUT_ERROR
    spec_path, result_path = Path(arguments[0]), Path(arguments[1])
    try:
        spec = read_spec(spec_path)
    except InputError as error:
        logger.error("%s", error)
        write_json(result_path, {"status": STATUS_FAILED, "error": str(error), "tasks": []})
        return EXIT_INPUT_ERROR
    logger.info("fly64 %s inference worker: %d task(s)", __version__, len(spec["tasks"]))
    return EXIT_OK if run_spec(spec, result_path) else EXIT_FAILED


def _task(task: Any, index: int, spec_path: Path, default_seed: int) -> dict[str, Any]:
    where = f"{spec_path}: tasks[{index}]"
    if not isinstance(task, dict):
        raise InputError(f"{where} is a {type(task).__name__}; expected an object")
    unknown = sorted(set(task) - TASK_KEYS)
    if unknown:
        raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(TASK_KEYS))}")
    for key in ("model", "bundle_path", "data_path", "output_path"):
        if not isinstance(task.get(key), str) or not task[key]:
            raise InputError(f"{where} key {key} is missing or not a non-empty string")
    metadata = task.get("metadata", {})
    if not isinstance(metadata, dict):
        raise InputError(f"{where} key metadata is a {type(metadata).__name__}; expected an object")
    seed = _integer(task, "grouping_seed", default_seed, 0, spec_path)
    return {**task, "metadata": metadata, "grouping_seed": seed}


def _stitching(table: Any, spec_path: Path) -> dict[str, float]:
    if not isinstance(table, dict) or set(table) - {"central_fraction", "min_weight"}:
        raise InputError(f"{spec_path}: spec key stitching must be an object with central_fraction and min_weight")
    settings = {
        "central_fraction": table.get("central_fraction", DEFAULT_CENTRAL_FRACTION),
        "min_weight": table.get("min_weight", DEFAULT_MIN_WEIGHT),
    }
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{spec_path}: spec key stitching.{key} = {value!r}; expected a number")
    return {key: float(value) for key, value in settings.items()}


def _integer(document: dict[str, Any], key: str, default: int, minimum: int, spec_path: Path) -> int:
    value = document.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{spec_path}: spec key {key} = {value!r}; expected an integer >= {minimum}")
    return value


def _send_stdout_to_stderr() -> None:
    """Point file descriptor 1 and `sys.stdout` at stderr, so nothing (even from C code) reaches stdout."""
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), 1)
    sys.stdout = sys.stderr


if __name__ == "__main__":
    sys.exit(main())
