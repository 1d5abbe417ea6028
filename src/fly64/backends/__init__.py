"""Training backends and the framework-neutral entry points that dispatch to them.

`load_bundle` reads a bundle's manifest and hands it to the backend that wrote it;
`backend_module` imports a backend's `job` or `bundle` module. Backends are imported only when
used, so that PyTorch and TensorFlow never need to share a process.
"""

import importlib
import logging
import os
from types import ModuleType

from fly64.backends.base import BACKENDS, JobSpec, LoadedModel, TrainingSettings
from fly64.bundle.archive import read_bundle
from fly64.errors import BundleError, InputError

logger = logging.getLogger(__name__)

__all__ = ["BACKENDS", "JobSpec", "LoadedModel", "TrainingSettings", "backend_module", "load_bundle"]


def backend_module(backend: str, role: str) -> ModuleType:
    """Import and return `fly64.backends.<backend>.<role>` (role `job` or `bundle`).

    Raises:
        InputError: the backend is unknown, or its framework is not installed (the
            message names the import that failed).
    """
    if backend not in BACKENDS:
        raise InputError(f"backend {backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
    name = f"fly64.backends.{backend}.{role}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise InputError(f"backend {backend} is not available: importing {name} failed ({error})") from error


def load_bundle(path: str | os.PathLike, verify: bool = True) -> LoadedModel:
    """Load a bundle's inference model with the backend named in its manifest.

    A manifest without `backend` is read as `tensorflow`. With `verify`, the model must
    reproduce the verification batch stored in the bundle.

    Raises:
        BundleError: the bundle is damaged, unsafe, or does not match its model; or the
            backend it names cannot be imported.
    """
    contents = read_bundle(path)
    try:
        module = backend_module(contents.backend, "bundle")
    except InputError as error:
        raise BundleError(f"{path}: {error}") from None
    return module.load_bundle(contents, verify=verify)
