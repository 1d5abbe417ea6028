"""Invalid input through the `fly64` command: one-line message, exit code 2, no traceback, no partial file."""

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_fly64
from fly64.atomic import save_npz
from fly64.contract import load_dataset

SMALL_CONFIG = """
[study]
dose_list = [1e3, 1e4]
patch_size_pixels = 32

[simulation]
object_size_px = 160
scan_step_px = 8.0

[training]
epochs = 1
max_train_groups = 16
"""


def write_config(folder: Path, text: str = SMALL_CONFIG, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def files_under(folder: Path) -> list[Path]:
    """Return the artifacts under `folder`; the study lock file is not an artifact."""
    if not folder.exists():
        return []
    return sorted(path for path in folder.rglob("*") if path.is_file() and path.name != ".fly64.lock")


def assert_rejected(result, *fragments: str) -> None:
    """Check exit code 2, a one-line message on stderr naming every fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]
    assert result.stdout == ""


@pytest.fixture(scope="module")
def phase_c_root(tmp_path_factory) -> Path:
    """A real small Phase C output made with the command."""
    folder = tmp_path_factory.mktemp("study")
    config = write_config(folder)
    result = run_fly64("generate", "--root", folder / "root", "--config", config)
    assert result.returncode == 0, result.stderr
    return folder / "root"


def probe_file(folder: Path, **arrays) -> Path:
    path = folder / "probe.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"other": np.ones((8, 8), np.complex64)}, "probeGuess"),
        ({"probeGuess": np.ones((8, 8), np.float32)}, "real"),
        ({"probeGuess": np.ones((8, 6), np.complex64)}, "square"),
        ({"probeGuess": np.ones((64, 64), np.complex64)}, "larger"),
    ],
)
def test_generate_rejects_bad_probe(tmp_path, arrays, fragment):
    probe = probe_file(tmp_path, **arrays)
    result = run_fly64("generate", "--root", tmp_path / "root", "--config", write_config(tmp_path), "--probe", probe)
    assert_rejected(result, "probe.npz")
    assert fragment in result.stderr
    assert files_under(tmp_path / "root") == []


def test_generate_rejects_missing_probe(tmp_path):
    result = run_fly64("generate", "--root", tmp_path / "root", "--config", write_config(tmp_path),
                       "--probe", tmp_path / "absent.npz")
    assert_rejected(result, "absent.npz")
    assert files_under(tmp_path / "root") == []


@pytest.mark.parametrize("command", ["generate", "run"])
def test_bad_probe_creates_no_root(tmp_path, command):
    result = run_fly64(command, "--root", tmp_path / "root", "--config", write_config(tmp_path),
                       "--probe", tmp_path / "absent.npz")
    assert_rejected(result, "absent.npz")
    assert not (tmp_path / "root").exists()


def test_generate_rejects_unreadable_probe(tmp_path):
    (tmp_path / "probe.npz").write_text("not an npz file")
    result = run_fly64("generate", "--root", tmp_path / "root", "--config", write_config(tmp_path),
                       "--probe", tmp_path / "probe.npz")
    assert_rejected(result, "probe.npz")


@pytest.mark.parametrize(
    ("config_text", "fragments"),
    [
        (SMALL_CONFIG + "\n[report]\ncolour = 'red'\n", ("study.toml", "unknown key report.colour")),
        ("[study]\ndose_list = [1e3, -1e4]\n", ("study.toml", "All doses must be positive")),
        ("[study]\nneighbor_count = 3\n", ("study.toml", "neighbor_count")),
        ("[study]\noverlap_views = {dense = 1.2}\n", ("study.toml", "must be in [0, 1)")),
    ],
)
def test_commands_reject_bad_config(tmp_path, config_text, fragments):
    config = write_config(tmp_path, config_text)
    for command in ("generate", "overlap", "train", "run"):
        result = run_fly64(command, "--root", tmp_path / "root", "--config", config)
        assert_rejected(result, *fragments)
    assert files_under(tmp_path / "root") == []


def test_generate_rejects_scan_leaving_object(tmp_path):
    config = write_config(tmp_path, SMALL_CONFIG.replace("object_size_px = 160", "object_size_px = 24"))
    result = run_fly64("generate", "--root", tmp_path / "root", "--config", config)
    assert_rejected(result)
    assert "object" in result.stderr
    assert files_under(tmp_path / "root") == []


def test_train_rejects_unknown_view(tmp_path, phase_c_root):
    result = run_fly64("train", "--root", phase_c_root, "--config", write_config(tmp_path), "--view", "medium")
    assert_rejected(result, "--view", "medium")


def test_train_rejects_unknown_backend(tmp_path, phase_c_root):
    result = run_fly64("train", "--root", phase_c_root, "--config", write_config(tmp_path), "--backend", "jax")
    assert result.returncode == 2
    assert "--backend" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_rejects_filters_matching_no_job(tmp_path, phase_c_root):
    result = run_fly64("train", "--root", phase_c_root, "--config", write_config(tmp_path),
                       "--view", "baseline", "--gridsize", "2")
    assert_rejected(result, "match no job")
    result = run_fly64("train", "--root", phase_c_root, "--config", write_config(tmp_path), "--dose", "5e2")
    assert_rejected(result, "--dose", "500")
    assert not (phase_c_root / "phase_e" / "training_manifest.json").exists()


def test_train_records_missing_views(tmp_path, phase_c_root):
    result = run_fly64("train", "--root", phase_c_root, "--config", write_config(tmp_path), "--view", "dense")
    assert_rejected(result, "skip_summary.json")
    summary = json.loads((phase_c_root / "phase_e" / "skip_summary.json").read_text())
    assert summary["skipped_count"] == 2
    assert {entry["view"] for entry in summary["skipped_views"]} == {"dense"}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda arrays: arrays.pop("xcoords"), "missing key(s) xcoords"),
        (lambda arrays: arrays.update(diffraction=arrays["diffraction"].astype(np.complex64)), "key diffraction is complex"),
        (lambda arrays: arrays.update(ycoords=arrays["ycoords"][:-1]), "key ycoords has shape"),
        (lambda arrays: arrays.update(diffraction=np.full_like(arrays["diffraction"], np.nan)), "key diffraction contains NaN"),
        (lambda arrays: arrays.update(diffraction=-arrays["diffraction"] - 1), "key diffraction contains negative"),
    ],
)
def test_overlap_rejects_broken_phase_c(tmp_path, phase_c_root, change, fragment):
    root = tmp_path / "root"
    source = phase_c_root / "data" / "phase_c"
    for path in source.rglob("*.npz"):
        target = root / "data" / "phase_c" / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    broken = root / "data" / "phase_c" / "dose_1000" / "patched_train.npz"
    with np.load(broken, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    save_npz(broken, arrays)

    result = run_fly64("overlap", "--root", root, "--config", write_config(tmp_path))
    assert_rejected(result, "patched_train.npz", fragment)
    assert files_under(root / "data" / "phase_d") == []


def test_overlap_rejects_missing_phase_c(tmp_path):
    result = run_fly64("overlap", "--root", tmp_path / "root", "--config", write_config(tmp_path))
    assert_rejected(result, "patched_train.npz")


def test_generate_output_passes_contract(phase_c_root):
    for path in sorted((phase_c_root / "data" / "phase_c").rglob("*.npz")):
        assert load_dataset(path).n_patterns > 0
