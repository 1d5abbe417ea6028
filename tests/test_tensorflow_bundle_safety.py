"""TensorFlow bundles: a valid bundle loads, and tampered bundles are rejected without running their code.

TensorFlow runs in a subprocess (this file run as a script), never in the test process,
because importing it before torchvision, Lightning or pty-chi in one process crashes
Python. The subprocess writes a valid bundle of an untrained model, derives tampered
copies, loads each with `fly64.backends.load_bundle` and records the outcome. Payloads
that would run code create marker files; the tests check that no marker exists.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

N = 16
MODELS = ("autoencoder", "diffraction_to_obj")
CASES = (
    "valid", "no_backend_key", "pytorch_backend", "lambda_layer",
    "unregistered_class", "unknown_fly64_class", "corrupted_weights_member", "truncated_keras", "extra_keras_member",
    "gridsize_mismatch", "preset_mismatch", "canvas_margin_mismatch", "params_with_code", "manifest_with_code",
    "nan_weights", "other_probe",
)


class CommandPayload:
    """Pickles as a call of os.system, which would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def rewrite_bundle(source: Path, destination: Path, replace: dict | None = None, remove=()) -> Path:
    """Copy a bundle's members to a new ZIP, replacing and removing members."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name in remove:
        del members[name]
    members.update(replace or {})
    with zipfile.ZipFile(destination, "w") as archive:
        for name in sorted(members):
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), members[name])
    return destination


def rewrite_keras(data: bytes, replace: dict | None = None, add: dict | None = None) -> bytes:
    """Return `.keras` bytes with members replaced or added (valid CRCs)."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members.update(replace or {})
    members.update(add or {})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, member in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), member)
    return buffer.getvalue()


def tamper_config(data: bytes, change) -> bytes:
    """Return `.keras` bytes whose config.json is passed through `change(config)`."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        config = json.loads(archive.read("config.json"))
    change(config)
    return rewrite_keras(data, replace={"config.json": json.dumps(config).encode()})


def corrupt_member(data: bytes, member: str) -> bytes:
    """Return ZIP bytes with one byte of `member`'s data flipped, so its CRC no longer matches."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    # Local header: 30 bytes plus the name and extra field, then the stored data.
    header = data[info.header_offset : info.header_offset + 30]
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    position = info.header_offset + 30 + name_length + extra_length + info.compress_size // 2
    return data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]


def write_cases(root: Path) -> dict:
    """Write a valid bundle and its tampered copies, load each, and return the outcomes (subprocess only)."""
    import dill
    import keras
    import numpy as np
    import tensorflow as tf

    from fly64.backends import load_bundle
    from fly64.backends.tensorflow import bundle as tensorflow_bundle
    from fly64.backends.tensorflow.bundle import (
        predict_patches,
        write_tensorflow_bundle,
    )
    from fly64.backends.tensorflow.keras_archive import keras_model_bytes
    from fly64.backends.tensorflow.models import build_models
    from fly64.bundle.archive import write_bundle
    from fly64.bundle.safe_pickle import dumps_plain, loads_plain
    from fly64.learning.spec import ModelSpec
    from fly64.learning.synthetic import disc_probe

    tf.config.threading.set_intra_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    probe = disc_probe(N)
    spec = ModelSpec(N, 2, "pinn", "compact", canvas_pad_px=4)
    keras.utils.set_random_seed(0)
    pair = build_models(spec, probe, 500.0)

    amplitude = rng.uniform(0, 3, (2, 4, N, N)).astype(np.float32)
    offsets_px = rng.uniform(-2, 2, (2, 4, 2)).astype(np.float32)
    verification = {
        "amplitude": amplitude,
        "offsets_px": offsets_px,
        "norm_factor": np.float64(1.5),
        "expected": predict_patches(pair.diffraction_to_obj, amplitude / np.float32(1.5), offsets_px),
    }
    valid = root / "valid.zip"
    write_tensorflow_bundle(valid, pair, spec, probe, 1.5, verification, {"seed": 0})
    write_tensorflow_bundle(root / "valid_again.zip", pair, spec, probe, 1.5, verification, {"seed": 0})
    with zipfile.ZipFile(valid) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}

    def params_with(**changes) -> dict:
        replaced = {}
        for model in MODELS:
            params = loads_plain(members[f"{model}/params.dill"], "test")
            params.update(changes)
            replaced[f"{model}/params.dill"] = dumps_plain(params)
        return replaced

    manifest = loads_plain(members["manifest.dill"], "test")
    rewrite_bundle(valid, root / "no_backend_key.zip", replace={"manifest.dill": dumps_plain({k: v for k, v in manifest.items() if k != "backend"})})
    write_bundle(
        root / "pytorch_backend.zip",
        {"models": list(MODELS), "version": "1.0", "backend": "pytorch"},
        {f"{model}/model.pth": b"weights" for model in MODELS},
        params={model: loads_plain(members[f"{model}/params.dill"], "test") | {"backend": "pytorch"} for model in MODELS},
    )

    # A Lambda layer whose function creates a marker file when Keras rebuilds the model.
    lambda_path = root / "lambda.keras"
    lambda_model(root / "lambda_marker").save(lambda_path)
    rewrite_bundle(valid, root / "lambda_layer.zip", replace={"diffraction_to_obj/model.keras": lambda_path.read_bytes()})

    inference = members["diffraction_to_obj/model.keras"]

    def name_unregistered(config):
        layer = config["config"]["layers"][-1]
        layer.update({"module": "os", "class_name": "system", "registered_name": None})

    def name_unknown_fly64(config):
        layer = config["config"]["layers"][-1]
        layer.update({"class_name": "Evil", "registered_name": "fly64>Evil"})

    rewrite_bundle(valid, root / "unregistered_class.zip", replace={"diffraction_to_obj/model.keras": tamper_config(inference, name_unregistered)})
    rewrite_bundle(valid, root / "unknown_fly64_class.zip", replace={"diffraction_to_obj/model.keras": tamper_config(inference, name_unknown_fly64)})
    rewrite_bundle(valid, root / "corrupted_weights_member.zip", replace={"diffraction_to_obj/model.keras": corrupt_member(inference, "model.weights.h5")})
    rewrite_bundle(valid, root / "truncated_keras.zip", replace={"diffraction_to_obj/model.keras": inference[: len(inference) // 2]})
    rewrite_bundle(valid, root / "extra_keras_member.zip", replace={"diffraction_to_obj/model.keras": rewrite_keras(inference, add={"assets/run.py": b"print(1)"})})
    rewrite_bundle(valid, root / "gridsize_mismatch.zip", replace=params_with(gridsize=1))
    rewrite_bundle(valid, root / "preset_mismatch.zip", replace=params_with(preset="reference", encoder_filters=[64, 128, 256], decoder_filters=[128, 64]))
    rewrite_bundle(valid, root / "canvas_margin_mismatch.zip", replace=params_with(canvas_pad_px=9))
    rewrite_bundle(valid, root / "params_with_code.zip", replace={"autoencoder/params.dill": dill.dumps(CommandPayload(root / "params_marker"))})
    rewrite_bundle(valid, root / "manifest_with_code.zip", replace={"manifest.dill": dill.dumps({"models": list(MODELS), "version": "1.0", "backend": CommandPayload(root / "manifest_marker")})})

    broken = build_models(spec, probe, 500.0)
    weights = broken.diffraction_to_obj.get_weights()
    weights[0][0, 0, 0, 0] = np.nan
    broken.diffraction_to_obj.set_weights(weights)
    rewrite_bundle(valid, root / "nan_weights.zip", replace={"diffraction_to_obj/model.keras": keras_model_bytes(broken.diffraction_to_obj)})
    rewrite_bundle(valid, root / "other_probe.zip", replace={"probe.npy": _npy_bytes(np.roll(probe, 1, axis=0))})

    outcomes = {}
    for case in CASES:
        path = root / f"{case}.zip"
        # The neutral loader would hand a PyTorch bundle to the PyTorch backend, so that
        # case calls the TensorFlow loader directly.
        loader = tensorflow_bundle.load_bundle if case == "pytorch_backend" else load_bundle
        try:
            loaded = loader(path)
            outcomes[case] = {"loaded": True, "backend": loaded.manifest["backend"], "spec_gridsize": loaded.spec.gridsize}
        except Exception as error:  # every outcome is recorded; the tests judge it
            outcomes[case] = {"loaded": False, "error_type": type(error).__name__, "message": str(error)}

    # Control, after every safe load: an unsafe load of such a file runs the payload.
    control_path = root / "lambda_control.keras"
    lambda_model(root / "control_marker").save(control_path)
    keras.config.enable_unsafe_deserialization()
    keras.models.load_model(control_path, safe_mode=False)
    outcomes["lambda_payload_live"] = (root / "control_marker").exists()
    outcomes["valid_bytes_identical"] = (root / "valid.zip").read_bytes() == (root / "valid_again.zip").read_bytes()
    return outcomes


def lambda_model(marker: Path):
    """Return a Keras model with a Lambda layer whose function creates `marker` when called."""
    import keras

    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")
    inputs = keras.Input((N, N, 4), name="amplitude")
    model = keras.Model(inputs, keras.layers.Lambda(touch, name="payload")(inputs))
    # Building the model called the function once.
    marker.unlink(missing_ok=True)
    return model


def _npy_bytes(array) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tensorflow_bundles")


@pytest.fixture(scope="module")
def outcomes(bundle_root) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, str(bundle_root)], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, f"TensorFlow subprocess failed:\n{completed.stderr[-4000:]}"
    return json.loads((bundle_root / "outcomes.json").read_text())


def test_valid_bundle_loads(outcomes):
    assert outcomes["valid"]["loaded"] is True


def test_valid_bundle_reproducible(outcomes):
    assert outcomes["valid_bytes_identical"] is True


def test_missing_backend_means_tensorflow(outcomes):
    assert outcomes["no_backend_key"] == {"loaded": True, "backend": "tensorflow", "spec_gridsize": 2}


REJECTED = {
    "pytorch_backend": "pytorch backend; the tensorflow backend cannot load it",
    "lambda_layer": "Lambda layer",
    "unregistered_class": "'system' from module 'os'",
    "unknown_fly64_class": "'fly64>Evil'",
    "corrupted_weights_member": "model.weights.h5 of the .keras archive fails its CRC check",
    "truncated_keras": "not a readable .keras archive",
    "extra_keras_member": "expected exactly config.json, metadata.json, model.weights.h5",
    "gridsize_mismatch": "model does not match its params",
    "preset_mismatch": "model does not match its params",
    "canvas_margin_mismatch": "model does not match its params",
    "params_with_code": "pickle references",
    "manifest_with_code": "pickle references",
    "nan_weights": "contains NaN or infinite values",
    "other_probe": "probe.npy differs from the probe weights",
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_tampered_bundle_raises_bundle_error(outcomes, case):
    assert outcomes[case].get("error_type") == "BundleError", outcomes[case]


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_tampered_bundle_message_names_bundle(outcomes, bundle_root, case):
    assert str(bundle_root / f"{case}.zip") in outcomes[case]["message"]


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_tampered_bundle_message_names_reason(outcomes, case):
    assert REJECTED[case] in outcomes[case]["message"]


def test_lambda_payload_is_live(outcomes):
    assert outcomes["lambda_payload_live"] is True


@pytest.mark.parametrize("marker", ["lambda_marker", "params_marker", "manifest_marker"])
def test_payload_never_runs(outcomes, bundle_root, marker):
    assert not (bundle_root / marker).exists()


if __name__ == "__main__":
    root = Path(sys.argv[1])
    (root / "outcomes.json").write_text(json.dumps(write_cases(root), indent=2))
