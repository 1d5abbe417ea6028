"""Seeded starting weights and batch order, drawn with NumPy so that every backend uses the same ones.

With one seed, the PyTorch and TensorFlow backends start from the same network and take
the training groups in the same order, so their trainings differ only by floating-point
rounding in the frameworks' kernels. With weights and order drawn by each framework, the
two backends' phase correlations differed by 0.03 to 0.10 after 30 epochs of the compact
baseline on one demo-size scan.

- `initial_convolutions(spec, seed)`: every 3x3 convolution in the order of
  `ModelSpec.convolution_layout`, with kernel and bias drawn from PyTorch's default
  distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 9 * input channels.
- `epoch_order(seed, epoch, n_groups)`: the permutation of the training groups in one
  epoch. Batches are consecutive slices of it, `batches_per_epoch` of them, the last
  one partial.
"""

import dataclasses
import math

import numpy as np

from fly64.learning.spec import KERNEL_SIZE, ModelSpec

# Separate the streams of the two draws, so that a seed's weights do not depend on how
# many groups there are, nor its batch order on the network's size.
_WEIGHTS_STREAM = 0
_ORDER_STREAM = 1


@dataclasses.dataclass(frozen=True)
class InitialConvolution:
    """Starting weights of one 3x3 convolution.

    Attributes:
        name: the layer's name in the TensorFlow backend (`encoder_1_conv_1`, ...,
            `phase_decoder_output`), also used in error messages.
        kernel: float32 (out_channels, in_channels, 3, 3), PyTorch's `Conv2d.weight`
            layout; the TensorFlow backend transposes it to (3, 3, in, out).
        bias: float32 (out_channels,).
    """

    name: str
    kernel: np.ndarray
    bias: np.ndarray


def initial_convolutions(spec: ModelSpec, seed: int) -> list[InitialConvolution]:
    """Draw the starting kernel and bias of every convolution of `spec` from `seed`."""
    generator = np.random.default_rng([seed, _WEIGHTS_STREAM])
    convolutions = []
    for name, in_channels, out_channels in spec.convolution_layout():
        bound = 1.0 / math.sqrt(KERNEL_SIZE * KERNEL_SIZE * in_channels)
        kernel = generator.uniform(-bound, bound, size=(out_channels, in_channels, KERNEL_SIZE, KERNEL_SIZE))
        bias = generator.uniform(-bound, bound, size=out_channels)
        convolutions.append(InitialConvolution(name, kernel.astype(np.float32), bias.astype(np.float32)))
    return convolutions


def epoch_order(seed: int, epoch: int, n_groups: int) -> np.ndarray:
    """Return the int64 permutation of `n_groups` training groups for `epoch` (0-based)."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(n_groups)


def batches_per_epoch(n_groups: int, batch_size: int) -> int:
    """Return the number of batches in one epoch, the last one partial: ceil(n_groups / batch_size)."""
    return -(-n_groups // batch_size)
