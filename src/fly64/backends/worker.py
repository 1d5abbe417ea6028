"""Run one training job in this process: `python -m fly64.backends.worker SPEC.json RESULT.json`.

The spec is a JSON object as `fly64.backends.base.JobSpec` describes; its `backend`
selects `fly64.backends.<backend>.job.run_job`. The result is written atomically to
RESULT.json in every case where the arguments are usable:

- exit 0: the job completed; the result has `"status": "completed"` and its figures;
- exit 1: the job failed or was interrupted (SIGTERM, Ctrl-C); the result is
  `{"status": "failed", "error": "...", "error_type": ...}`;
- exit 2: wrong command-line arguments; no result is written.

Nothing goes to stdout: file descriptor 1 is pointed at stderr at start, so that output
of libraries (C extensions included) joins the log. Logs go to stderr.
"""

import json
import logging
import os
import sys
from typing import Any

from fly64.atomic import write_json
from fly64.backends import backend_module
from fly64.errors import InputError

logger = logging.getLogger(__name__)

USAGE = "usage: python -m fly64.backends.worker SPEC.json RESULT.json"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    """Run the job named by the spec file and write its result; return the exit status."""
    _redirect_stdout_to_stderr()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)

    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 2:
        logger.error("expected 2 arguments, got %d; %s", len(arguments), USAGE)
        return 2
    spec_path, result_path = arguments

    backend = None
    try:
        spec = _read_spec(spec_path)
        backend = spec.get("backend")
        if not isinstance(backend, str):
            raise InputError(f"{spec_path}: key backend is {backend!r}; expected 'pytorch' or 'tensorflow'")
        result = backend_module(backend, "job").run_job(spec)
        write_json(result_path, result)
    except (KeyboardInterrupt, SystemExit) as error:
        # Lightning turns SIGTERM into SystemExit with status 0; an interrupted job must not look successful.
        logger.error("Job interrupted (%s)", type(error).__name__)
        _write_failure(result_path, backend, "job interrupted before it finished", error)
        return 1
    except InputError as error:
        logger.error("Job failed: %s", error)
        _write_failure(result_path, backend, str(error), error)
        return 1
    except Exception as error:
        logger.exception("Job failed")
        _write_failure(result_path, backend, str(error) or type(error).__name__, error)
        return 1
    logger.info("Job completed; result written to %s", result_path)
    return 0


def _write_failure(result_path: str, backend: Any, message: str, error: BaseException) -> None:
    write_json(result_path, {"status": "failed", "error": message, "error_type": type(error).__name__, "backend": backend})


def _redirect_stdout_to_stderr() -> None:
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), 1)
    sys.stdout = sys.stderr


def _read_spec(path: str) -> dict[str, Any]:
    """Read the JSON spec file.

    Raises:
        InputError: the file is missing, unreadable, not JSON, or not a JSON object.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            spec = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: job spec file not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read job spec ({error.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: job spec is not valid JSON ({error})") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: job spec is a JSON {type(spec).__name__}; expected an object")
    return spec


if __name__ == "__main__":
    sys.exit(main())
