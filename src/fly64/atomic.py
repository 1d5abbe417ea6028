"""Atomic file writes and file digests.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so a reader sees either the old file, the complete new file, or no file, never a
partial one. A failed write removes its temporary file.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

SHA256_CHUNK_BYTES = 64 * 1024
# Temporary files of `atomic_open` are named `.<destination name>.<random>.tmp`.
TEMPORARY_PATTERN = ".*.tmp"

# ZIP members get this fixed timestamp so that equal content gives byte-identical files.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` and rename it to `path` when the block succeeds."""
    destination = Path(path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary_name, 0o644)
        os.replace(temporary_name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary_name)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left under `folder` and return their paths.

    A write that is killed (SIGKILL, power loss) cannot remove its temporary file. Call
    this only while no writer can be active under `folder`, for example with the study
    root's lock held.
    """
    stale = sorted(path for path in Path(folder).rglob(TEMPORARY_PATTERN) if path.is_file())
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stale


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, document: Any) -> None:
    """Write `document` as indented JSON (keys in insertion order) to `path` atomically."""
    write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")


def zip_member_info(name: str) -> zipfile.ZipInfo:
    """Return a ZIP entry header with a fixed timestamp and permissions, for reproducible archives."""
    info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an uncompressed NPZ file atomically.

    Members are written in the order given with fixed timestamps, so equal arrays give
    byte-identical files. Object arrays are rejected, so every file loads with
    `allow_pickle=False`.
    """
    for key, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"array {key!r} has dtype object, which the NPZ contract forbids")
    with atomic_open(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
            for key, array in arrays.items():
                with archive.open(zip_member_info(f"{key}.npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def sha256_file(path: str | os.PathLike) -> str:
    """Return the lower-case hex SHA-256 of a file, read in 64 KiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(SHA256_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
