"""The NPZ data contract: round trip, determinism and every rejected input."""

import json
import zipfile

import numpy as np
import pytest

from fly64.atomic import save_npz, sha256_file
from fly64.contract import Dataset, load_dataset, save_dataset
from fly64.errors import DataContractError


def small_dataset(n=6, size=8) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        diffraction=rng.random((n, size, size), dtype=np.float32),
        object=np.exp(1j * rng.random((32, 32))).astype(np.complex64),
        probe=np.ones((size, size), np.complex64) / size,
        xcoords=np.linspace(8, 20, n),
        ycoords=np.linspace(9, 21, n),
        patches=np.ones((n, size, size), np.complex64),
        scan_index=np.arange(n),
        metadata={"step": "test", "dose": 1e3},
    )


def raw_arrays(dataset: Dataset) -> dict:
    return {
        "diffraction": dataset.diffraction,
        "objectGuess": dataset.object,
        "probeGuess": dataset.probe,
        "xcoords": dataset.xcoords,
        "ycoords": dataset.ycoords,
        "_metadata": np.array(json.dumps({})),
    }


def test_dataset_round_trip(tmp_path):
    original = small_dataset()
    save_dataset(tmp_path / "d.npz", original)
    loaded = load_dataset(tmp_path / "d.npz")
    np.testing.assert_array_equal(loaded.diffraction, original.diffraction)
    np.testing.assert_array_equal(loaded.patches, original.patches)
    assert loaded.metadata == {"step": "test", "dose": 1e3}
    assert loaded.diffraction.dtype == np.float32
    assert loaded.object.dtype == np.complex64


def test_dataset_loads_without_pickle(tmp_path):
    save_dataset(tmp_path / "d.npz", small_dataset())
    with np.load(tmp_path / "d.npz", allow_pickle=False) as archive:
        assert archive["_metadata"].dtype.kind == "U"
        assert archive["xcoords"].dtype == np.float64
        assert archive["scan_index"].dtype == np.int64


def test_dataset_bytes_are_reproducible(tmp_path):
    save_dataset(tmp_path / "a.npz", small_dataset())
    save_dataset(tmp_path / "b.npz", small_dataset())
    assert sha256_file(tmp_path / "a.npz") == sha256_file(tmp_path / "b.npz")


def test_legacy_diff3d_key_read(tmp_path):
    arrays = raw_arrays(small_dataset())
    arrays["diff3d"] = arrays.pop("diffraction")
    save_npz(tmp_path / "legacy.npz", arrays)
    assert load_dataset(tmp_path / "legacy.npz").n_patterns == 6


def test_missing_key_named(tmp_path):
    arrays = raw_arrays(small_dataset())
    del arrays["probeGuess"]
    save_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(DataContractError, match=r"bad.npz: missing key\(s\) probeGuess"):
        load_dataset(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("diffraction", lambda a: a.astype(np.complex64), "key diffraction is complex"),
        ("diffraction", lambda a: np.where(a > 0.5, np.nan, a).astype(np.float32), "key diffraction contains NaN"),
        ("diffraction", lambda a: a - 2.0, "key diffraction contains negative"),
        ("objectGuess", lambda a: np.abs(a), "key objectGuess is real"),
        ("xcoords", lambda a: a[:-1], r"key xcoords has shape \(5,\); expected \(6,\)"),
        ("ycoords", lambda a: np.append(a, 1.0), r"key ycoords has shape \(7,\)"),
        ("probeGuess", lambda a: a[:4, :4], "key probeGuess has shape"),
    ],
)
def test_invalid_values_named(tmp_path, key, value, message):
    arrays = raw_arrays(small_dataset())
    arrays[key] = value(arrays[key])
    save_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(DataContractError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_missing_file_named(tmp_path):
    with pytest.raises(DataContractError, match="absent.npz: dataset file not found"):
        load_dataset(tmp_path / "absent.npz")


def test_not_a_zip_named(tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(DataContractError, match="text.npz: not a readable NPZ"):
        load_dataset(tmp_path / "text.npz")


def test_object_array_rejected_on_read(tmp_path):
    arrays = raw_arrays(small_dataset())
    np.savez(tmp_path / "pickled.npz", **arrays, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataContractError, match="pickled.npz: not a readable NPZ"):
        load_dataset(tmp_path / "pickled.npz")


def test_object_array_rejected_on_write(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_npz(tmp_path / "x.npz", {"a": np.array([None], dtype=object)})
    assert not any(tmp_path.iterdir())


def test_failed_write_keeps_old_file(tmp_path):
    save_dataset(tmp_path / "d.npz", small_dataset())
    before = sha256_file(tmp_path / "d.npz")
    broken = small_dataset()
    broken.xcoords = broken.xcoords[:2]
    with pytest.raises(DataContractError):
        save_dataset(tmp_path / "d.npz", broken)
    assert sha256_file(tmp_path / "d.npz") == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d.npz"]


def test_npz_members_have_fixed_timestamps(tmp_path):
    save_dataset(tmp_path / "d.npz", small_dataset())
    with zipfile.ZipFile(tmp_path / "d.npz") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
