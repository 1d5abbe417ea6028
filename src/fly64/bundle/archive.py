"""Model bundles (`wts.h5.zip`): a framework-neutral ZIP writer and a validating reader.

Layout of a bundle:

    manifest.dill                 {'models': [...], 'version': '1.0', 'backend': ...}
    manifest.json                 the same keys plus `params` and `provenance`, as JSON
    <model>/params.dill           plain-data parameters of each model named in `models`
    <model>/<weights>             backend-specific weights (`model.pth`, `model.keras`)
    ...                           further members named by the backend (probe, checks)

The writer is deterministic: members go in sorted name order with fixed timestamps and
no compression, so equal inputs give byte-identical files. It writes atomically, so a
reader never sees a partial bundle.

The reader executes nothing from the file. It checks the ZIP structure (CRCs, member
names inside the root, sizes below limits before reading), the manifest and the params.
It returns the member bytes, and the backend decides how to load its weights safely.
"""

import dataclasses
import io
import json
import logging
import math
import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fly64.atomic import atomic_open, sha256_file, zip_member_info
from fly64.bundle.safe_pickle import (
    MAX_PLAIN_PICKLE_BYTES,
    dumps_plain,
    loads_plain,
    plain_copy,
)
from fly64.errors import BundleError

logger = logging.getLogger(__name__)

MANIFEST_DILL = "manifest.dill"
MANIFEST_JSON = "manifest.json"
PARAMS_FILENAME = "params.dill"
BUNDLE_VERSION = "1.0"
MODEL_NAMES = ("autoencoder", "diffraction_to_obj")
# Bundles written before backends were recorded came from the TensorFlow implementation.
DEFAULT_BACKEND = "tensorflow"
REQUIRED_PARAM_KEYS = ("N", "gridsize", "intensity_scale", "model_kind", "norm_factor")

# Limits far above real bundles (a 2.3 M parameter model is about 9 MB per weights file)
# that stop a damaged or hostile archive before it is read into memory.
MAX_MEMBER_BYTES = 1024**3
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_MEMBERS = 256
ZIP_FLAG_ENCRYPTED = 0x1


@dataclasses.dataclass(frozen=True)
class BundleContents:
    """A validated bundle read into memory.

    Attributes:
        path: the bundle file.
        manifest: `manifest.dill` with `backend` filled in (`tensorflow` when missing).
        manifest_json: `manifest.json`, or None when the bundle has none.
        params: model name to its `params.dill` dict, for each model in the manifest.
        members: every other file member, name to bytes (weights, arrays, checks).
    """

    path: Path
    manifest: dict[str, Any]
    manifest_json: dict[str, Any] | None
    params: dict[str, dict[str, Any]]
    members: dict[str, bytes]

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    def member(self, name: str) -> bytes:
        """Return a member's bytes.

        Raises:
            BundleError: the bundle has no member of that name.
        """
        if name not in self.members:
            raise BundleError(f"{self.path}: member {name} is missing")
        return self.members[name]

    def load_array(self, name: str) -> np.ndarray:
        """Read an `.npy` member without pickled objects.

        Raises:
            BundleError: the member is missing or not a plain NPY array.
        """
        try:
            return np.load(io.BytesIO(self.member(name)), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise BundleError(f"{self.path}: member {name} is not a readable NPY array ({error})") from None

    def load_arrays(self, name: str) -> dict[str, np.ndarray]:
        """Read an `.npz` member without pickled objects.

        Raises:
            BundleError: the member is missing or not a plain NPZ archive.
        """
        try:
            with np.load(io.BytesIO(self.member(name)), allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise BundleError(f"{self.path}: member {name} is not a readable NPZ archive ({error})") from None


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise one array as NPY bytes (no pickled objects)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise arrays as uncompressed NPZ bytes with fixed timestamps, so equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, array in arrays.items():
            archive.writestr(zip_member_info(f"{key}.npy"), npy_bytes(array))
    return buffer.getvalue()


def params_member(model: str) -> str:
    """Return the member name of a model's parameters, `<model>/params.dill`."""
    return f"{model}/{PARAMS_FILENAME}"


def write_bundle(
    path: str | os.PathLike,
    manifest: dict[str, Any],
    members: dict[str, bytes],
    *,
    params: dict[str, dict[str, Any]],
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write a bundle atomically and deterministically.

    Args:
        path: destination, usually `.../wts.h5.zip`.
        manifest: `models` (list of model names), `version` and `backend`; stored as
            `manifest.dill`. Extra plain-data keys are kept.
        members: further files by member name, for example `autoencoder/model.pth`.
        params: model name to plain-data parameters, stored as `<model>/params.dill`; one
            entry per model in the manifest, each with `REQUIRED_PARAM_KEYS`.
        provenance: free-form plain data (versions, dataset SHA-256s, seed, losses),
            stored in `manifest.json` only; non-finite floats become null there.

    Raises:
        ValueError: the manifest lacks a key, params do not match the manifest's models,
            or a member name is unsafe or reserved.
        TypeError: the manifest, params or provenance hold something other than plain data.
    """
    for key in ("models", "version", "backend"):
        if key not in manifest:
            raise ValueError(f"manifest lacks key {key!r}; expected models, version and backend")
    models = list(manifest["models"])
    if sorted(params) != sorted(models):
        raise ValueError(f"params are given for {sorted(params)} but the manifest names models {sorted(models)}")
    for model in models:
        missing = [key for key in REQUIRED_PARAM_KEYS if key not in params[model]]
        if missing:
            raise ValueError(f"params of model {model!r} lack key(s) {', '.join(missing)}")

    contents: dict[str, bytes] = {
        MANIFEST_DILL: dumps_plain(manifest),
        MANIFEST_JSON: _manifest_json_bytes(manifest, params, provenance or {}),
    }
    for model in models:
        contents[params_member(model)] = dumps_plain(params[model])
    for name, data in members.items():
        _check_member_name(name)
        if name in contents:
            raise ValueError(f"member {name} is written by write_bundle itself; pass it through manifest or params")
        contents[name] = bytes(data)

    if Path(path).exists():
        logger.warning("Overwriting bundle %s", path)
    with atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
        for name in sorted(contents):
            archive.writestr(zip_member_info(name), contents[name])
    logger.info("Wrote bundle %s (%d members)", path, len(contents))


def read_bundle(path: str | os.PathLike, max_member_bytes: int = MAX_MEMBER_BYTES) -> BundleContents:
    """Read and validate a bundle without executing anything from it.

    Checks, in order:

    - the file is a ZIP archive with at most 256 members;
    - no member is encrypted or duplicated, and each is named inside the archive root
      (no absolute path, drive, backslash or `..`);
    - from the headers, before anything is read: each member is below `max_member_bytes`
      (`.dill` members below 1 MiB) and all together below 4 GiB;
    - every member passes its CRC check;
    - `manifest.dill` is plain data with a `models` list and a `version`;
    - each model has `<model>/params.dill` with the required keys.

    Raises:
        BundleError: naming the bundle and the first check that failed.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: bundle file not found")
    try:
        with zipfile.ZipFile(path, "r") as archive:
            infos = _checked_infos(archive, path, max_member_bytes)
            damaged = archive.testzip()
            if damaged is not None:
                raise BundleError(f"{path}: member {damaged} fails its CRC check; the bundle is damaged")
            raw = {info.filename: _read_member(archive, info, path) for info in infos}
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as error:
        raise BundleError(f"{path}: not a readable ZIP archive, truncated or damaged ({error})") from None

    manifest = _checked_manifest(raw, path)
    params = {}
    for model in manifest["models"]:
        params[model] = _checked_params(raw, path, model)

    manifest_json = None
    if MANIFEST_JSON in raw:
        try:
            manifest_json = json.loads(raw[MANIFEST_JSON].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BundleError(f"{path}: {MANIFEST_JSON} is not valid JSON ({error})") from None

    reserved = {MANIFEST_DILL, MANIFEST_JSON} | {params_member(model) for model in manifest["models"]}
    members = {name: data for name, data in raw.items() if name not in reserved}
    return BundleContents(path=path, manifest=manifest, manifest_json=manifest_json, params=params, members=members)


def bundle_digest(path: str | os.PathLike) -> tuple[str, int]:
    """Return the bundle file's lower-case hex SHA-256 (read in 64 KiB chunks) and its size in bytes."""
    return sha256_file(path), os.path.getsize(path)


def _check_member_name(name: str) -> None:
    """Raise ValueError unless `name` is a relative POSIX path that stays inside the archive root."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in name.split("/")[0]:
        raise ValueError(f"member name {name!r} is unsafe; expected a relative POSIX path inside the archive")
    parts = PurePosixPath(name).parts
    if any(part in ("..", ".") for part in parts) or any(part == "" for part in name.rstrip("/").split("/")):
        raise ValueError(f"member name {name!r} leaves or obscures the archive root; expected no '..' or '.' parts")


def _checked_infos(archive: zipfile.ZipFile, path: Path, max_member_bytes: int) -> list[zipfile.ZipInfo]:
    """Return the file members after checking names, flags and header sizes; skip directory entries."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{path}: {len(infos)} members; a bundle has at most {MAX_MEMBERS}")

    seen: set[str] = set()
    total_bytes = 0
    files = []
    for info in infos:
        try:
            _check_member_name(info.filename)
        except ValueError as error:
            raise BundleError(f"{path}: {error}") from None
        if info.filename in seen:
            raise BundleError(f"{path}: member {info.filename} appears twice")
        seen.add(info.filename)
        if info.flag_bits & ZIP_FLAG_ENCRYPTED:
            raise BundleError(f"{path}: member {info.filename} is encrypted; bundles are never encrypted")
        if info.is_dir():
            continue

        limit = MAX_PLAIN_PICKLE_BYTES if info.filename.endswith(".dill") else max_member_bytes
        if info.file_size > limit:
            raise BundleError(f"{path}: member {info.filename} is {info.file_size} bytes; the limit is {limit} bytes")
        total_bytes += info.file_size
        if total_bytes > MAX_TOTAL_BYTES:
            raise BundleError(f"{path}: members total more than {MAX_TOTAL_BYTES} bytes")
        files.append(info)
    return files


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """Read one member, never more than its header's size plus one byte."""
    with archive.open(info) as handle:
        data = handle.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise BundleError(f"{path}: member {info.filename} is {len(data)} bytes long, but its ZIP header records {info.file_size}")
    return data


def _checked_manifest(raw: dict[str, bytes], path: Path) -> dict[str, Any]:
    if MANIFEST_DILL not in raw:
        raise BundleError(f"{path}: {MANIFEST_DILL} is missing; not a model bundle")
    manifest = loads_plain(raw[MANIFEST_DILL], source=f"{path}:{MANIFEST_DILL}")
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: {MANIFEST_DILL} is a {type(manifest).__name__}; expected a dict")

    models = manifest.get("models")
    if not isinstance(models, (list, tuple)) or not models:
        raise BundleError(f"{path}: {MANIFEST_DILL} key 'models' is {models!r}; expected a non-empty list of model names")
    for model in models:
        if not isinstance(model, str) or not model or "/" in model or model in (".", ".."):
            raise BundleError(f"{path}: {MANIFEST_DILL} names model {model!r}; expected a folder name")
    if not isinstance(manifest.get("version"), str):
        raise BundleError(f"{path}: {MANIFEST_DILL} key 'version' is {manifest.get('version')!r}; expected a string such as '1.0'")

    backend = manifest.get("backend", DEFAULT_BACKEND)
    if "backend" not in manifest:
        logger.info("%s: manifest names no backend; reading it as %s", path, DEFAULT_BACKEND)
    if not isinstance(backend, str) or not backend:
        raise BundleError(f"{path}: {MANIFEST_DILL} key 'backend' is {backend!r}; expected a backend name")
    return {**manifest, "models": list(models), "backend": backend}


def _checked_params(raw: dict[str, bytes], path: Path, model: str) -> dict[str, Any]:
    name = params_member(model)
    if name not in raw:
        raise BundleError(f"{path}: model {model} has no {name}")
    params = loads_plain(raw[name], source=f"{path}:{name}")
    if not isinstance(params, dict):
        raise BundleError(f"{path}: {name} is a {type(params).__name__}; expected a dict")
    missing = [key for key in REQUIRED_PARAM_KEYS if key not in params]
    if missing:
        raise BundleError(f"{path}: {name} lacks key(s) {', '.join(missing)}")
    for key in ("intensity_scale", "norm_factor"):
        value = params[key]
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
            raise BundleError(f"{path}: {name} key {key} is {value!r}; expected a finite positive number")
    return params


def _manifest_json_bytes(manifest: dict[str, Any], params: dict[str, dict[str, Any]], provenance: dict[str, Any]) -> bytes:
    document = {
        **plain_copy(manifest, "manifest"),
        "params": plain_copy(params, "params"),
        "provenance": _json_ready(plain_copy(provenance, "provenance")),
    }
    return (json.dumps(_json_ready(document), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def _json_ready(value: Any) -> Any:
    """Return plain data with non-finite floats replaced by None, which JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value
