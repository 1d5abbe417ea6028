"""Phase C generation: files per dose, the split, provenance and rejected inputs."""

import numpy as np
import pytest

from fly64.contract import load_dataset
from fly64.errors import InputError
from fly64.physics.patches import extract_patches
from studies.fly64_dose_overlap.config import parse_config
from studies.fly64_dose_overlap.generation import generate_phase_c

DOSES = [1e3, 1e5]


def small_config(**simulation):
    settings = {"object_size_px": 128, "scan_step_px": 8.0, "chunk_patterns": 50}
    settings.update(simulation)
    return parse_config(
        {"study": {"patch_size_pixels": 32, "dose_list": DOSES}, "simulation": settings},
        source="test",
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase_c")
    summary = generate_phase_c(small_config(), root)
    return root, summary


def test_generation_writes_files(generated):
    root, _ = generated
    for folder in ("dose_1000", "dose_100000"):
        assert (root / folder / "patched_train.npz").is_file()
        assert (root / folder / "patched_test.npz").is_file()


def test_generation_files_load_without_pickle(generated):
    root, _ = generated
    with np.load(root / "dose_1000" / "patched_train.npz", allow_pickle=False) as archive:
        keys = set(archive.files)
    assert keys == {"diffraction", "Y", "objectGuess", "probeGuess", "xcoords", "ycoords", "scan_index", "_metadata"}


def test_generation_contract_dtypes(generated):
    root, _ = generated
    dataset = load_dataset(root / "dose_1000" / "patched_test.npz")
    assert dataset.diffraction.dtype == np.float32
    assert dataset.patches.shape == dataset.diffraction.shape
    assert dataset.probe.shape == (32, 32)
    assert dataset.object.shape == (128, 128)


def test_generation_split_along_y(generated):
    root, summary = generated
    train = load_dataset(root / "dose_1000" / "patched_train.npz")
    test = load_dataset(root / "dose_1000" / "patched_test.npz")
    split_px = train.metadata["parameters"]["split"]["split_coordinate_px"]
    assert train.ycoords.max() < split_px
    assert test.ycoords.min() >= split_px
    assert train.n_patterns + test.n_patterns == summary["n_positions"]


def test_generation_split_fraction(generated):
    root, _ = generated
    train = load_dataset(root / "dose_1000" / "patched_train.npz")
    test = load_dataset(root / "dose_1000" / "patched_test.npz")
    all_y = np.concatenate([train.ycoords, test.ycoords])
    low, high = all_y.min(), all_y.max()
    assert train.metadata["parameters"]["split"]["split_coordinate_px"] == pytest.approx(low + 0.8 * (high - low))


def test_generation_scan_index_covers_scan(generated):
    root, summary = generated
    train = load_dataset(root / "dose_1000" / "patched_train.npz")
    test = load_dataset(root / "dose_1000" / "patched_test.npz")
    indices = np.sort(np.concatenate([train.scan_index, test.scan_index]))
    assert np.array_equal(indices, np.arange(summary["n_positions"]))


def test_generation_same_positions_every_dose(generated):
    root, _ = generated
    low = load_dataset(root / "dose_1000" / "patched_train.npz")
    high = load_dataset(root / "dose_100000" / "patched_train.npz")
    assert np.array_equal(low.xcoords, high.xcoords)
    assert np.array_equal(low.ycoords, high.ycoords)
    assert np.array_equal(low.patches, high.patches)
    assert not np.array_equal(low.diffraction, high.diffraction)


def test_generation_ground_truth_patches(generated):
    root, _ = generated
    dataset = load_dataset(root / "dose_1000" / "patched_train.npz")
    expected = extract_patches(dataset.object, dataset.positions_xy, 32)
    assert np.array_equal(dataset.patches, expected)


def test_generation_measured_dose(generated):
    _, summary = generated
    for dose in summary["doses"]:
        assert dose["measured_matches_nominal_dose"] is True
        assert dose["mean_photons_per_pattern"] == pytest.approx(dose["dose_photons"], rel=0.05)


def test_generation_provenance(generated):
    root, _ = generated
    metadata = load_dataset(root / "dose_100000" / "patched_test.npz").metadata
    parameters = metadata["parameters"]
    assert metadata["step"] == "phase_c"
    assert parameters["dose_photons"] == 1e5
    assert parameters["seed"] == 42
    assert parameters["patch_size_pixels"] == 32
    assert parameters["probe"] == {"source": "embedded default"}
    assert parameters["split"]["part"] == "test"
    assert parameters["scale_factor"] > 0
    assert parameters["measured_matches_nominal_dose"] is True


def test_generation_split_photons(generated):
    root, summary = generated
    dataset = load_dataset(root / "dose_1000" / "patched_train.npz")
    recorded = dataset.metadata["parameters"]["split"]["measured_mean_photons_per_pattern"]
    measured = np.square(dataset.diffraction.astype(np.float64)).sum(axis=(1, 2)).mean()
    assert recorded == pytest.approx(measured, rel=1e-6)
    assert summary["doses"][0]["train_mean_photons_per_pattern"] == pytest.approx(recorded)


def test_generation_deterministic(generated, tmp_path):
    root, _ = generated
    generate_phase_c(small_config(), tmp_path)
    first = load_dataset(root / "dose_100000" / "patched_train.npz")
    second = load_dataset(tmp_path / "dose_100000" / "patched_train.npz")
    assert np.array_equal(first.diffraction, second.diffraction)


def test_generation_real_probe(tmp_path, fly64_probe_path):
    config = parse_config(
        {
            "study": {"patch_size_pixels": 64, "dose_list": [1e4]},
            "simulation": {"object_size_px": 160, "scan_step_px": 16.0, "scan_pattern": "spiral"},
        },
        source="test",
    )
    summary = generate_phase_c(config, tmp_path, probe_path=fly64_probe_path)
    dataset = load_dataset(tmp_path / "dose_10000" / "patched_train.npz")
    assert summary["probe"]["source"] == fly64_probe_path.name
    assert dataset.metadata["parameters"]["probe"]["sha256"] == summary["probe"]["sha256"]
    assert dataset.metadata["inputs"][0]["name"] == fly64_probe_path.name
    assert np.sum(np.abs(dataset.probe) ** 2) == pytest.approx(1.0, rel=1e-5)


def test_generation_bad_probe_writes_nothing(tmp_path):
    probe_path = tmp_path / "real_valued_probe.npz"
    np.savez(probe_path, probeGuess=np.ones((32, 32), np.float32))
    with pytest.raises(InputError, match="real dtype"):
        generate_phase_c(small_config(), tmp_path / "out", probe_path=probe_path)
    assert not (tmp_path / "out").exists()


def test_generation_scan_too_coarse(tmp_path):
    with pytest.raises(InputError, match="do not split into train and test"):
        generate_phase_c(small_config(scan_step_px=200.0), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_generation_object_too_small(tmp_path):
    with pytest.raises(InputError, match="cannot hold"):
        generate_phase_c(small_config(object_size_px=32), tmp_path / "out")
    assert not (tmp_path / "out").exists()
