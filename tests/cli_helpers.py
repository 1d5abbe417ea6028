"""Run the installed `fly64` command in a subprocess, as users and scripts do."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def fly64_executable() -> str:
    """Return the `fly64` console script of the running interpreter's environment."""
    beside_python = Path(sys.executable).parent / "fly64"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("fly64")
    assert found, "the fly64 command is not installed; run `pip install -e .`"
    return found


def run_fly64(*arguments, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `fly64 ARGUMENTS...` and return the completed process with text stdout and stderr."""
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [fly64_executable(), *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=environment,
    )
