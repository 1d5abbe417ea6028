"""PyTorch models and physics: translation, overlap constraint, forward model, loss, layers."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from fly64.backends.pytorch.models import (
    BaselineAutoencoder,
    DiffractionToObject,
    ObjectNetwork,
    PinnAutoencoder,
)
from fly64.backends.pytorch.physics import (
    far_field_intensity,
    overlap_constraint,
    poisson_nll,
    required_canvas_pad_px,
    translate,
)
from fly64.learning.spec import ModelSpec
from fly64.learning.synthetic import disc_probe
from fly64.physics.objects import default_object


def random_image(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random(shape).astype(np.float64))


def grid_sample_translate(image, dx, dy):
    """Reference translation with grid_sample: output pixel (i, j) samples input (i - dy, j - dx)."""
    height, width = image.shape[-2:]
    rows, columns = torch.meshgrid(torch.arange(height, dtype=image.dtype), torch.arange(width, dtype=image.dtype), indexing="ij")
    # align_corners=False puts pixel centre k at normalised (2k + 1) / size - 1.
    x = (2 * (columns - dx) + 1) / width - 1
    y = (2 * (rows - dy) + 1) / height - 1
    grid = torch.stack([x, y], dim=-1)[None]
    return torch.nn.functional.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]


def test_translate_matches_grid_sample():
    image = random_image((12, 10))
    shifted = translate(image, torch.tensor(2.3, dtype=torch.float64), torch.tensor(-1.6, dtype=torch.float64))
    expected = grid_sample_translate(image, 2.3, -1.6)
    torch.testing.assert_close(shifted, expected)


def test_translate_integer_shift_exact():
    image = random_image((8, 8))
    shifted = translate(image, torch.tensor(2.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64))
    expected = torch.zeros_like(image)
    expected[:7, 2:] = image[1:, :6]
    torch.testing.assert_close(shifted, expected)


def test_translate_round_trip_interior():
    image = random_image((16, 16))
    dx, dy = torch.tensor(1.5, dtype=torch.float64), torch.tensor(0.25, dtype=torch.float64)
    there_and_back = translate(translate(image, dx, dy), -dx, -dy)
    # Two bilinear interpolations low-pass the image; its mean inside stays unchanged.
    interior = (slice(3, -3), slice(3, -3))
    assert float(there_and_back[interior].mean()) == pytest.approx(float(image[interior].mean()), abs=0.02)


def object_patches(offsets_xy, patch_size=16, object_size=48):
    """Cut patches of one object at integer offsets (x, y) from its centre, as (1, C, N, N) parts."""
    object_array = default_object(object_size)
    centre = object_size // 2
    patches = []
    for dx, dy in offsets_xy:
        top, left = centre + dy - patch_size // 2, centre + dx - patch_size // 2
        patches.append(object_array[top : top + patch_size, left : left + patch_size])
    patches = np.stack(patches)[None].astype(np.complex128)
    offsets = torch.tensor([offsets_xy], dtype=torch.float64)
    return torch.from_numpy(patches.real.copy()), torch.from_numpy(patches.imag.copy()), offsets


def test_overlap_consistent_patches_unchanged():
    real, imag, offsets = object_patches([(-3, -2), (4, -2), (-3, 5), (2, 1)])
    constrained_real, constrained_imag = overlap_constraint(real, imag, offsets, canvas_pad_px=6)
    torch.testing.assert_close(constrained_real, real)
    torch.testing.assert_close(constrained_imag, imag)


def test_overlap_identical_patches_same_offset():
    patch = random_image((1, 1, 16, 16))
    real, imag = patch.repeat(1, 2, 1, 1), (0.5 * patch).repeat(1, 2, 1, 1)
    # Integer offsets: placing and cutting out again are then exact, with no interpolation.
    offsets = torch.tensor([[[2.0, -1.0], [2.0, -1.0]]], dtype=torch.float64)
    constrained_real, constrained_imag = overlap_constraint(real, imag, offsets, canvas_pad_px=3)
    torch.testing.assert_close(constrained_real, real)
    torch.testing.assert_close(constrained_imag, imag)


def test_overlap_averages_disagreement():
    # Two patches at one offset that disagree meet at their mean.
    first, second = random_image((1, 1, 8, 8), seed=1), random_image((1, 1, 8, 8), seed=2)
    real = torch.cat([first, second], dim=1)
    offsets = torch.zeros((1, 2, 2), dtype=torch.float64)
    constrained, _ = overlap_constraint(real, torch.zeros_like(real), offsets, canvas_pad_px=1)
    torch.testing.assert_close(constrained[0, 0], ((first + second) / 2)[0, 0])
    torch.testing.assert_close(constrained[0, 1], ((first + second) / 2)[0, 0])


def test_overlap_canvas_margin_irrelevant():
    real, imag = random_image((2, 4, 16, 16), seed=3), random_image((2, 4, 16, 16), seed=4)
    offsets = torch.from_numpy(np.random.default_rng(5).uniform(-4, 4, (2, 4, 2)))
    narrow = overlap_constraint(real, imag, offsets, canvas_pad_px=required_canvas_pad_px(offsets))
    wide = overlap_constraint(real, imag, offsets, canvas_pad_px=required_canvas_pad_px(offsets) + 5)
    torch.testing.assert_close(narrow[0], wide[0])
    torch.testing.assert_close(narrow[1], wide[1])


def test_far_field_parseval():
    real, imag = random_image((3, 16, 16), seed=6), random_image((3, 16, 16), seed=7)
    probe = torch.from_numpy(disc_probe(16).astype(np.complex128))
    intensity = far_field_intensity(real, imag, probe)
    exit_power = (torch.complex(real, imag) * probe).abs().square().sum(dim=(-2, -1))
    torch.testing.assert_close(intensity.sum(dim=(-2, -1)), exit_power)


def test_far_field_centred_zero_frequency():
    probe = torch.ones((8, 8), dtype=torch.complex128)
    intensity = far_field_intensity(torch.ones((8, 8), dtype=torch.float64), torch.zeros((8, 8), dtype=torch.float64), probe)
    assert float(intensity[4, 4]) == pytest.approx(64.0)
    assert float(intensity.sum()) == pytest.approx(64.0)


@pytest.mark.skipif(importlib.util.find_spec("fly64.physics.forward") is None, reason="fly64.physics.forward is not written yet")
def test_far_field_matches_numpy_forward():
    from fly64.physics.forward import far_field

    rng = np.random.default_rng(8)
    patches = (rng.random((2, 16, 16)) * np.exp(1j * rng.random((2, 16, 16)))).astype(np.complex64)
    probe = disc_probe(16)
    expected = np.abs(far_field(patches * probe)) ** 2
    intensity = far_field_intensity(torch.from_numpy(patches.real.copy()), torch.from_numpy(patches.imag.copy()), torch.from_numpy(probe))
    np.testing.assert_allclose(intensity.numpy(), expected, rtol=1e-4, atol=1e-7)


def test_poisson_nll_minimum_at_counts():
    counts = torch.from_numpy(np.random.default_rng(9).poisson(20.0, (4, 8, 8)).astype(np.float64))
    best = poisson_nll(counts, counts)
    assert float(poisson_nll(counts * 1.1, counts)) > float(best)
    assert float(poisson_nll(counts * 0.9, counts)) > float(best)


@pytest.mark.parametrize("preset", ["compact", "reference"])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_network_parameter_count(preset, gridsize):
    spec = ModelSpec(64, gridsize, "pinn", preset)
    network = ObjectNetwork(spec)
    assert sum(parameter.numel() for parameter in network.parameters()) == spec.parameter_count()


def test_network_output_ranges():
    torch.manual_seed(0)
    spec = ModelSpec(32, 2, "pinn", "compact")
    with torch.no_grad():
        amplitude, phase = ObjectNetwork(spec)(5 * torch.randn(3, 4, 32, 32))
    assert amplitude.shape == (3, 4, 32, 32)
    assert float(amplitude.min()) > 0
    assert float(amplitude.max()) < 1
    assert float(phase.abs().max()) < math.pi


def test_pinn_counts_scale_with_intensity_scale():
    torch.manual_seed(0)
    spec = ModelSpec(16, 1, "pinn", "compact")
    probe = torch.from_numpy(disc_probe(16))
    model = PinnAutoencoder(spec, probe, intensity_scale=1000.0)
    amplitude = torch.rand(2, 1, 16, 16)
    counts, real, imag = model(amplitude, torch.zeros(2, 1, 2))
    torch.testing.assert_close(counts, 1000.0 * far_field_intensity(real, imag, probe))
    assert model.intensity_scale == pytest.approx(1000.0, rel=1e-5)


def test_pinn_state_dict_excludes_probe():
    model = PinnAutoencoder(ModelSpec(16, 1, "pinn", "compact"), torch.from_numpy(disc_probe(16)), 10.0)
    assert "probe" not in model.state_dict()
    assert "log_intensity_scale" in model.state_dict()


def test_baseline_gs2_skips_constraint():
    spec = ModelSpec(16, 2, "baseline", "compact")
    assert not DiffractionToObject(spec).applies_overlap_constraint
    assert BaselineAutoencoder(spec)(torch.rand(1, 4, 16, 16))[0].shape == (1, 4, 16, 16)
