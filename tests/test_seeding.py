"""Seeded starting weights and batch order shared by the backends (`fly64.learning.seeding`)."""

import math

import numpy as np

from fly64.learning.seeding import batches_per_epoch, epoch_order, initial_convolutions
from fly64.learning.spec import ModelSpec

SPECS = [
    ModelSpec(32, 1, "baseline", "compact"),
    ModelSpec(32, 2, "pinn", "compact", canvas_pad_px=4),
    ModelSpec(64, 1, "pinn", "reference"),
]


def test_layout_names_unique():
    names = [name for name, _, _ in SPECS[1].convolution_layout()]
    assert len(set(names)) == len(names)


def test_same_seed_same_weights():
    first, second = initial_convolutions(SPECS[1], 7), initial_convolutions(SPECS[1], 7)
    assert all(np.array_equal(a.kernel, b.kernel) and np.array_equal(a.bias, b.bias) for a, b in zip(first, second))


def test_other_seed_other_weights():
    first, second = initial_convolutions(SPECS[1], 7), initial_convolutions(SPECS[1], 8)
    assert not np.array_equal(first[0].kernel, second[0].kernel)


def test_weights_within_pytorch_bound():
    for weights in initial_convolutions(SPECS[0], 0):
        bound = 1 / math.sqrt(9 * weights.kernel.shape[1])
        assert max(np.abs(weights.kernel).max(), np.abs(weights.bias).max()) <= bound


def test_weights_fill_pytorch_bound():
    """The draws spread over the whole interval, as U(-bound, bound) does, not a narrower one."""
    kernel = initial_convolutions(SPECS[0], 0)[2].kernel
    bound = 1 / math.sqrt(9 * kernel.shape[1])
    assert np.abs(kernel).max() > 0.95 * bound


def test_weights_float32():
    assert initial_convolutions(SPECS[1], 0)[0].kernel.dtype == np.float32


def test_weights_pytorch_layout():
    assert initial_convolutions(SPECS[1], 0)[0].kernel.shape == (16, 4, 3, 3)


def test_epoch_order_is_permutation():
    assert sorted(epoch_order(3, 0, 50).tolist()) == list(range(50))


def test_epoch_order_changes_between_epochs():
    assert not np.array_equal(epoch_order(3, 0, 50), epoch_order(3, 1, 50))


def test_epoch_order_repeats_for_same_seed():
    assert np.array_equal(epoch_order(3, 2, 50), epoch_order(3, 2, 50))


def test_batches_per_epoch_keeps_partial_batch():
    assert batches_per_epoch(33, 16) == 3
