"""Keras models of the PINN and the supervised baseline, built layer for layer from a `ModelSpec`.

The layout (encoder, two decoders, output activations) is the one in `fly64.learning.spec`,
in the same order as the PyTorch backend's `ObjectNetwork`. Both models of a bundle share
their layers:

- `diffraction_to_obj`: inputs `amplitude` float32 (B, N, N, C), normalised, and
  `positions` float32 (B, 1, 2, C), members' (x, y) offsets from the group centre in
  pixels. Output: complex64 (B * C, N, N, 1) patches in group-major order (see
  `GroupToPatches`). For the PINN at gridsize > 1 the patches are those after the
  overlap constraint. The baseline ignores `positions`, which keeps one signature.
- `autoencoder` of the PINN: the same inputs; output float32 (B, N, N, C) predicted photon
  counts, trained with `PoissonNLL` against measured counts.
- `autoencoder` of the baseline: input `amplitude`. Outputs: `object_amplitude` and
  `object_phase`, float32 (B, N, N, C) each, trained with mean absolute error against the
  ground-truth patches.

Convolutions draw from PyTorch's default initialisation (see `_conv`). Training jobs then
replace the draws with `set_initial_weights`, the seed's backend-neutral weights, so that
both backends start from the same network. Every layer has a fixed name, so two builds
of one spec give identical model configs.
"""

import dataclasses
import math

import keras
import numpy as np

from fly64.backends.tensorflow.layers import (
    ComplexFromPolar,
    FarFieldIntensity,
    GroupToPatches,
    IntensityScale,
    OverlapConstraint,
    PhaseActivation,
)
from fly64.learning.seeding import initial_convolutions
from fly64.learning.spec import ModelSpec

AMPLITUDE_INPUT = "amplitude"
POSITIONS_INPUT = "positions"
OBJECT_AMPLITUDE_OUTPUT = "object_amplitude"
OBJECT_PHASE_OUTPUT = "object_phase"
INTENSITY_SCALE_LAYER = "intensity_scale"
FORWARD_MODEL_LAYER = "far_field_intensity"


@dataclasses.dataclass
class ModelPair:
    """The two Keras models of a bundle, sharing their layers.

    Attributes:
        autoencoder: the model that is trained (see the module docstring for its outputs).
        diffraction_to_obj: the inference model, amplitudes and positions to complex64 patches.
        intensity_scale: the PINN's `IntensityScale` layer, None for the baseline.
    """

    autoencoder: keras.Model
    diffraction_to_obj: keras.Model
    intensity_scale: IntensityScale | None

    def trained_intensity_scale(self) -> float:
        """Return the photon scale learned by the PINN, 1.0 for the baseline."""
        return 1.0 if self.intensity_scale is None else self.intensity_scale.intensity_scale


def _conv(filters: int, in_channels: int, name: str, activation: str | None = "relu") -> keras.layers.Conv2D:
    """Return a 3x3 "same" convolution initialised as PyTorch initialises `nn.Conv2d`.

    PyTorch draws kernel and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in =
    9 * in_channels (torch 2.14, `nn.Conv2d.reset_parameters`). Keras's default Glorot
    kernels are larger and its biases start at 0, and the two backends diverged with it.
    In 20-epoch trainings of the compact baseline (64-pattern synthetic scan, seeds 3
    and 4), the test phase correlation was 0.14 to 0.18 higher with Glorot than with
    PyTorch. With this start it came within 0.03 of PyTorch.
    """
    bound = 1.0 / math.sqrt(9 * in_channels)
    return keras.layers.Conv2D(
        filters,
        3,
        padding="same",
        activation=activation,
        kernel_initializer=keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        name=name,
    )


def _encoder(spec: ModelSpec, amplitude: keras.KerasTensor) -> keras.KerasTensor:
    features = amplitude
    in_channels = spec.channels
    for block, filters in enumerate(spec.encoder_filters, start=1):
        features = _conv(filters, in_channels, f"encoder_{block}_conv_1")(features)
        features = _conv(filters, filters, f"encoder_{block}_conv_2")(features)
        features = keras.layers.MaxPooling2D(2, strides=2, name=f"encoder_{block}_pool")(features)
        in_channels = filters
    return features


def _decoder(spec: ModelSpec, features: keras.KerasTensor, prefix: str) -> keras.KerasTensor:
    in_channels = spec.encoder_filters[-1]
    for block, filters in enumerate(spec.decoder_filters, start=1):
        features = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_{block}_upsample")(features)
        features = _conv(filters, in_channels, f"{prefix}_{block}_conv_1")(features)
        features = _conv(filters, filters, f"{prefix}_{block}_conv_2")(features)
        in_channels = filters
    last = len(spec.decoder_filters) + 1
    features = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{prefix}_{last}_upsample")(features)
    return _conv(spec.channels, in_channels, f"{prefix}_output", activation=None)(features)


def build_models(spec: ModelSpec, probe: np.ndarray | None = None, initial_intensity_scale: float = 1.0) -> ModelPair:
    """Build the autoencoder and `diffraction_to_obj` models of `spec`, with freshly initialised weights.

    Args:
        spec: the architecture; `spec.kind` selects the PINN or the baseline.
        probe: complex (N, N) probe of the PINN's forward model; zeros when None (for a
            model whose weights are loaded afterwards). Ignored for the baseline.
        initial_intensity_scale: the PINN's starting photon scale; before training,
            `fly64.backends.tensorflow.training.calibrate_intensity_scale` sets it from
            the data. Ignored for the baseline.

    Raises:
        ValueError: the probe's shape is not (N, N) or the scale is not finite and positive.
    """
    size, channels = spec.patch_size, spec.channels
    amplitude = keras.Input((size, size, channels), name=AMPLITUDE_INPUT)
    positions = keras.Input((1, 2, channels), name=POSITIONS_INPUT)

    features = _encoder(spec, amplitude)
    object_amplitude = keras.layers.Activation("sigmoid", name=OBJECT_AMPLITUDE_OUTPUT)(
        _decoder(spec, features, "amplitude_decoder")
    )
    object_phase = PhaseActivation(name=OBJECT_PHASE_OUTPUT)(_decoder(spec, features, "phase_decoder"))
    patches = ComplexFromPolar(name="patches")(object_amplitude, object_phase)

    if spec.kind == "baseline":
        autoencoder = keras.Model(amplitude, [object_amplitude, object_phase], name="autoencoder")
        diffraction_to_obj = keras.Model(
            [amplitude, positions], GroupToPatches(name="group_to_patches")(patches), name="diffraction_to_obj"
        )
        return ModelPair(autoencoder, diffraction_to_obj, None)

    if spec.gridsize > 1:
        patches = OverlapConstraint(spec.canvas_pad_px, name="overlap_constraint")(patches, positions)
    forward_model = FarFieldIntensity(size, name=FORWARD_MODEL_LAYER)
    if probe is not None:
        forward_model.set_probe(probe)
    intensity_scale = IntensityScale(initial_intensity_scale, name=INTENSITY_SCALE_LAYER)
    counts = intensity_scale(forward_model(patches))

    autoencoder = keras.Model([amplitude, positions], counts, name="autoencoder")
    diffraction_to_obj = keras.Model(
        [amplitude, positions], GroupToPatches(name="group_to_patches")(patches), name="diffraction_to_obj"
    )
    return ModelPair(autoencoder, diffraction_to_obj, intensity_scale)


def set_initial_weights(pair: ModelPair, spec: ModelSpec, seed: int) -> None:
    """Set every convolution to the seed's backend-neutral starting kernel and bias.

    These are `fly64.learning.seeding.initial_convolutions`, the weights the
    PyTorch backend starts from with the same seed. Kernels are transposed from
    (out, in, 3, 3) to Keras's (3, 3, in, out).
    """
    for weights in initial_convolutions(spec, seed):
        layer = pair.autoencoder.get_layer(weights.name)
        layer.set_weights([weights.kernel.transpose(2, 3, 1, 0), weights.bias])


def network_parameter_count(model: keras.Model) -> int:
    """Return the trainable weights of the convolutions, the figure `ModelSpec.parameter_count` predicts."""
    return sum(
        int(np.prod(weight.shape))
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
        for weight in layer.trainable_weights
    )
