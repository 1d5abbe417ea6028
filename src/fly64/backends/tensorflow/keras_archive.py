"""`.keras` model files: reproducible bytes on save, an allowlist check and safe-mode loading.

A `.keras` file (Keras 3) is a ZIP archive of `config.json` (the model's layers as JSON),
`metadata.json` (Keras version and save date) and `model.weights.h5`. Keras 3.15 writes
the save time into the weights member's ZIP header and into `metadata.json`, and memory
addresses into `config.json` (`shared_object_id`). `keras_model_bytes` rewrites these, so
that equal models give byte-identical files:

- members in Keras's order with the fixed timestamp of `fly64.atomic.zip_member_info`;
- `metadata.json` without `date_saved` (the bundle's `manifest.json` records provenance);
- `shared_object_id` values renumbered 1, 2, ... in order of first appearance, which
  keeps which configs share one object, the only thing Keras reads from them.

`load_keras_model` executes nothing from the file. Before Keras reads the archive, it
checks the members, their CRCs and sizes, and every class that `config.json` names
against an allowlist: the Keras layers these models use and the registered `fly64>`
layers. A `Lambda` layer or an unknown class raises `BundleError`. Keras then loads the
file with `safe_mode=True` and without compiling.
"""

import io
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import keras

# Importing the layers registers them, so that Keras can resolve `fly64>` names.
from fly64.backends.tensorflow import layers as fly64_layers
from fly64.atomic import zip_member_info
from fly64.errors import BundleError

CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"
WEIGHTS_MEMBER = "model.weights.h5"
KERAS_MEMBERS = (METADATA_MEMBER, CONFIG_MEMBER, WEIGHTS_MEMBER)

# A config of these models is tens of kilobytes, metadata a few dozen bytes.
MAX_CONFIG_BYTES = 4 * 1024**2
MAX_METADATA_BYTES = 64 * 1024
MAX_WEIGHTS_BYTES = 1024**3

# Keras classes that the models of `fly64.backends.tensorflow.models` use, by module.
ALLOWED_KERAS_CLASSES = {
    "keras.src.models.functional": {"Functional"},
    "keras.layers": {"InputLayer", "Conv2D", "MaxPooling2D", "UpSampling2D", "Activation"},
    "keras": {"DTypePolicy"},
    "keras.initializers": {"VarianceScaling", "RandomUniform"},
}
ALLOWED_FLY64_CLASSES = {
    fly64_layers.PhaseActivation.__name__,
    fly64_layers.ComplexFromPolar.__name__,
    fly64_layers.OverlapConstraint.__name__,
    fly64_layers.FarFieldIntensity.__name__,
    fly64_layers.IntensityScale.__name__,
    fly64_layers.GroupToPatches.__name__,
}
# Placeholders that Keras writes for tensors between layers; they name no class.
KERAS_PLACEHOLDERS = {"__keras_tensor__"}
ALLOWED_ACTIVATIONS = {"linear", "relu", "sigmoid"}


def keras_model_bytes(model: keras.Model) -> bytes:
    """Save `model` as `.keras` bytes (weights and config, no optimiser state if uncompiled), reproducibly."""
    with tempfile.TemporaryDirectory(prefix="fly64-keras-") as scratch:
        path = Path(scratch) / "model.keras"
        model.save(path)
        with zipfile.ZipFile(path, "r") as archive:
            saved = {info.filename: archive.read(info) for info in archive.infolist()}

    unexpected = sorted(set(saved) - set(KERAS_MEMBERS))
    if unexpected:
        raise RuntimeError(f"Keras {keras.__version__} saved unexpected member(s) {', '.join(unexpected)}; update KERAS_MEMBERS")
    metadata = json.loads(saved[METADATA_MEMBER])
    metadata.pop("date_saved", None)
    config = _renumber_shared_objects(json.loads(saved[CONFIG_MEMBER]))
    contents = {
        METADATA_MEMBER: json.dumps(metadata, sort_keys=True).encode("utf-8"),
        CONFIG_MEMBER: json.dumps(config).encode("utf-8"),
        WEIGHTS_MEMBER: saved[WEIGHTS_MEMBER],
    }

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in KERAS_MEMBERS:
            archive.writestr(zip_member_info(name), contents[name])
    return buffer.getvalue()


def _renumber_shared_objects(config: Any) -> Any:
    """Replace each distinct `shared_object_id` with 1, 2, ... in order of first appearance."""
    numbers: dict[Any, int] = {}

    def visit(value: Any) -> Any:
        if isinstance(value, dict):
            renumbered = {}
            for key, item in value.items():
                if key == "shared_object_id":
                    renumbered[key] = numbers.setdefault(item, len(numbers) + 1)
                else:
                    renumbered[key] = visit(item)
            return renumbered
        if isinstance(value, list):
            return [visit(item) for item in value]
        return value

    return visit(config)


def keras_config(data: bytes, source: str) -> dict[str, Any]:
    """Check a `.keras` archive without loading it and return its parsed `config.json`.

    Checks: a readable ZIP with exactly the members config.json, metadata.json and
    model.weights.h5, each below its size limit (from the headers, before reading),
    every CRC, JSON config and metadata, and an allowlisted class for every object of the
    config (see `check_config_classes`).

    Raises:
        BundleError: naming `source` and the first check that failed.
    """
    limits = {CONFIG_MEMBER: MAX_CONFIG_BYTES, METADATA_MEMBER: MAX_METADATA_BYTES, WEIGHTS_MEMBER: MAX_WEIGHTS_BYTES}
    try:
        with zipfile.ZipFile(io.BytesIO(data), "r") as archive:
            infos = archive.infolist()
            names = sorted(info.filename for info in infos)
            if names != sorted(KERAS_MEMBERS):
                raise BundleError(
                    f"{source}: .keras archive contains {', '.join(names) or 'nothing'}; "
                    f"expected exactly {', '.join(sorted(KERAS_MEMBERS))}"
                )
            for info in infos:
                if info.file_size > limits[info.filename]:
                    raise BundleError(
                        f"{source}: {info.filename} is {info.file_size} bytes; the limit is {limits[info.filename]} bytes"
                    )
            damaged = archive.testzip()
            if damaged is not None:
                raise BundleError(f"{source}: member {damaged} of the .keras archive fails its CRC check")
            config_bytes = archive.read(CONFIG_MEMBER)
            metadata_bytes = archive.read(METADATA_MEMBER)
    except BundleError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as error:
        raise BundleError(f"{source}: not a readable .keras archive, truncated or damaged ({error})") from None

    try:
        config = json.loads(config_bytes.decode("utf-8"))
        json.loads(metadata_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise BundleError(f"{source}: config.json or metadata.json is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise BundleError(f"{source}: config.json contains a {type(config).__name__}; expected a model config object")
    check_config_classes(config, source)
    return config


def check_config_classes(config: Any, source: str) -> None:
    """Reject a model config that names any class outside the allowlist, or an unknown activation.

    Every JSON object with a `class_name` must be an allowed Keras class from its module,
    a `fly64>` layer registered in `fly64.backends.tensorflow.layers`, or a tensor
    placeholder. `Lambda` layers (which carry Python bytecode) are never allowed.

    Raises:
        BundleError: naming `source`, the class and the path of the object in the config.
    """
    stack: list[tuple[Any, str]] = [(config, "config")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, f"{where}[{index}]") for index, item in enumerate(value))
            continue
        if not isinstance(value, dict):
            continue
        if "class_name" in value:
            _check_class(value, where, source)
        activation = value.get("activation")
        if isinstance(activation, str) and activation not in ALLOWED_ACTIVATIONS:
            raise BundleError(
                f"{source}: {where} uses activation {activation!r}; allowed are {', '.join(sorted(ALLOWED_ACTIVATIONS))}"
            )
        stack.extend((item, f"{where}.{key}") for key, item in value.items())


def _check_class(entry: dict[str, Any], where: str, source: str) -> None:
    class_name = entry.get("class_name")
    module = entry.get("module")
    registered_name = entry.get("registered_name")
    if class_name in KERAS_PLACEHOLDERS and module is None:
        return
    if class_name == "Lambda":
        raise BundleError(f"{source}: {where} is a Lambda layer, which carries Python code; the model is rejected")
    if isinstance(registered_name, str) and registered_name.startswith(f"{fly64_layers.PACKAGE}>"):
        if registered_name == f"{fly64_layers.PACKAGE}>{class_name}" and class_name in ALLOWED_FLY64_CLASSES:
            return
        raise BundleError(f"{source}: {where} names class {registered_name!r}, which is not a fly64 layer")
    if isinstance(module, str) and class_name in ALLOWED_KERAS_CLASSES.get(module, ()):
        return
    raise BundleError(
        f"{source}: {where} names class {class_name!r} from module {module!r} (registered as {registered_name!r}), "
        "which is not among the layers of fly64 models; the model is rejected"
    )


def load_keras_model(data: bytes, source: str) -> keras.Model:
    """Check `.keras` bytes with `keras_config` and load the model in safe mode, uncompiled.

    Raises:
        BundleError: naming `source`, when a check fails or Keras cannot build the model
            or read its weights.
    """
    keras_config(data, source)
    with tempfile.TemporaryDirectory(prefix="fly64-keras-") as scratch:
        path = os.path.join(scratch, "model.keras")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return keras.models.load_model(path, safe_mode=True, compile=False)
        except BundleError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OSError, zipfile.BadZipFile, RecursionError) as error:
            raise BundleError(f"{source}: Keras cannot load the model ({type(error).__name__}: {error})") from None
