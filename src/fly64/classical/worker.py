"""Run one classical reconstruction in a process of its own.

    python -m fly64.classical.worker SPEC.json RESULT.json

pty-chi changes torch's process-wide defaults, so each reconstruction runs in a fresh
interpreter. The spec is a JSON object:

| key            | type   | default    | meaning                                                   |
| -------------- | ------ | ---------- | --------------------------------------------------------- |
| `dataset`      | string | (required) | NPZ dataset following `fly64.contract`                    |
| `output`       | string | (required) | NPZ file to write with the reconstructed object           |
| `epochs`       | int    | 50         | LSQML epochs                                              |
| `batch_size`   | int    | 32         | patterns per minibatch                                    |
| `max_patterns` | int    | 0          | use at most this many patterns (seeded subset); 0 = all   |
| `seed`         | int    | 0          | seed of the subset and of pty-chi's minibatches           |
| `noise_model`  | string | "gaussian" | "gaussian" or "poisson"                                   |
| `threads`      | int    | 0          | torch CPU threads; 0 keeps torch's default                |

Relative paths are resolved against the folder of the spec file. The dose scale factor
comes from the dataset's provenance, `_metadata["parameters"]["scale_factor"]`, and is
estimated from the mean counts when that key is missing.

The output NPZ contains `object` (complex64 (M, M)), `xcoords` and `ycoords` (float64, the
positions used) and `_metadata` (JSON provenance with the options and timings). The
result JSON contains `status` ("ok" or "failed"), `error`, the paths, the output's SHA-256,
pattern counts, the scale factor and its source, `timings_s` and `options`. It is written
on failure too, when its path is known.

Exit codes: 0 on success, 2 for invalid input (spec, dataset or arguments), 1 for any
other failure. The worker writes nothing to stdout, and logs go to stderr.
"""

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fly64.atomic import save_npz, sha256_file, write_json
from fly64.contract import KEY_METADATA, KEY_X, KEY_Y, Dataset, load_dataset, provenance
from fly64.errors import InputError, JobFailedError

logger = logging.getLogger(__name__)

KEY_RECONSTRUCTED_OBJECT = "object"
PROVENANCE_STEP = "classical_lsqml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT_ERROR = 2


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """One classical reconstruction job; the fields are the spec keys of the module docstring."""

    dataset: str
    output: str
    epochs: int = 50
    batch_size: int = 32
    max_patterns: int = 0
    seed: int = 0
    noise_model: str = "gaussian"
    threads: int = 0

    @classmethod
    def from_json(cls, document: Any, source: str) -> "WorkerSpec":
        """Validate a parsed spec; `source` names the spec file in error messages.

        Raises:
            InputError: the document is not an object, a key is unknown or missing, or a
                value has the wrong type or range.
        """
        if not isinstance(document, dict):
            raise InputError(f"{source}: spec is {type(document).__name__}; expected a JSON object")
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(document) - set(known))
        if unknown:
            raise InputError(f"{source}: unknown spec key(s) {', '.join(unknown)}; expected keys {', '.join(known)}")
        for required in ("dataset", "output"):
            if not isinstance(document.get(required), str) or not document[required]:
                raise InputError(f"{source}: spec key {required!r} is missing or not a path string")
        for name in ("epochs", "batch_size", "max_patterns", "seed", "threads"):
            value = document.get(name, known[name].default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise InputError(f"{source}: spec key {name!r} is {value!r}; expected an integer")
        spec = cls(**document)
        if spec.epochs < 1 or spec.batch_size < 1:
            raise InputError(f"{source}: epochs and batch_size are {spec.epochs} and {spec.batch_size}; expected >= 1")
        if spec.max_patterns < 0 or spec.seed < 0 or spec.threads < 0:
            raise InputError(f"{source}: max_patterns, seed and threads must be >= 0")
        if spec.noise_model not in ("gaussian", "poisson"):
            raise InputError(f"{source}: spec key 'noise_model' is {spec.noise_model!r}; expected 'gaussian' or 'poisson'")
        return spec


def run_worker(
    spec: WorkerSpec,
    spec_path: str | os.PathLike,
    result_path: str | os.PathLike,
    log_path: str | os.PathLike | None = None,
    timeout_s: float | None = None,
) -> dict:
    """Write `spec` to `spec_path`, run the worker in a new interpreter and return its result JSON.

    The worker's stderr goes to `log_path` (appended) or to this process's stderr.

    Raises:
        JobFailedError: the worker exited with a non-zero code, timed out or wrote no
            result. The message carries the worker's error.
    """
    write_json(spec_path, dataclasses.asdict(spec))
    command = [sys.executable, "-m", "fly64.classical.worker", str(spec_path), str(result_path)]
    log_handle = open(log_path, "ab") if log_path is not None else None
    try:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_handle, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise JobFailedError(f"classical reconstruction of {spec.dataset} timed out after {timeout_s} s") from error
    finally:
        if log_handle is not None:
            log_handle.close()

    result: dict | None = None
    if Path(result_path).is_file():
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    if completed.returncode != EXIT_OK or result is None or result.get("status") != "ok":
        reason = result.get("error") if result else "no result file"
        raise JobFailedError(
            f"classical reconstruction of {spec.dataset} failed with exit code {completed.returncode}: {reason}"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the job of `SPEC.json` and write `RESULT.json`; return the exit code."""
    _send_stdout_to_stderr()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2:
        logger.error("usage: python -m fly64.classical.worker SPEC.json RESULT.json")
        return EXIT_INPUT_ERROR

    spec_path, result_path = Path(arguments[0]), Path(arguments[1])
    result: dict[str, Any] = {"status": "failed", "error": None, "spec": str(spec_path)}
    exit_code = EXIT_FAILED
    try:
        result.update(_run(spec_path))
        result["status"] = "ok"
        exit_code = EXIT_OK
    except InputError as error:
        logger.error("%s", error)
        result["error"] = str(error)
        exit_code = EXIT_INPUT_ERROR
    except Exception as error:
        logger.exception("classical reconstruction failed")
        result["error"] = f"{type(error).__name__}: {error}"

    try:
        write_json(result_path, result)
    except OSError as error:
        logger.error("cannot write result file %s: %s", result_path, error)
        return exit_code if exit_code != EXIT_OK else EXIT_FAILED
    return exit_code


def _run(spec_path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    spec = _read_spec(spec_path)
    dataset_path = _resolve(spec.dataset, spec_path)
    output_path = _resolve(spec.output, spec_path)

    dataset = load_dataset(dataset_path)
    indices = _pattern_subset(dataset.n_patterns, spec.max_patterns, spec.seed)
    subset = dataset.subset(indices)
    scale_factor, scale_source = _scale_factor(dataset, dataset_path)
    loaded = time.perf_counter()
    logger.info("loaded %s: %d of %d patterns, scale factor %s", dataset_path, indices.size, dataset.n_patterns, scale_source)

    # Imported here so that a bad spec or dataset fails before torch loads.
    from fly64.classical.ptychi_lsqml import reconstruct_lsqml

    reconstruction = reconstruct_lsqml(
        subset.diffraction,
        subset.probe,
        subset.positions_xy,
        dataset.object.shape,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        scale_factor=scale_factor,
        seed=spec.seed,
        noise_model=spec.noise_model,
        threads=spec.threads,
    )
    reconstructed = time.perf_counter()

    # "reconstruct" includes importing torch and pty-chi; "lsqml" is the task alone.
    timings_s = {"load": loaded - started, "reconstruct": reconstructed - loaded, "lsqml": reconstruction.seconds}
    parameters = {
        "spec": dataclasses.asdict(spec),
        "options": reconstruction.options,
        "scale_factor_source": scale_source,
        "n_patterns_available": dataset.n_patterns,
        "timings_s": timings_s,
    }
    save_npz(
        output_path,
        {
            KEY_RECONSTRUCTED_OBJECT: reconstruction.object.astype(np.complex64),
            KEY_X: subset.xcoords.astype(np.float64),
            KEY_Y: subset.ycoords.astype(np.float64),
            KEY_METADATA: np.array(json.dumps(provenance(PROVENANCE_STEP, parameters, [dataset_path]), sort_keys=True)),
        },
    )
    timings_s["write"] = time.perf_counter() - reconstructed
    timings_s["total"] = time.perf_counter() - started

    return {
        "dataset": str(dataset_path),
        "output": str(output_path),
        "output_sha256": sha256_file(output_path),
        "n_patterns": int(indices.size),
        "n_patterns_available": dataset.n_patterns,
        "scale_factor": reconstruction.options["scale_factor"],
        "scale_factor_source": scale_source,
        "timings_s": timings_s,
        "options": reconstruction.options,
    }


def _read_spec(spec_path: Path) -> WorkerSpec:
    try:
        with open(spec_path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as error:
        raise InputError(f"{spec_path}: spec file not found") from error
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{spec_path}: not a readable JSON spec ({error})") from error
    return WorkerSpec.from_json(document, source=str(spec_path))


def _resolve(path: str, spec_path: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else spec_path.parent / candidate


def _pattern_subset(n_patterns: int, max_patterns: int, seed: int) -> np.ndarray:
    """Return all pattern indices, or `max_patterns` of them drawn with `seed`, in ascending order.

    A random subset, unlike the first `max_patterns`, keeps patterns from the whole scan.
    """
    if max_patterns == 0 or max_patterns >= n_patterns:
        return np.arange(n_patterns, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n_patterns, size=max_patterns, replace=False)
    return np.sort(chosen).astype(np.int64)


def _scale_factor(dataset: Dataset, dataset_path: Path) -> tuple[float | None, str]:
    """Return the dose scale factor from the provenance and its source, or (None, "estimated")."""
    parameters = dataset.metadata.get("parameters")
    if not isinstance(parameters, dict) or "scale_factor" not in parameters:
        logger.warning("%s: no %s parameters.scale_factor; estimating it from the mean counts", dataset_path, KEY_METADATA)
        return None, "estimated"
    value = parameters["scale_factor"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InputError(f"{dataset_path}: {KEY_METADATA} parameters.scale_factor is {value!r}; expected a number > 0")
    return float(value), "metadata"


def _send_stdout_to_stderr() -> None:
    """Point file descriptor 1 and `sys.stdout` at stderr, so nothing (even from C code) reaches stdout."""
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), 1)
    sys.stdout = sys.stderr


if __name__ == "__main__":
    sys.exit(main())
