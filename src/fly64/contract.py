"""The NPZ data contract: key names, dtypes, shapes, and a validating reader and writer.

A dataset file holds:

| key           | dtype, shape          | meaning                                    |
| ------------- | --------------------- | ------------------------------------------ |
| `diffraction` | float32 (n, N, N)     | amplitude, the square root of counts       |
| `Y`           | complex64 (n, N, N)   | ground-truth object patches (optional)     |
| `objectGuess` | complex64 (M, M)      | full object                                |
| `probeGuess`  | complex64 (N, N)      | probe                                      |
| `xcoords`     | float64 (n,)          | patch centres, object pixels (column axis) |
| `ycoords`     | float64 (n,)          | patch centres, object pixels (row axis)    |
| `scan_index`  | int64 (n,)            | optional                                   |
| `_metadata`   | 0-d unicode string    | JSON provenance                            |

The legacy key `diff3d` is read as `diffraction`. Every file loads with
`numpy.load(path, allow_pickle=False)`.
"""

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fly64 import __version__
from fly64.atomic import save_npz, sha256_file
from fly64.errors import DataContractError

KEY_DIFFRACTION = "diffraction"
KEY_DIFFRACTION_LEGACY = "diff3d"
KEY_PATCHES = "Y"
KEY_OBJECT = "objectGuess"
KEY_PROBE = "probeGuess"
KEY_X = "xcoords"
KEY_Y = "ycoords"
KEY_SCAN_INDEX = "scan_index"
KEY_METADATA = "_metadata"

REQUIRED_KEYS = (KEY_DIFFRACTION, KEY_OBJECT, KEY_PROBE, KEY_X, KEY_Y)

# Value checks run over this many patterns at a time, so validation memory stays bounded.
VALIDATION_CHUNK_PATTERNS = 256


@dataclasses.dataclass
class Dataset:
    """Diffraction amplitudes with their scan positions, probe, object and provenance.

    Positions are patch centres in object pixels: `xcoords` along columns and `ycoords`
    along rows of `objectGuess`.
    """

    diffraction: np.ndarray
    object: np.ndarray
    probe: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    patches: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_patterns(self) -> int:
        return int(self.diffraction.shape[0])

    @property
    def patch_size(self) -> int:
        return int(self.diffraction.shape[-1])

    @property
    def positions_xy(self) -> np.ndarray:
        """Scan positions as float64 (n, 2) columns (x, y)."""
        return np.stack([self.xcoords, self.ycoords], axis=1)

    def subset(self, indices: np.ndarray, metadata: dict[str, Any] | None = None) -> "Dataset":
        """Return the patterns at `indices` (in that order) with the same object and probe."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset(
            diffraction=self.diffraction[indices],
            object=self.object,
            probe=self.probe,
            xcoords=self.xcoords[indices],
            ycoords=self.ycoords[indices],
            patches=None if self.patches is None else self.patches[indices],
            scan_index=None if self.scan_index is None else self.scan_index[indices],
            metadata=dict(self.metadata if metadata is None else metadata),
        )


def provenance(step: str, parameters: dict[str, Any], inputs: list[str | os.PathLike] = ()) -> dict:
    """Build the provenance record: producing step, parameters, input files with SHA-256, version.

    Inputs are recorded by file name and SHA-256, not by absolute path, so the same
    inputs give byte-identical files in any study root.
    """
    return {
        "step": step,
        "parameters": parameters,
        "inputs": [{"name": Path(path).name, "sha256": sha256_file(path)} for path in inputs],
        "fly64_version": __version__,
        "numpy_version": np.__version__,
    }


def save_dataset(path: str | os.PathLike, dataset: Dataset) -> None:
    """Validate `dataset` and write it atomically as an NPZ file following the contract."""
    validate_dataset(dataset, source=str(path))
    arrays: dict[str, np.ndarray] = {
        KEY_DIFFRACTION: dataset.diffraction.astype(np.float32, copy=False),
        KEY_OBJECT: dataset.object.astype(np.complex64, copy=False),
        KEY_PROBE: dataset.probe.astype(np.complex64, copy=False),
        KEY_X: dataset.xcoords.astype(np.float64, copy=False),
        KEY_Y: dataset.ycoords.astype(np.float64, copy=False),
    }
    if dataset.patches is not None:
        arrays[KEY_PATCHES] = dataset.patches.astype(np.complex64, copy=False)
    if dataset.scan_index is not None:
        arrays[KEY_SCAN_INDEX] = dataset.scan_index.astype(np.int64, copy=False)
    arrays[KEY_METADATA] = np.array(json.dumps(dataset.metadata, sort_keys=True))
    save_npz(path, arrays)


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate an NPZ dataset.

    Raises:
        DataContractError: the file is missing or unreadable, or a key is missing or contains
            values that break the contract. The message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise DataContractError(f"{path}: dataset file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataContractError(f"{path}: not a readable NPZ file without pickled objects ({error})") from error

    if KEY_DIFFRACTION not in arrays and KEY_DIFFRACTION_LEGACY in arrays:
        arrays[KEY_DIFFRACTION] = arrays.pop(KEY_DIFFRACTION_LEGACY)
    missing = [key for key in REQUIRED_KEYS if key not in arrays]
    if missing:
        raise DataContractError(
            f"{path}: missing key(s) {', '.join(missing)}; a dataset needs {', '.join(REQUIRED_KEYS)}"
        )

    metadata: dict[str, Any] = {}
    if KEY_METADATA in arrays:
        try:
            metadata = json.loads(str(arrays[KEY_METADATA][()]))
        except json.JSONDecodeError as error:
            raise DataContractError(f"{path}: key {KEY_METADATA} is not a JSON string ({error})") from error

    dataset = Dataset(
        diffraction=arrays[KEY_DIFFRACTION],
        object=arrays[KEY_OBJECT],
        probe=arrays[KEY_PROBE],
        xcoords=arrays[KEY_X],
        ycoords=arrays[KEY_Y],
        patches=arrays.get(KEY_PATCHES),
        scan_index=arrays.get(KEY_SCAN_INDEX),
        metadata=metadata,
    )
    validate_dataset(dataset, source=str(path))
    dataset.diffraction = dataset.diffraction.astype(np.float32, copy=False)
    dataset.object = dataset.object.astype(np.complex64, copy=False)
    dataset.probe = dataset.probe.astype(np.complex64, copy=False)
    dataset.xcoords = dataset.xcoords.astype(np.float64, copy=False)
    dataset.ycoords = dataset.ycoords.astype(np.float64, copy=False)
    if dataset.patches is not None:
        dataset.patches = dataset.patches.astype(np.complex64, copy=False)
    return dataset


def validate_dataset(dataset: Dataset, source: str) -> None:
    """Check dtypes, shapes and values against the contract.

    Raises:
        DataContractError: naming `source` and the offending key.
    """

    def fail(key: str, problem: str) -> None:
        raise DataContractError(f"{source}: key {key} {problem}")

    diffraction = np.asarray(dataset.diffraction)
    if np.iscomplexobj(diffraction):
        fail(KEY_DIFFRACTION, "is complex; expected real float32 amplitudes (sqrt of counts)")
    if diffraction.ndim != 3 or diffraction.shape[1] != diffraction.shape[2]:
        fail(KEY_DIFFRACTION, f"has shape {diffraction.shape}; expected (n, N, N)")
    if diffraction.shape[0] == 0:
        fail(KEY_DIFFRACTION, "holds no patterns; expected at least one")
    if not np.issubdtype(diffraction.dtype, np.floating):
        fail(KEY_DIFFRACTION, f"has dtype {diffraction.dtype}; expected float32 amplitudes")
    # min() is NaN when any value is NaN, so one chunked pass checks both conditions
    # without building full-size boolean arrays.
    for start in range(0, diffraction.shape[0], VALIDATION_CHUNK_PATTERNS):
        chunk_minimum = diffraction[start : start + VALIDATION_CHUNK_PATTERNS].min()
        chunk_maximum = diffraction[start : start + VALIDATION_CHUNK_PATTERNS].max()
        if not (np.isfinite(chunk_minimum) and np.isfinite(chunk_maximum)):
            fail(KEY_DIFFRACTION, "contains NaN or infinite values; expected finite amplitudes")
        if chunk_minimum < 0:
            fail(KEY_DIFFRACTION, "contains negative values; amplitudes must be >= 0")

    n_patterns, patch_size = diffraction.shape[0], diffraction.shape[1]

    object_array = np.asarray(dataset.object)
    if not np.iscomplexobj(object_array):
        fail(KEY_OBJECT, "is real; expected a complex64 object")
    if object_array.ndim != 2:
        fail(KEY_OBJECT, f"has shape {object_array.shape}; expected (M, M)")
    if not np.all(np.isfinite(object_array)):
        fail(KEY_OBJECT, "contains NaN or infinite values")

    probe = np.asarray(dataset.probe)
    if not np.iscomplexobj(probe):
        fail(KEY_PROBE, "is real; expected a complex64 probe")
    if probe.shape != (patch_size, patch_size):
        fail(KEY_PROBE, f"has shape {probe.shape}; expected ({patch_size}, {patch_size}) to match the patterns")
    if not np.all(np.isfinite(probe)):
        fail(KEY_PROBE, "contains NaN or infinite values")

    for key, coordinates in ((KEY_X, dataset.xcoords), (KEY_Y, dataset.ycoords)):
        coordinates = np.asarray(coordinates)
        if coordinates.ndim != 1 or coordinates.shape[0] != n_patterns:
            fail(key, f"has shape {coordinates.shape}; expected ({n_patterns},), one value per pattern")
        if not np.all(np.isfinite(coordinates)):
            fail(key, "contains NaN or infinite values")

    if dataset.patches is not None:
        patches = np.asarray(dataset.patches)
        if not np.iscomplexobj(patches):
            fail(KEY_PATCHES, "is real; expected complex64 object patches")
        if patches.shape != diffraction.shape:
            fail(KEY_PATCHES, f"has shape {patches.shape}; expected {diffraction.shape} to match {KEY_DIFFRACTION}")
        for start in range(0, patches.shape[0], VALIDATION_CHUNK_PATTERNS):
            if not np.isfinite(patches[start : start + VALIDATION_CHUNK_PATTERNS].sum()):
                fail(KEY_PATCHES, "contains NaN or infinite values")

    if dataset.scan_index is not None:
        scan_index = np.asarray(dataset.scan_index)
        if scan_index.shape != (n_patterns,) or not np.issubdtype(scan_index.dtype, np.integer):
            fail(KEY_SCAN_INDEX, f"has shape {scan_index.shape} and dtype {scan_index.dtype}; expected int64 ({n_patterns},)")
