"""Bundle safety: plain-data pickles, ZIP validation, and tampered PyTorch bundles."""

import io
import os
import pickle
import zipfile

import dill
import numpy as np
import pytest
import torch

from fly64.atomic import sha256_file
from fly64.backends import load_bundle
from fly64.backends.pytorch import bundle as torch_bundle
from fly64.backends.pytorch.inference import predict_patches
from fly64.backends.pytorch.models import BaselineAutoencoder, PinnAutoencoder
from fly64.bundle.archive import bundle_digest, read_bundle, write_bundle
from fly64.bundle.safe_pickle import dumps_plain, loads_plain
from fly64.errors import BundleError
from fly64.learning.spec import ModelSpec
from fly64.learning.synthetic import disc_probe

N = 16
PARAMS = {"N": N, "gridsize": 1, "intensity_scale": 2.0, "model_kind": "pinn", "norm_factor": 0.5}


class CommandPayload:
    """Pickles as a call of os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def neutral_bundle(path, **changes):
    manifest = {"models": ["autoencoder", "diffraction_to_obj"], "version": "1.0", "backend": "pytorch"}
    manifest.update(changes)
    params = {"autoencoder": dict(PARAMS), "diffraction_to_obj": dict(PARAMS)}
    members = {"autoencoder/model.pth": b"weights-a", "diffraction_to_obj/model.pth": b"weights-b"}
    write_bundle(path, manifest, members, params=params, provenance={"seed": 1, "loss": float("nan")})
    return path


def rewrite_bundle(source, destination, replace=None, remove=(), add=None):
    """Copy a bundle's members to a new ZIP, replacing, removing and adding members."""
    replace = replace or {}
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name in remove:
        del members[name]
    members.update(replace)
    members.update(add or {})
    with zipfile.ZipFile(destination, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return destination


def untrained_torch_bundle(path, kind="pinn", gridsize=1, seed=0):
    """Write a bundle of an untrained model with a matching verification batch."""
    torch.manual_seed(seed)
    spec = ModelSpec(N, gridsize, kind, "compact", canvas_pad_px=4 if gridsize > 1 and kind == "pinn" else 0)
    if kind == "pinn":
        model = PinnAutoencoder(spec, torch.from_numpy(disc_probe(N)), 100.0)
    else:
        model = BaselineAutoencoder(spec)
    rng = np.random.default_rng(seed)
    amplitude = rng.random((3, spec.channels, N, N), dtype=np.float32)
    offsets = rng.uniform(-3, 3, (3, spec.channels, 2)).astype(np.float32) if gridsize > 1 else np.zeros((3, 1, 2), np.float32)
    expected = predict_patches(model.diffraction_to_obj, amplitude / np.float32(0.5), offsets)
    verification = {"amplitude": amplitude, "offsets_px": offsets, "norm_factor": np.float64(0.5), "expected": expected}
    torch_bundle.write_torch_bundle(path, model, 0.5, verification, {"seed": seed})
    return path


def test_plain_round_trip():
    value = {"models": ["a", "b"], "version": "1.0", "nested": {"x": (1, 2.5, None, True)}}
    assert loads_plain(dumps_plain(value), "test") == value


def test_plain_converts_numpy_and_str_subclasses():
    value = {"scale": np.float32(1.5), "count": np.int64(3), "version": torch.__version__}
    loaded = loads_plain(dumps_plain(value), "test")
    assert type(loaded["scale"]) is float
    assert type(loaded["count"]) is int
    assert type(loaded["version"]) is str


def test_plain_rejects_arrays():
    with pytest.raises(TypeError, match=r"value\['weights'\]"):
        dumps_plain({"weights": np.zeros(3)})


def test_plain_rejects_code_without_running(tmp_path):
    marker = tmp_path / "marker"
    payload = dill.dumps({"models": [CommandPayload(marker)]})
    with pytest.raises(BundleError, match="system"):
        loads_plain(payload, "payload.dill")
    assert not marker.exists()


def test_plain_rejects_dill_function(tmp_path):
    payload = dill.dumps(lambda: 1)
    with pytest.raises(BundleError, match="payload.dill"):
        loads_plain(payload, "payload.dill")


def test_plain_rejects_oversized():
    with pytest.raises(BundleError, match="bytes"):
        loads_plain(b"\x80\x04" + b"N" * 2000, "big.dill", max_bytes=1000)


def test_plain_rejects_shared_reference_bomb():
    # 25 levels of a list that contains the level below twice: a tiny pickle, 2**25 elements.
    value = []
    for _ in range(25):
        value = [value, value]
    with pytest.raises(BundleError, match="elements"):
        loads_plain(pickle.dumps(value), "bomb.dill")


def test_plain_rejects_garbage():
    with pytest.raises(BundleError, match="not a readable pickle"):
        loads_plain(b"not a pickle", "garbage.dill")


def test_write_deterministic(tmp_path):
    first = neutral_bundle(tmp_path / "a.zip")
    second = neutral_bundle(tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()


def test_read_contents(tmp_path):
    contents = read_bundle(neutral_bundle(tmp_path / "wts.h5.zip"))
    assert contents.backend == "pytorch"
    assert contents.params["diffraction_to_obj"]["N"] == N
    assert contents.member("autoencoder/model.pth") == b"weights-a"
    assert contents.manifest_json["provenance"]["loss"] is None


def test_read_missing_backend_is_tensorflow(tmp_path):
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    manifest = dumps_plain({"models": ["autoencoder", "diffraction_to_obj"], "version": "1.0"})
    tampered = rewrite_bundle(source, tmp_path / "old.zip", replace={"manifest.dill": manifest})
    assert read_bundle(tampered).backend == "tensorflow"


def test_digest_matches_file(tmp_path):
    path = neutral_bundle(tmp_path / "wts.h5.zip")
    assert bundle_digest(path) == (sha256_file(path), path.stat().st_size)


def test_reject_parent_member(tmp_path):
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", add={"../evil.txt": b"x"})
    with pytest.raises(BundleError, match=r"\.\."):
        read_bundle(tampered)


def test_reject_absolute_member(tmp_path):
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", add={"/etc/evil": b"x"})
    with pytest.raises(BundleError, match="unsafe"):
        read_bundle(tampered)


def test_reject_missing_params(tmp_path):
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", remove=["autoencoder/params.dill"])
    with pytest.raises(BundleError, match="autoencoder/params.dill"):
        read_bundle(tampered)


def test_reject_missing_manifest(tmp_path):
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", remove=["manifest.dill"])
    with pytest.raises(BundleError, match="manifest.dill is missing"):
        read_bundle(tampered)


def test_reject_params_key_missing(tmp_path):
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    params = {key: value for key, value in PARAMS.items() if key != "norm_factor"}
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", replace={"autoencoder/params.dill": dumps_plain(params)})
    with pytest.raises(BundleError, match="norm_factor"):
        read_bundle(tampered)


def test_reject_manifest_with_code(tmp_path):
    marker = tmp_path / "marker"
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    payload = dill.dumps({"models": ["autoencoder"], "version": "1.0", "hook": CommandPayload(marker)})
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", replace={"manifest.dill": payload})
    with pytest.raises(BundleError, match="manifest.dill"):
        read_bundle(tampered)
    assert not marker.exists()


def test_reject_params_with_code(tmp_path):
    marker = tmp_path / "marker"
    source = neutral_bundle(tmp_path / "wts.h5.zip")
    payload = dill.dumps({**PARAMS, "hook": CommandPayload(marker)})
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", replace={"diffraction_to_obj/params.dill": payload})
    with pytest.raises(BundleError, match="params.dill"):
        read_bundle(tampered)
    assert not marker.exists()


def test_reject_truncated(tmp_path):
    data = neutral_bundle(tmp_path / "wts.h5.zip").read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated.zip"):
        read_bundle(truncated)


def test_reject_oversized_member(tmp_path):
    path = neutral_bundle(tmp_path / "wts.h5.zip")
    with pytest.raises(BundleError, match="limit"):
        read_bundle(path, max_member_bytes=4)


def test_reject_not_found(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        read_bundle(tmp_path / "missing.zip")


def test_torch_loads_untrained(tmp_path):
    loaded = load_bundle(untrained_torch_bundle(tmp_path / "wts.h5.zip", gridsize=2))
    assert loaded.spec.gridsize == 2
    assert loaded.verify() == 0.0


def test_torch_reject_flipped_weight_byte(tmp_path):
    path = untrained_torch_bundle(tmp_path / "wts.h5.zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("diffraction_to_obj/model.pth")
    # The local header is 30 bytes plus the name and the extra field, then the data.
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[data_start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="CRC"):
        load_bundle(path)


def test_torch_reject_other_gridsize_weights(tmp_path):
    gs1 = untrained_torch_bundle(tmp_path / "gs1.zip", gridsize=1)
    gs2 = untrained_torch_bundle(tmp_path / "gs2.zip", gridsize=2)
    with zipfile.ZipFile(gs1) as archive:
        gs1_weights = archive.read("diffraction_to_obj/model.pth")
    tampered = rewrite_bundle(gs2, tmp_path / "bad.zip", replace={"diffraction_to_obj/model.pth": gs1_weights})
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(tampered)


def test_torch_reject_weights_with_code(tmp_path):
    marker = tmp_path / "marker"
    source = untrained_torch_bundle(tmp_path / "wts.h5.zip")
    buffer = io.BytesIO()
    torch.save({"weight": CommandPayload(marker)}, buffer)
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", replace={"autoencoder/model.pth": buffer.getvalue()})
    with pytest.raises(BundleError, match="safe, readable state dict"):
        load_bundle(tampered)
    assert not marker.exists()


def test_torch_reject_changed_weights(tmp_path):
    first = untrained_torch_bundle(tmp_path / "a.zip", seed=0)
    second = untrained_torch_bundle(tmp_path / "b.zip", seed=1)
    with zipfile.ZipFile(second) as archive:
        other = archive.read("diffraction_to_obj/model.pth")
    tampered = rewrite_bundle(first, tmp_path / "bad.zip", replace={"diffraction_to_obj/model.pth": other})
    with pytest.raises(BundleError, match="verification"):
        load_bundle(tampered)


def test_torch_reject_missing_probe(tmp_path):
    source = untrained_torch_bundle(tmp_path / "wts.h5.zip")
    tampered = rewrite_bundle(source, tmp_path / "bad.zip", remove=["probe.npy"])
    with pytest.raises(BundleError, match="probe.npy"):
        load_bundle(tampered)


def test_torch_reject_tensorflow_bundle(tmp_path):
    source = untrained_torch_bundle(tmp_path / "wts.h5.zip")
    manifest = dumps_plain({"models": ["autoencoder", "diffraction_to_obj"], "version": "1.0", "backend": "tensorflow"})
    tampered = rewrite_bundle(source, tmp_path / "tf.zip", replace={"manifest.dill": manifest})
    with pytest.raises(BundleError, match="tensorflow backend; the pytorch backend"):
        torch_bundle.load_bundle(tampered)
