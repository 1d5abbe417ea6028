"""PyTorch model bundles: writing the weights and loading them back safely.

Members that this backend adds to the neutral layout (`fly64.bundle.archive`):

    autoencoder/model.pth         state dict of the training model (PINN: network and
                                  `log_intensity_scale`; baseline: network)
    diffraction_to_obj/model.pth  state dict of the inference model (network only)
    probe.npy                     complex64 (N, N) probe of the PINN's forward model
    verification.npz              one input batch (`amplitude` raw, `offsets_px`,
                                  `norm_factor`) and the model's `expected` complex64 output

Weights load with `torch.load(weights_only=True)`, which admits tensors and plain
containers only, and must match the model that the params describe, key for key and
shape for shape.
"""

import io
import logging
import os
import pickle
import zipfile
from typing import Any

import numpy as np
import torch

from fly64.backends.base import (
    INFERENCE_MODEL,
    TRAINING_MODEL,
    VERIFICATION_MEMBER,
    LoadedModel,
)
from fly64.backends.pytorch.inference import predict_patches
from fly64.backends.pytorch.models import (
    BaselineAutoencoder,
    DiffractionToObject,
    PinnAutoencoder,
)
from fly64.bundle.archive import (
    BUNDLE_VERSION,
    MODEL_NAMES,
    BundleContents,
    npy_bytes,
    npz_bytes,
    read_bundle,
    write_bundle,
)
from fly64.errors import BundleError
from fly64.learning.spec import ModelSpec

logger = logging.getLogger(__name__)

BACKEND = "pytorch"
WEIGHTS_FILENAME = "model.pth"
PROBE_MEMBER = "probe.npy"


def weights_member(model: str) -> str:
    return f"{model}/{WEIGHTS_FILENAME}"


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    """Serialise a module's state dict with `torch.save`, as contiguous CPU tensors.

    Equal weights give equal bytes (checked for torch 2.14: `torch.save` writes fixed
    ZIP timestamps and a serialization id derived from the content).
    """
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in module.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_torch_bundle(
    path: str | os.PathLike,
    autoencoder: torch.nn.Module,
    norm_factor: float,
    verification: dict[str, np.ndarray],
    provenance: dict[str, Any],
) -> None:
    """Write a trained `PinnAutoencoder` or `BaselineAutoencoder` as a bundle.

    Args:
        path: the bundle file to write (atomically).
        autoencoder: the trained model; its `diffraction_to_obj` is the inference model.
        norm_factor: normalisation factor of the training data.
        verification: `amplitude` (raw, float32 (b, C, N, N)), `offsets_px`, `norm_factor`
            and `expected` (complex64 output of the inference model on that batch).
        provenance: plain data for `manifest.json`.
    """
    network: DiffractionToObject = autoencoder.diffraction_to_obj
    spec = network.spec
    intensity_scale = autoencoder.intensity_scale if isinstance(autoencoder, PinnAutoencoder) else 1.0
    common = {
        **spec.to_params(),
        "intensity_scale": float(intensity_scale),
        "norm_factor": float(norm_factor),
        "backend": BACKEND,
        "weights": WEIGHTS_FILENAME,
        "input_layout": "B, C, N, N (channels first)",
        "torch_version": torch.__version__,
    }
    params = {TRAINING_MODEL: dict(common), INFERENCE_MODEL: dict(common)}
    members = {
        weights_member(TRAINING_MODEL): state_dict_bytes(autoencoder),
        weights_member(INFERENCE_MODEL): state_dict_bytes(network),
        VERIFICATION_MEMBER: npz_bytes(verification),
    }
    if isinstance(autoencoder, PinnAutoencoder):
        params[TRAINING_MODEL]["probe_member"] = PROBE_MEMBER
        members[PROBE_MEMBER] = npy_bytes(autoencoder.probe.detach().cpu().numpy().astype(np.complex64))

    manifest = {"models": list(MODEL_NAMES), "version": BUNDLE_VERSION, "backend": BACKEND}
    write_bundle(path, manifest, members, params=params, provenance=provenance)


class TorchLoadedModel(LoadedModel):
    """Inference model of a PyTorch bundle (see `fly64.backends.base.LoadedModel`)."""

    def __init__(self, contents: BundleContents, network: DiffractionToObject, autoencoder: torch.nn.Module) -> None:
        super().__init__(contents)
        self.network = network.eval()
        self.autoencoder = autoencoder.eval()

    def predict_normalised(self, amplitude: np.ndarray, offsets_px: np.ndarray) -> np.ndarray:
        return predict_patches(self.network, amplitude, offsets_px, batch_size=max(1, amplitude.shape[0]))


def load_bundle(source: str | os.PathLike | BundleContents, verify: bool = True) -> TorchLoadedModel:
    """Load a bundle written by this backend.

    Args:
        source: the bundle path, or contents already read by `fly64.bundle.read_bundle`.
        verify: run the stored verification batch and require the stored output.

    Raises:
        BundleError: naming the bundle, when it was written by another backend, lacks a
            model, weights or probe, contains weights that are unsafe, unreadable or do not
            match its params (another gridsize or preset), or fails verification.
    """
    contents = source if isinstance(source, BundleContents) else read_bundle(source)
    path = contents.path
    if contents.backend != BACKEND:
        raise BundleError(
            f"{path}: bundle was written by the {contents.backend} backend; the {BACKEND} backend cannot load it "
            "(fly64.backends.load_bundle picks the right backend)"
        )
    missing_models = [model for model in MODEL_NAMES if model not in contents.params]
    if missing_models:
        raise BundleError(f"{path}: manifest lacks model(s) {', '.join(missing_models)}")
    for model in MODEL_NAMES:
        stored_backend = contents.params[model].get("backend", BACKEND)
        if stored_backend != BACKEND:
            raise BundleError(f"{path}: {model}/params.dill names backend {stored_backend!r}, the manifest {BACKEND!r}")

    specs = {model: _spec(contents, model) for model in MODEL_NAMES}
    if specs[TRAINING_MODEL] != specs[INFERENCE_MODEL]:
        raise BundleError(f"{path}: {TRAINING_MODEL} and {INFERENCE_MODEL} params describe different models")
    spec = specs[INFERENCE_MODEL]

    network = DiffractionToObject(spec)
    _load_state(network, contents, INFERENCE_MODEL)
    if spec.kind == "pinn":
        probe = contents.load_array(PROBE_MEMBER)
        if probe.shape != (spec.patch_size, spec.patch_size) or not np.iscomplexobj(probe) or not np.all(np.isfinite(probe)):
            raise BundleError(f"{path}: {PROBE_MEMBER} is {probe.dtype} {probe.shape}; expected finite complex ({spec.patch_size}, {spec.patch_size})")
        autoencoder: torch.nn.Module = PinnAutoencoder(spec, torch.from_numpy(probe.astype(np.complex64)), 1.0)
    else:
        autoencoder = BaselineAutoencoder(spec)
    _load_state(autoencoder, contents, TRAINING_MODEL)

    loaded = TorchLoadedModel(contents, network, autoencoder)
    if verify:
        loaded.verify()
    logger.info("Loaded %s bundle %s (%s, gridsize %d, preset %s)", BACKEND, path, spec.kind, spec.gridsize, spec.preset)
    return loaded


def _spec(contents: BundleContents, model: str) -> ModelSpec:
    try:
        return ModelSpec.from_params(contents.params[model], source=f"{contents.path}:{model}/params.dill")
    except BundleError:
        raise
    except ValueError as error:
        raise BundleError(str(error)) from None


def _load_state(module: torch.nn.Module, contents: BundleContents, model: str) -> None:
    """Load `<model>/model.pth` into `module`, requiring finite tensors with exactly the module's keys and shapes."""
    name = weights_member(model)
    data = contents.member(name)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as error:
        raise BundleError(f"{contents.path}: {name} is not a safe, readable state dict ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise BundleError(f"{contents.path}: {name} is a {type(state).__name__}; expected a state dict of tensors")

    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [key for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if mismatched:
            key = mismatched[0]
            details.append(f"{key} has shape {tuple(state[key].shape)}, the params' model needs {tuple(expected[key].shape)}")
        raise BundleError(f"{contents.path}: {name} does not match the model its params describe ({'; '.join(details)})")
    if not all(torch.all(torch.isfinite(value)) for value in state.values() if value.is_floating_point()):
        raise BundleError(f"{contents.path}: {name} contains NaN or infinite weights")
    module.load_state_dict(state, strict=True)
