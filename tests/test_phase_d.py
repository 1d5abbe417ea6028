"""End-to-end tests of Phase D on a small synthetic Phase C written in the test."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fly64.contract import Dataset, load_dataset, save_dataset
from fly64.errors import InputError
from fly64.physics.overlap import spacing_for_overlap_px
from studies.fly64_dose_overlap.config import parse_config
from studies.fly64_dose_overlap.overlap import generate_phase_d, view_metrics

PATCH_SIZE = 16
RASTER_SIDE = 20
RASTER_STEP_PX = 2.0
DOSES = (1e3, 1e4)
# Spacing thresholds (1 - f) * 16: dense 4.8 px, sparse 12.8 px, sparsest 16 px. On a
# 2 px raster of 400 positions they keep 69, 9 and 6 positions; 6 < K = 7 is too few.
VIEWS = {"dense": 0.7, "sparse": 0.2, "sparsest": 0.0}
METRIC_KEYS = {
    "view",
    "split",
    "dose",
    "n_input",
    "n_selected",
    "subsampling_fraction",
    "spacing_threshold_px",
    "target_overlap_fraction",
    "probe_diameter_px",
    "probe_diameter_method",
    "image_overlap",
    "group_overlap",
    "group_to_group_overlap",
    "mean_nearest_neighbor_spacing_px",
    "spacing_rule",
}


def make_config():
    return parse_config(
        {"study": {"dose_list": list(DOSES), "patch_size_pixels": PATCH_SIZE, "overlap_views": VIEWS}},
        source="test",
    )


def write_phase_c(phase_c_root: Path) -> None:
    rng = np.random.default_rng(7)
    rows, columns = np.indices((PATCH_SIZE, PATCH_SIZE))
    probe = ((rows - 7.5) ** 2 + (columns - 7.5) ** 2 <= 25.0).astype(np.complex64)
    object_array = np.exp(1j * rng.uniform(-1, 1, (80, 80))).astype(np.complex64)
    grid_rows, grid_columns = np.mgrid[0:RASTER_SIDE, 0:RASTER_SIDE] * RASTER_STEP_PX
    n_positions = RASTER_SIDE * RASTER_SIDE

    for split, y_start_px in (("train", 10.0), ("test", 30.0)):
        for dose in DOSES:
            dataset = Dataset(
                diffraction=rng.uniform(0, math.sqrt(dose), (n_positions, PATCH_SIZE, PATCH_SIZE)).astype(np.float32),
                object=object_array,
                probe=probe,
                xcoords=grid_columns.ravel() + 10.0,
                ycoords=grid_rows.ravel() + y_start_px,
                patches=np.ones((n_positions, PATCH_SIZE, PATCH_SIZE), dtype=np.complex64),
                scan_index=np.arange(n_positions, dtype=np.int64),
                metadata={"step": "phase_c", "parameters": {"dose": dose}},
            )
            save_dataset(phase_c_root / f"dose_{int(dose)}" / f"patched_{split}.npz", dataset)


@pytest.fixture
def phase_d_run(tmp_path):
    phase_c_root = tmp_path / "phase_c"
    phase_d_root = tmp_path / "phase_d"
    write_phase_c(phase_c_root)
    summary = generate_phase_d(make_config(), phase_c_root, phase_d_root)
    return phase_c_root, phase_d_root, summary


def read_metrics(phase_d_root: Path, dose: float, view: str, split: str) -> dict:
    path = phase_d_root / f"dose_{int(dose)}" / view / f"{view}_{split}_metrics.json"
    return json.loads(path.read_text())


def test_phase_d_file_names(phase_d_run):
    _, phase_d_root, _ = phase_d_run
    expected = {
        f"dose_{int(dose)}/{view}/{view}_{split}{suffix}"
        for dose in DOSES
        for view in ("dense", "sparse")
        for split in ("train", "test")
        for suffix in (".npz", "_metrics.json")
    }

    written = {path.relative_to(phase_d_root).as_posix() for path in phase_d_root.rglob("*") if path.is_file()}

    assert written == expected


def test_phase_d_metrics_keys(phase_d_run):
    _, phase_d_root, _ = phase_d_run

    metrics = read_metrics(phase_d_root, 1e3, "dense", "train")

    assert METRIC_KEYS <= set(metrics)
    assert metrics["view"] == "dense"
    assert metrics["split"] == "train"
    assert metrics["dose"] == 1e3


def test_phase_d_exact_count(phase_d_run):
    _, phase_d_root, _ = phase_d_run

    metrics = read_metrics(phase_d_root, 1e3, "dense", "train")

    assert metrics["n_input"] == 400
    assert metrics["n_selected"] == math.floor((RASTER_STEP_PX / 4.8) ** 2 * 400)


def test_phase_d_dense_overlaps_more(phase_d_run):
    _, phase_d_root, _ = phase_d_run

    dense = read_metrics(phase_d_root, 1e4, "dense", "test")
    sparse = read_metrics(phase_d_root, 1e4, "sparse", "test")

    assert dense["image_overlap"] > sparse["image_overlap"]
    assert dense["group_overlap"] > sparse["group_overlap"]
    assert dense["group_to_group_overlap"] > sparse["group_to_group_overlap"]
    assert dense["mean_nearest_neighbor_spacing_px"] < sparse["mean_nearest_neighbor_spacing_px"]


def test_phase_d_npz_load_without_pickle(phase_d_run):
    _, phase_d_root, _ = phase_d_run
    npz_paths = sorted(phase_d_root.rglob("*.npz"))

    assert len(npz_paths) == 8
    for path in npz_paths:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                assert archive[key].dtype != object, f"{path}: key {key}"


def test_phase_d_same_indices_across_doses(phase_d_run):
    _, phase_d_root, _ = phase_d_run

    low = load_dataset(phase_d_root / "dose_1000" / "dense" / "dense_train.npz")
    high = load_dataset(phase_d_root / "dose_10000" / "dense" / "dense_train.npz")

    assert np.array_equal(low.scan_index, high.scan_index)


def test_phase_d_subset_matches_phase_c(phase_d_run):
    phase_c_root, phase_d_root, _ = phase_d_run
    source = load_dataset(phase_c_root / "dose_1000" / "patched_test.npz")

    view = load_dataset(phase_d_root / "dose_1000" / "sparse" / "sparse_test.npz")

    assert np.array_equal(view.diffraction, source.diffraction[view.scan_index])
    assert np.array_equal(view.xcoords, source.xcoords[view.scan_index])
    assert np.array_equal(view.ycoords, source.ycoords[view.scan_index])


def test_phase_d_provenance(phase_d_run):
    phase_c_root, phase_d_root, _ = phase_d_run

    metadata = load_dataset(phase_d_root / "dose_1000" / "dense" / "dense_train.npz").metadata

    assert metadata["step"] == "phase_d"
    assert metadata["parameters"]["view"] == "dense"
    assert metadata["parameters"]["subsampling_seed"] == 456
    assert metadata["inputs"][0]["name"] == "patched_train.npz"
    assert metadata["input_metadata"]["step"] == "phase_c"


def test_phase_d_skips_too_sparse_view(phase_d_run):
    _, phase_d_root, summary = phase_d_run
    skipped = {(entry["dose"], entry["view"], entry["split"]) for entry in summary["skipped_views"]}

    assert skipped == {(dose, "sparsest", split) for dose in DOSES for split in ("train", "test")}
    assert all("neighbor_count" in entry["reason"] for entry in summary["skipped_views"])
    assert summary["skipped_count"] == 4
    assert summary["written_count"] == 8
    assert not (phase_d_root / "dose_1000" / "sparsest").exists()


def test_phase_d_removes_stale_skipped_view(tmp_path):
    phase_c_root = tmp_path / "phase_c"
    phase_d_root = tmp_path / "phase_d"
    write_phase_c(phase_c_root)
    stale_path = phase_d_root / "dose_1000" / "sparsest" / "sparsest_train.npz"
    stale_path.parent.mkdir(parents=True)
    stale_path.write_bytes(b"left by an earlier run")

    generate_phase_d(make_config(), phase_c_root, phase_d_root)

    assert not stale_path.exists()


def test_phase_d_deterministic(tmp_path):
    phase_c_root = tmp_path / "phase_c"
    write_phase_c(phase_c_root)

    generate_phase_d(make_config(), phase_c_root, tmp_path / "first")
    generate_phase_d(make_config(), phase_c_root, tmp_path / "second")

    relative = "dose_10000/dense/dense_test"
    for suffix in (".npz", "_metrics.json"):
        first = (tmp_path / "first" / f"{relative}{suffix}").read_bytes()
        second = (tmp_path / "second" / f"{relative}{suffix}").read_bytes()
        assert first == second, suffix


def test_phase_d_probe_overlap_rule(tmp_path):
    phase_c_root = tmp_path / "phase_c"
    write_phase_c(phase_c_root)
    config = parse_config(
        {
            "study": {"dose_list": list(DOSES), "patch_size_pixels": PATCH_SIZE, "overlap_views": VIEWS},
            "overlap": {"spacing_rule": "probe_overlap"},
        },
        source="test",
    )
    generate_phase_d(config, phase_c_root, tmp_path / "probe_rule")
    generate_phase_d(make_config(), phase_c_root, tmp_path / "patch_rule")

    for view, target in VIEWS.items():
        metrics = read_metrics(tmp_path / "probe_rule", DOSES[0], view, "test")
        assert metrics["spacing_rule"] == "probe_overlap"
        expected_px = spacing_for_overlap_px(target, metrics["probe_diameter_px"])
        assert metrics["spacing_threshold_px"] == pytest.approx(expected_px)

    # The disc probe (about 9.5 px across) is far narrower than N = 16, so the patch-size
    # rule's dense view overlaps far less than its target and the probe rule's comes closer.
    probe_rule = read_metrics(tmp_path / "probe_rule", DOSES[0], "dense", "test")
    patch_rule = read_metrics(tmp_path / "patch_rule", DOSES[0], "dense", "test")
    assert patch_rule["spacing_rule"] == "patch_size"
    assert abs(probe_rule["image_overlap"] - VIEWS["dense"]) < abs(patch_rule["image_overlap"] - VIEWS["dense"])


def test_config_rejects_unknown_spacing_rule():
    with pytest.raises(InputError, match="overlap.spacing_rule"):
        parse_config({"overlap": {"spacing_rule": "window"}}, source="bad.toml")


def test_phase_d_missing_phase_c_raises(tmp_path):
    phase_c_root = tmp_path / "phase_c"
    write_phase_c(phase_c_root)
    missing = phase_c_root / "dose_10000" / "patched_test.npz"
    missing.unlink()

    with pytest.raises(InputError, match="dose_10000/patched_test.npz"):
        generate_phase_d(make_config(), phase_c_root, tmp_path / "phase_d")

    assert not (tmp_path / "phase_d").exists()


def test_view_metrics_gridsize_one_has_no_group_metrics():
    rows, columns = np.mgrid[0:5, 0:5] * 4.0
    positions_xy = np.stack([columns.ravel(), rows.ravel()], axis=1)
    probe = np.ones((PATCH_SIZE, PATCH_SIZE), dtype=np.complex64)

    metrics = view_metrics(positions_xy, probe, neighbor_count=7, group_size=1, grouping_seed=123)

    assert metrics["group_overlap"] is None
    assert metrics["group_to_group_overlap"] is None
    assert metrics["image_overlap"] > 0.0
    assert metrics["mean_nearest_neighbor_spacing_px"] == pytest.approx(4.0)
