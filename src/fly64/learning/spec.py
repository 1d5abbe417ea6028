"""Model specification shared by every backend: the network's layers, sizes and presets.

The network maps C = gridsize² diffraction amplitudes (normalised, see
`fly64.learning.data`) to C complex object patches of N x N pixels. Every backend builds
the same layers in the same order, so that a preset has the same parameter count and the
same behaviour in PyTorch and TensorFlow.

Encoder, three blocks; block b has `encoder_filters[b]` filters:

    conv 3x3 (zero padding "same", bias) -> ReLU
    conv 3x3 (zero padding "same", bias) -> ReLU
    max-pool 2x2, stride 2

The bottleneck is N/8 x N/8 with `encoder_filters[-1]` channels. There are no skip
connections.

Two decoders with equal layout, one for the amplitude and one for the phase; each is

    up-sample x2 (nearest neighbour)
    conv 3x3 -> ReLU, conv 3x3 -> ReLU        with decoder_filters[0] filters
    up-sample x2 (nearest neighbour)
    conv 3x3 -> ReLU, conv 3x3 -> ReLU        with decoder_filters[1] filters
    up-sample x2 (nearest neighbour)
    conv 3x3 to C channels, no activation

Outputs: amplitude = sigmoid(amplitude decoder), phase = pi * tanh(phase decoder), and the
patch is amplitude * exp(i * phase). Convolutions start from PyTorch's default
initialisation, drawn with NumPy from the job's seed (`fly64.learning.seeding`), so that
both backends start a job from the same weights.

PINN physics after the network, identical in every backend:

1. Overlap constraint (gridsize > 1 only): the C patches of a group are placed on one
   canvas of side N + 2 * canvas_pad_px, patch c with its centre at the canvas centre
   plus its offset (x_c, y_c), so patch pixel (i, j) covers canvas coordinate
   (i + pad + y_c, j + pad + x_c). Placement and the reverse cut use bilinear
   interpolation with zero fill: `out[i, j] = in(i - dy, j - dx)` for a shift (dx, dy),
   where pixels outside the input count as zero (`grid_sample` with
   `align_corners=False`, pixel centres at integer coordinates). The canvas is the sum
   of the placed patches divided by the sum of the placed ones-masks, clamped below at
   `OVERLAP_WEIGHT_FLOOR`. Each patch is then cut out again at its offset.
2. Forward model: exit = patch * probe, far field = fftshift(fft2(exit, norm="ortho")),
   predicted counts = intensity_scale * |far field|², with intensity_scale =
   exp(log_intensity_scale) trained. It starts at sum(counts) / sum(|far field|²) of
   the untrained network over the first 64 training groups, so that the first predicted
   counts total the measured ones. Starting instead at the mean photons per pattern
   (right for a unit-amplitude object) made the amplitude sigmoid saturate at 1 in
   measured runs, because the object's real mean |O|² was about 0.4 and raising the
   amplitude was the quickest way to more photons.
3. Loss: Poisson negative log-likelihood, mean over pixels of
   `predicted - counts * log(predicted + POISSON_EPSILON)`.

The supervised baseline skips all three and minimises mean |amplitude error| plus mean
|phase error| (radians) against the ground-truth patches.

Presets:

- `reference`: encoder 64, 128, 256 and decoders 128, 64 filters, the size of the
  reference implementation's model at N = 64 (about 2.25 million parameters at C = 1),
  for like-for-like throughput comparisons.
- `compact`: the same layout with a quarter of the filters (16, 32, 64 and 32, 16; about
  0.14 million parameters). Convolution cost scales with filters², so compact trains
  many times faster on a CPU, which is where the study's default runs happen: with
  PyTorch at N = 64, batch 16, one thread of a shared 2-core AMD EPYC, 64 to 116 groups/s
  against 7 to 9 for `reference` (`python -m fly64.backends.pytorch.benchmark`).
"""

import dataclasses
from typing import Any

from fly64.errors import InputError

MODEL_KINDS = ("pinn", "baseline")
PRESETS = ("compact", "reference")

PRESET_ENCODER_FILTERS = {
    "reference": (64, 128, 256),
    "compact": (16, 32, 64),
}
PRESET_DECODER_FILTERS = {
    "reference": (128, 64),
    "compact": (32, 16),
}

# Overlap constraint: canvas pixels covered with less total weight than this are divided
# by this weight instead, which keeps uncovered pixels at 0.
OVERLAP_WEIGHT_FLOOR = 1e-3
# Poisson loss: added to predicted counts inside the logarithm.
POISSON_EPSILON = 1e-6

# Side of every convolution kernel, in pixels.
KERNEL_SIZE = 3
# Three 2x2 poolings halve the side three times, so N must divide by 8.
PATCH_SIZE_MULTIPLE = 8
MIN_PATCH_SIZE = 16


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's layers, independent of the backend.

    Attributes:
        patch_size: N, side of diffraction patterns and object patches, in pixels.
        gridsize: side of a group; the network takes C = gridsize² patterns at once.
        kind: `pinn` (trained through the physics forward model) or `baseline`
            (supervised against ground-truth patches).
        preset: `compact` or `reference`, which sets the filter counts.
        canvas_pad_px: margin around the N x N patch on the shared canvas of the overlap
            constraint (gridsize > 1, PINN only), in pixels; 0 for gridsize 1.

    Raises:
        InputError: on construction, for any value outside the ranges above.
    """

    patch_size: int
    gridsize: int
    kind: str
    preset: str = "compact"
    canvas_pad_px: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise InputError(f"model kind {self.kind!r} is invalid; expected one of {', '.join(MODEL_KINDS)}")
        if self.preset not in PRESETS:
            raise InputError(f"model preset {self.preset!r} is invalid; expected one of {', '.join(PRESETS)}")
        if self.patch_size < MIN_PATCH_SIZE or self.patch_size % PATCH_SIZE_MULTIPLE != 0:
            raise InputError(
                f"patch size N = {self.patch_size} is invalid; expected a multiple of "
                f"{PATCH_SIZE_MULTIPLE} and at least {MIN_PATCH_SIZE}"
            )
        if self.gridsize < 1:
            raise InputError(f"gridsize = {self.gridsize} is invalid; expected at least 1")
        if self.canvas_pad_px < 0:
            raise InputError(f"canvas_pad_px = {self.canvas_pad_px} is invalid; expected at least 0")

    @property
    def channels(self) -> int:
        """C, the patterns per group: gridsize²."""
        return self.gridsize**2

    @property
    def encoder_filters(self) -> tuple[int, int, int]:
        return PRESET_ENCODER_FILTERS[self.preset]

    @property
    def decoder_filters(self) -> tuple[int, int]:
        return PRESET_DECODER_FILTERS[self.preset]

    @property
    def canvas_size_px(self) -> int:
        """Side of the overlap constraint's shared canvas, N + 2 * canvas_pad_px."""
        return self.patch_size + 2 * self.canvas_pad_px

    def convolution_layout(self) -> list[tuple[str, int, int]]:
        """Return (name, in_channels, out_channels) of every 3x3 convolution, in layer order.

        The order is the encoder, the amplitude decoder, the phase decoder. The names are
        the TensorFlow backend's layer names (`encoder_1_conv_1`, ..., `phase_decoder_output`).
        """
        layout = []
        in_channels = self.channels
        for block, filters in enumerate(self.encoder_filters, start=1):
            layout.append((f"encoder_{block}_conv_1", in_channels, filters))
            layout.append((f"encoder_{block}_conv_2", filters, filters))
            in_channels = filters

        for prefix in ("amplitude_decoder", "phase_decoder"):
            in_channels = self.encoder_filters[-1]
            for block, filters in enumerate(self.decoder_filters, start=1):
                layout.append((f"{prefix}_{block}_conv_1", in_channels, filters))
                layout.append((f"{prefix}_{block}_conv_2", filters, filters))
                in_channels = filters
            layout.append((f"{prefix}_output", in_channels, self.channels))
        return layout

    def parameter_count(self) -> int:
        """Return the number of trainable network weights and biases (the PINN's intensity scale excluded)."""
        return sum(
            KERNEL_SIZE * KERNEL_SIZE * in_channels * out_channels + out_channels
            for _, in_channels, out_channels in self.convolution_layout()
        )

    def to_params(self) -> dict[str, Any]:
        """Return the spec as plain data for a bundle's `params.dill`."""
        return {
            "N": self.patch_size,
            "gridsize": self.gridsize,
            "model_kind": self.kind,
            "preset": self.preset,
            "canvas_pad_px": self.canvas_pad_px,
            "encoder_filters": list(self.encoder_filters),
            "decoder_filters": list(self.decoder_filters),
        }

    @classmethod
    def from_params(cls, params: dict[str, Any], source: str) -> "ModelSpec":
        """Rebuild a spec from a bundle's params.

        Raises:
            InputError: naming `source`, when a key is missing, a value is invalid, or
                the stored filter counts differ from the preset's.
        """
        missing = [key for key in ("N", "gridsize", "model_kind", "preset") if key not in params]
        if missing:
            raise InputError(f"{source}: params lack key(s) {', '.join(missing)}")
        try:
            spec = cls(
                patch_size=int(params["N"]),
                gridsize=int(params["gridsize"]),
                kind=str(params["model_kind"]),
                preset=str(params["preset"]),
                canvas_pad_px=int(params.get("canvas_pad_px", 0)),
            )
        except (TypeError, ValueError) as error:
            raise InputError(f"{source}: params describe no valid model ({error})") from None
        for key, expected in (("encoder_filters", spec.encoder_filters), ("decoder_filters", spec.decoder_filters)):
            if key in params and tuple(params[key]) != tuple(expected):
                raise InputError(
                    f"{source}: params {key} = {list(params[key])} differ from preset "
                    f"{spec.preset!r} ({list(expected)})"
                )
        return spec


