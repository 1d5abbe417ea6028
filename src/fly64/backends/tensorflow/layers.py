"""Keras layers of the PINN's physics and the complex patch output, registered for safe loading.

Every layer here is registered with `keras.saving.register_keras_serializable(package="fly64")`,
so a saved `.keras` model names them as `fly64>ClassName` and loads with
`keras.models.load_model(..., safe_mode=True)` once this module is imported. No layer's
config contains Python code.

Tensors are channels last, as Keras convolutions expect: patches and amplitudes are
(B, N, N, C) for groups of C = gridsize² members, and member positions are (B, 1, 2, C)
with x (columns) at index 0 and y (rows) at index 1 of the third axis, in pixels
relative to the group centre.

Bilinear translation convention of `fly64.learning.spec`, which the PyTorch backend
implements as well: translating an image by (dx, dy) pixels gives
`out[i, j] = in(i - dy, j - dx)`, where `in(y, x)` interpolates bilinearly between the
four nearest pixels and pixels outside the image count as zero. The translation is
separable, `Ty @ image @ Tx.T`, with hat matrices `T[i, j] = max(0, 1 - |j - source(i)|)`
where `source(i)` is the input coordinate that output pixel i samples.

Overlap constraint (gridsize > 1): patch c goes onto a shared canvas of side
S = N + 2 * pad with its centre at the canvas centre plus its offset, so patch pixel
(i, j) covers canvas coordinate (i + pad + y_c, j + pad + x_c). The canvas is the sum of
the placed patches divided by the sum of the placed ones-masks (clamped below at
`fly64.learning.spec.OVERLAP_WEIGHT_FLOOR`), and each patch is cut out again at its offset.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from fly64.learning.spec import OVERLAP_WEIGHT_FLOOR, POISSON_EPSILON

PACKAGE = "fly64"


def hat_matrix(source_shift: tf.Tensor, out_size: int, in_size: int) -> tf.Tensor:
    """Return bilinear interpolation matrices for outputs that sample the input at `i + source_shift`.

    Args:
        source_shift: float32 (...,) shift in pixels; output pixel i samples input
            coordinate `i + source_shift`.
        out_size, in_size: lengths of the output and input axes.

    Returns:
        float32 (..., out_size, in_size) with `T[..., i, j] = max(0, 1 - |j - i - shift|)`.
    """
    out_index = tf.range(out_size, dtype=source_shift.dtype)
    in_index = tf.range(in_size, dtype=source_shift.dtype)
    source = out_index[:, None] + source_shift[..., None, None]
    return tf.nn.relu(1.0 - tf.abs(in_index - source))


def translate(image: tf.Tensor, dx_px: tf.Tensor, dy_px: tf.Tensor) -> tf.Tensor:
    """Translate real images (..., H, W) by (dx, dy) pixels with bilinear interpolation and zero fill.

    `dx_px` and `dy_px` have the leading shape of `image`, one shift per image.
    """
    height, width = image.shape[-2], image.shape[-1]
    rows = hat_matrix(-dy_px, height, height)
    columns = hat_matrix(-dx_px, width, width)
    return tf.matmul(tf.matmul(rows, image), columns, transpose_b=True)


def overlap_constraint(patches: tf.Tensor, offsets_px: tf.Tensor, canvas_pad_px: int | tf.Tensor) -> tf.Tensor:
    """Average a group's patches on a shared canvas and cut them out again.

    Args:
        patches: complex64 (B, C, N, N), channels first.
        offsets_px: float32 (B, C, 2), members' (x, y) offsets from the group centre in pixels.
        canvas_pad_px: canvas margin, an int or an int32 scalar tensor; it must exceed
            max |offset| for no content to fall off the canvas. Larger margins give the
            same result up to rounding.

    Returns:
        complex64 (B, C, N, N), the constrained patches.
    """
    patch_size = patches.shape[-1]
    canvas_size = patch_size + 2 * canvas_pad_px
    offset_x = offsets_px[..., 0]
    offset_y = offsets_px[..., 1]
    pad = tf.cast(canvas_pad_px, offsets_px.dtype)

    # Canvas pixel i samples patch coordinate i - pad - offset; patch pixel i samples
    # canvas coordinate i + pad + offset.
    place_rows = hat_matrix(-(pad + offset_y), canvas_size, patch_size)[:, :, None]
    place_columns = hat_matrix(-(pad + offset_x), canvas_size, patch_size)[:, :, None]
    cut_rows = hat_matrix(pad + offset_y, patch_size, canvas_size)[:, :, None]
    cut_columns = hat_matrix(pad + offset_x, patch_size, canvas_size)[:, :, None]

    parts = tf.stack([tf.math.real(patches), tf.math.imag(patches)], axis=2)  # (B, C, 2, N, N)
    placed = tf.matmul(tf.matmul(place_rows, parts), place_columns, transpose_b=True)
    # A placed ones-mask is the outer product of the row sums of the two hat matrices.
    weights = tf.reduce_sum(place_rows, axis=-1)[..., :, None] * tf.reduce_sum(place_columns, axis=-1)[..., None, :]

    canvas = tf.reduce_sum(placed, axis=1) / tf.maximum(tf.reduce_sum(weights, axis=1), OVERLAP_WEIGHT_FLOOR)
    cut = tf.matmul(tf.matmul(cut_rows, canvas[:, None]), cut_columns, transpose_b=True)
    return tf.complex(cut[:, :, 0], cut[:, :, 1])


def required_canvas_pad_px(offsets_px: tf.Tensor) -> tf.Tensor:
    """Return the int32 margin ceil(max |offset|) + 1 that keeps every placed patch on the canvas."""
    largest = tf.reduce_max(tf.abs(offsets_px))
    return tf.cast(tf.math.ceil(largest), tf.int32) + 1


def far_field_intensity(patches: tf.Tensor, probe: tf.Tensor) -> tf.Tensor:
    """Return |fftshift(fft2(patch * probe, norm="ortho"))|² for complex64 patches (..., N, N).

    The zero frequency lands at pixel (N // 2, N // 2). With the orthonormal FFT the sum
    of the intensity equals sum(|patch * probe|²) (Parseval).
    """
    patch_size = patches.shape[-1]
    exit_wave = patches * probe
    far_field = tf.signal.fftshift(tf.signal.fft2d(exit_wave), axes=(-2, -1))
    # tf.signal.fft2d is unnormalised; dividing by N makes it orthonormal for an N x N array.
    far_field = far_field / tf.complex(float(patch_size), 0.0)
    return tf.square(tf.math.real(far_field)) + tf.square(tf.math.imag(far_field))


def _channels_first(tensor: tf.Tensor) -> tf.Tensor:
    return tf.transpose(tensor, (0, 3, 1, 2))


def _channels_last(tensor: tf.Tensor) -> tf.Tensor:
    return tf.transpose(tensor, (0, 2, 3, 1))


def offsets_from_positions(positions: tf.Tensor) -> tf.Tensor:
    """Convert Keras positions (B, 1, 2, C) to offsets (B, C, 2) with (x, y) last."""
    return tf.transpose(positions[:, 0], (0, 2, 1))


def positions_from_offsets(offsets_px: np.ndarray) -> np.ndarray:
    """Convert neutral offsets (B, C, 2) to float32 Keras positions (B, 1, 2, C)."""
    offsets_px = np.asarray(offsets_px, dtype=np.float32)
    return np.ascontiguousarray(np.transpose(offsets_px, (0, 2, 1))[:, None])


@keras.saving.register_keras_serializable(package=PACKAGE)
class PhaseActivation(keras.layers.Layer):
    """Map decoder outputs to phases in (-pi, pi) radians: `pi * tanh(x)`."""

    def call(self, inputs):
        return math.pi * tf.tanh(inputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ComplexFromPolar(keras.layers.Layer):
    """Combine float32 amplitude and phase (B, N, N, C) into complex64 patches `amplitude * exp(i phase)`."""

    def call(self, amplitude, phase):
        return tf.complex(amplitude * tf.cos(phase), amplitude * tf.sin(phase))


@keras.saving.register_keras_serializable(package=PACKAGE)
class OverlapConstraint(keras.layers.Layer):
    """The gridsize > 1 overlap constraint: complex64 patches (B, N, N, C) and positions (B, 1, 2, C) to constrained patches (B, N, N, C).

    The canvas margin is `canvas_pad_px`, the margin of the training data, or more when
    a batch's offsets need it (`required_canvas_pad_px`), so that new data with larger
    offsets keeps every patch on the canvas. As with the PyTorch backend's inference,
    a larger margin changes the result only by rounding.
    """

    def __init__(self, canvas_pad_px: int, **kwargs):
        super().__init__(**kwargs)
        if int(canvas_pad_px) < 0:
            raise ValueError(f"canvas_pad_px = {canvas_pad_px}; expected at least 0")
        self.canvas_pad_px = int(canvas_pad_px)

    def call(self, patches, positions):
        offsets_px = offsets_from_positions(positions)
        pad = tf.maximum(tf.constant(self.canvas_pad_px, tf.int32), required_canvas_pad_px(offsets_px))
        constrained = overlap_constraint(_channels_first(patches), offsets_px, pad)
        return _channels_last(constrained)

    def get_config(self):
        return {**super().get_config(), "canvas_pad_px": self.canvas_pad_px}


@keras.saving.register_keras_serializable(package=PACKAGE)
class FarFieldIntensity(keras.layers.Layer):
    """The forward model without scale: complex64 patches (B, N, N, C) to far-field intensity float32 (B, N, N, C).

    The probe is a fixed, non-trainable weight pair (real and imaginary parts, (N, N)),
    saved with the model's weights; set it with `set_probe` after building.
    """

    def __init__(self, patch_size: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.probe_real = self.add_weight(
            name="probe_real", shape=(self.patch_size, self.patch_size), initializer="zeros", trainable=False
        )
        self.probe_imag = self.add_weight(
            name="probe_imag", shape=(self.patch_size, self.patch_size), initializer="zeros", trainable=False
        )

    def set_probe(self, probe: np.ndarray) -> None:
        """Store a complex (N, N) probe.

        Raises:
            ValueError: the probe's shape is not (N, N).
        """
        probe = np.asarray(probe)
        if probe.shape != (self.patch_size, self.patch_size):
            raise ValueError(f"probe has shape {probe.shape}; expected ({self.patch_size}, {self.patch_size})")
        self.probe_real.assign(probe.real.astype(np.float32))
        self.probe_imag.assign(probe.imag.astype(np.float32))

    def call(self, patches):
        probe = tf.complex(self.probe_real, self.probe_imag)
        return _channels_last(far_field_intensity(_channels_first(patches), probe))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class IntensityScale(keras.layers.Layer):
    """Multiply intensities by a trained photon scale, `exp(log_intensity_scale)`, giving predicted counts.

    The scale is log-parameterised so it stays positive; it starts at `initial_scale`.
    """

    def __init__(self, initial_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        initial_scale = float(initial_scale)
        if not (math.isfinite(initial_scale) and initial_scale > 0):
            raise ValueError(f"initial_scale = {initial_scale}; expected a finite positive number")
        self.initial_scale = initial_scale
        self.log_intensity_scale = self.add_weight(
            name="log_intensity_scale",
            shape=(),
            initializer=keras.initializers.Constant(math.log(initial_scale)),
            trainable=True,
        )

    @property
    def intensity_scale(self) -> float:
        return float(np.exp(keras.ops.convert_to_numpy(self.log_intensity_scale)))

    def call(self, intensity):
        return tf.exp(self.log_intensity_scale) * intensity

    def get_config(self):
        return {**super().get_config(), "initial_scale": self.initial_scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class GroupToPatches(keras.layers.Layer):
    """Flatten groups to single patches: (B, N, N, C) to (B * C, N, N, 1) in group-major order.

    Patch `b * C + c` of the output is member c of group b, so a batch of B groups gives
    its B * C patches in the order of the groups' members.
    """

    def call(self, patches):
        patch_size = patches.shape[1]
        members_first = _channels_first(patches)
        return tf.reshape(members_first, (-1, patch_size, patch_size, 1))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PoissonNLL(keras.losses.Loss):
    """Poisson negative log-likelihood of measured counts `n` under predicted counts `lambda`.

    The loss is the mean over all pixels of `lambda - n * log(lambda + POISSON_EPSILON)`. The
    constant `log(n!)` is left out, so the value can be negative.
    """

    def __init__(self, name: str = "poisson_nll", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        counts = tf.cast(y_true, y_pred.dtype)
        return y_pred - counts * tf.math.log(y_pred + POISSON_EPSILON)
