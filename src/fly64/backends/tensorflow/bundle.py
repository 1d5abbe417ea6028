"""TensorFlow model bundles: writing the Keras models and loading them back safely.

Members that this backend adds to the neutral layout (`fly64.bundle.archive`):

    autoencoder/model.keras         the training model (PINN: amplitudes and positions to
                                    predicted counts; baseline: amplitudes to amplitude
                                    and phase), uncompiled, without optimiser state
    diffraction_to_obj/model.keras  the inference model: `amplitude` (B, N, N, C) and
                                    `positions` (B, 1, 2, C) to complex64 patches
                                    (B * C, N, N, 1) in group-major order
    probe.npy                       complex64 (N, N) probe of the PINN's forward model
                                    (also held as weights of its `FarFieldIntensity` layer)
    verification.npz                one input batch (`amplitude` raw, channels first,
                                    `offsets_px`, `norm_factor`) and the model's `expected`
                                    complex64 output (B, C, N, N)

The `.keras` files are byte-reproducible (see `keras_archive`), so with deterministic
training the whole bundle is too. They load with `keras.models.load_model(path,
safe_mode=True)` once `fly64.backends.tensorflow.layers` is imported. This loader checks
every class the configs name against an allowlist first, then requires the loaded
models to match the models that the params describe, layer for layer and weight for
weight.
"""

import logging
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fly64.backends.base import INFERENCE_MODEL, TRAINING_MODEL, VERIFICATION_MEMBER, LoadedModel
from fly64.backends.tensorflow.keras_archive import keras_model_bytes, load_keras_model
from fly64.backends.tensorflow.layers import FarFieldIntensity, positions_from_offsets
from fly64.backends.tensorflow.models import FORWARD_MODEL_LAYER, ModelPair, build_models
from fly64.bundle.archive import BUNDLE_VERSION, MODEL_NAMES, BundleContents, npy_bytes, npz_bytes, read_bundle, write_bundle
from fly64.errors import BundleError
from fly64.learning.spec import ModelSpec

logger = logging.getLogger(__name__)

BACKEND = "tensorflow"
WEIGHTS_FILENAME = "model.keras"
PROBE_MEMBER = "probe.npy"
INPUT_LAYOUT = "amplitude B, N, N, C (channels last); positions B, 1, 2, C with (x, y) on axis 2, pixels"
OUTPUT_LAYOUT = "complex64 B * C, N, N, 1; patch b * C + c is member c of group b"


def weights_member(model: str) -> str:
    return f"{model}/{WEIGHTS_FILENAME}"


def export_models(pair: ModelPair, spec: ModelSpec, probe: np.ndarray | None) -> ModelPair:
    """Return an uncompiled copy of a trained pair, with the trained intensity scale as the layer's starting value.

    A compiled model would save its optimiser state and loss into the `.keras` file; the
    copy carries the weights alone.
    """
    exported = build_models(spec, probe, pair.trained_intensity_scale())
    exported.autoencoder.set_weights(pair.autoencoder.get_weights())
    return exported


def write_tensorflow_bundle(
    path: str | os.PathLike,
    pair: ModelPair,
    spec: ModelSpec,
    probe: np.ndarray,
    norm_factor: float,
    verification: dict[str, np.ndarray],
    provenance: dict[str, Any],
) -> None:
    """Write a trained model pair as a bundle.

    Args:
        path: the bundle file to write (atomically).
        pair: the trained models.
        spec: their architecture.
        probe: complex (N, N) probe of the PINN's forward model; stored for the PINN only.
        norm_factor: normalisation factor of the training data.
        verification: `amplitude` (raw, float32 (b, C, N, N)), `offsets_px` (b, C, 2),
            `norm_factor` and `expected` (complex64 (b, C, N, N) output of the inference
            model on that batch).
        provenance: plain data for `manifest.json`.
    """
    exported = export_models(pair, spec, probe if spec.kind == "pinn" else None)
    common = {
        **spec.to_params(),
        "intensity_scale": float(pair.trained_intensity_scale()),
        "norm_factor": float(norm_factor),
        "backend": BACKEND,
        "weights": WEIGHTS_FILENAME,
        "input_layout": INPUT_LAYOUT,
        "output_layout": OUTPUT_LAYOUT,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    params = {TRAINING_MODEL: dict(common), INFERENCE_MODEL: dict(common)}
    members = {
        weights_member(TRAINING_MODEL): keras_model_bytes(exported.autoencoder),
        weights_member(INFERENCE_MODEL): keras_model_bytes(exported.diffraction_to_obj),
        VERIFICATION_MEMBER: npz_bytes(verification),
    }
    if spec.kind == "pinn":
        params[TRAINING_MODEL]["probe_member"] = PROBE_MEMBER
        members[PROBE_MEMBER] = npy_bytes(np.asarray(probe, dtype=np.complex64))

    manifest = {"models": list(MODEL_NAMES), "version": BUNDLE_VERSION, "backend": BACKEND}
    write_bundle(path, manifest, members, params=params, provenance=provenance)


def predict_patches(network: keras.Model, amplitude: np.ndarray, offsets_px: np.ndarray) -> np.ndarray:
    """Run a `diffraction_to_obj` model on one batch in the neutral layout.

    Args:
        network: the Keras inference model.
        amplitude: float32 (b, C, N, N) normalised amplitudes, channels first.
        offsets_px: float32 (b, C, 2) members' (x, y) offsets in pixels.

    Returns:
        complex64 (b, C, N, N) patches.
    """
    groups, channels, patch_size = amplitude.shape[0], amplitude.shape[1], amplitude.shape[-1]
    inputs = [
        np.ascontiguousarray(np.moveaxis(np.asarray(amplitude, dtype=np.float32), 1, -1)),
        positions_from_offsets(offsets_px),
    ]
    patches = network(inputs, training=False)
    return np.asarray(patches, dtype=np.complex64).reshape(groups, channels, patch_size, patch_size)


class KerasLoadedModel(LoadedModel):
    """Inference model of a TensorFlow bundle (see `fly64.backends.base.LoadedModel`).

    Attributes:
        network: the Keras `diffraction_to_obj` model.
        autoencoder: the Keras training model.
    """

    def __init__(self, contents: BundleContents, network: keras.Model, autoencoder: keras.Model) -> None:
        super().__init__(contents)
        self.network = network
        self.autoencoder = autoencoder

    def predict_normalised(self, amplitude: np.ndarray, offsets_px: np.ndarray) -> np.ndarray:
        return predict_patches(self.network, amplitude, offsets_px)


def load_bundle(source: str | os.PathLike | BundleContents, verify: bool = True) -> KerasLoadedModel:
    """Load a bundle written by this backend.

    Args:
        source: the bundle path, or contents already read by `fly64.bundle.read_bundle`.
        verify: run the stored verification batch and require the stored output.

    Raises:
        BundleError: naming the bundle and the reason. The bundle was written by another
            backend, lacks a model, weights or probe, or fails verification. Or a `.keras`
            file is damaged or names a class outside the allowlist (a `Lambda` layer, an
            unregistered class). Or the models differ from what the params describe
            (another gridsize, preset or canvas margin).
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

    loaded = {
        model: load_keras_model(contents.member(weights_member(model)), f"{path}:{weights_member(model)}")
        for model in MODEL_NAMES
    }
    expected = build_models(spec)
    for model, reference in ((TRAINING_MODEL, expected.autoencoder), (INFERENCE_MODEL, expected.diffraction_to_obj)):
        _check_matches(loaded[model], reference, f"{path}:{weights_member(model)}")
    if spec.kind == "pinn":
        _check_probe(contents, loaded[TRAINING_MODEL], spec)

    result = KerasLoadedModel(contents, loaded[INFERENCE_MODEL], loaded[TRAINING_MODEL])
    if verify:
        result.verify()
    logger.info("Loaded %s bundle %s (%s, gridsize %d, preset %s)", BACKEND, path, spec.kind, spec.gridsize, spec.preset)
    return result


def _spec(contents: BundleContents, model: str) -> ModelSpec:
    try:
        return ModelSpec.from_params(contents.params[model], source=f"{contents.path}:{model}/params.dill")
    except BundleError:
        raise
    except ValueError as error:
        raise BundleError(str(error)) from None


def _layer_signature(layer: keras.layers.Layer) -> tuple[str, str, tuple[tuple[str, Any], ...]]:
    """Return a layer's name, class and the config values that set its computation."""
    config = layer.get_config()
    keys = ("filters", "kernel_size", "strides", "padding", "activation", "pool_size", "size",
            "interpolation", "canvas_pad_px", "patch_size", "batch_shape")
    return type(layer).__name__, layer.name, tuple((key, _plain(config[key])) for key in keys if key in config)


def _plain(value: Any) -> Any:
    return tuple(_plain(item) for item in value) if isinstance(value, (list, tuple)) else value


def _check_matches(model: keras.Model, reference: keras.Model, source: str) -> None:
    """Require `model` to have the layers and weight shapes of `reference`, and finite weights.

    Raises:
        BundleError: naming `source` and the first difference.
    """
    mismatch = f"{source}: model does not match its params"
    layers = [_layer_signature(layer) for layer in model.layers]
    expected_layers = [_layer_signature(layer) for layer in reference.layers]
    if len(layers) != len(expected_layers):
        raise BundleError(f"{mismatch}: it has {len(layers)} layers, the params describe {len(expected_layers)}")
    for found, wanted in zip(layers, expected_layers):
        if found != wanted:
            raise BundleError(
                f"{mismatch}: layer {found[1]} is {found[0]} {dict(found[2])}, "
                f"the params describe {wanted[1]}, {wanted[0]} {dict(wanted[2])}"
            )

    weights = model.weights
    expected_weights = reference.weights
    if len(weights) != len(expected_weights):
        raise BundleError(f"{mismatch}: it has {len(weights)} weights, the params describe {len(expected_weights)}")
    for weight, wanted in zip(weights, expected_weights):
        if weight.path != wanted.path or tuple(weight.shape) != tuple(wanted.shape):
            raise BundleError(
                f"{mismatch}: weight {weight.path} has shape {tuple(weight.shape)}, "
                f"the params describe {wanted.path} of shape {tuple(wanted.shape)}"
            )
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight))):
            raise BundleError(f"{source}: weight {weight.path} contains NaN or infinite values")


def _check_probe(contents: BundleContents, autoencoder: keras.Model, spec: ModelSpec) -> None:
    """Require the stored probe to equal the probe weights of the PINN's forward model."""
    probe = contents.load_array(PROBE_MEMBER)
    size = spec.patch_size
    if probe.shape != (size, size) or not np.iscomplexobj(probe) or not np.all(np.isfinite(probe)):
        raise BundleError(
            f"{contents.path}: {PROBE_MEMBER} is {probe.dtype} {probe.shape} or not finite; expected finite complex ({size}, {size})"
        )
    forward_model: FarFieldIntensity = autoencoder.get_layer(FORWARD_MODEL_LAYER)
    layer_probe = keras.ops.convert_to_numpy(forward_model.probe_real) + 1j * keras.ops.convert_to_numpy(forward_model.probe_imag)
    if not np.array_equal(layer_probe.astype(np.complex64), probe.astype(np.complex64)):
        raise BundleError(f"{contents.path}: {PROBE_MEMBER} differs from the probe weights of {TRAINING_MODEL}/{WEIGHTS_FILENAME}")
