"""Shared test fixtures: the real fly64 probe file and small study configs."""

import os
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def real_probe_path() -> Path:
    """Return the real fly64 probe: $FLY64_PROBE, else ../shared/data/fly64_probe.npz beside the checkout."""
    configured = os.environ.get("FLY64_PROBE")
    if configured:
        return Path(configured)
    return REPOSITORY_ROOT.parent / "shared" / "data" / "fly64_probe.npz"


@pytest.fixture(scope="session")
def fly64_probe_path() -> Path:
    path = real_probe_path()
    assert path.is_file(), f"real probe file {path} not found; set FLY64_PROBE to its path"
    return path
