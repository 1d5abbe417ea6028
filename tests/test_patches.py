"""Patch extraction at sub-pixel positions and its adjoint, insertion."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.physics.patches import extract_patches, insert_patches, stitch_patches


def random_object(size, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))).astype(np.complex64)


def test_extract_integer_position():
    obj = random_object(40)
    patches = extract_patches(obj, np.array([[20.0, 15.0]]), 8)
    # Centre (x=20, y=15) covers columns 16..23 and rows 11..18.
    assert np.array_equal(patches[0], obj[11:19, 16:24])


def test_extract_shape_dtype():
    patches = extract_patches(random_object(40), np.array([[20.0, 15.0], [21.5, 16.25]]), 8)
    assert patches.shape == (2, 8, 8)
    assert patches.dtype == np.complex64


def test_extract_half_pixel_ramp():
    columns = np.arange(40, dtype=np.float32)
    ramp = np.broadcast_to(columns, (40, 40)).astype(np.complex64)
    patches = extract_patches(ramp, np.array([[20.5, 20.0]]), 8)
    # Column j of the patch samples x = 20.5 - 4 + j, midway between two pixels.
    assert np.allclose(patches[0, 0].real, 16.5 + np.arange(8))
    assert np.allclose(patches[0].imag, 0)


def test_extract_subpixel_rows_ramp():
    rows = np.arange(40, dtype=np.float32)[:, None]
    ramp = np.broadcast_to(3.0 * rows, (40, 40)).astype(np.complex64)
    patches = extract_patches(ramp, np.array([[20.0, 20.25]]), 8)
    assert np.allclose(patches[0, :, 0].real, 3.0 * (16.25 + np.arange(8)))


def test_extract_chunks_match_single():
    obj = random_object(64)
    rng = np.random.default_rng(1)
    positions = rng.uniform(8, 50, size=(1100, 2))
    together = extract_patches(obj, positions, 16)
    alone = extract_patches(obj, positions[1050:1051], 16)
    assert np.array_equal(together[1050], alone[0])


def test_extract_leaving_object():
    with pytest.raises(InputError, match="leaves the object"):
        extract_patches(random_object(32), np.array([[28.0, 16.0]]), 16)


def test_insert_adjoint_identity():
    rng = np.random.default_rng(2)
    obj = random_object(48, seed=3)
    positions = rng.uniform(8, 38, size=(300, 2))
    patches = random_object(16, seed=4)[None] * rng.standard_normal((300, 1, 1)).astype(np.float32)

    canvas, _ = insert_patches(obj.shape, patches, positions)
    forward_product = np.vdot(extract_patches(obj, positions, 16).astype(np.complex128), patches)
    adjoint_product = np.vdot(obj.astype(np.complex128), canvas)
    assert abs(forward_product - adjoint_product) <= 1e-5 * abs(forward_product)


def test_insert_weights_are_adjoint_of_ones():
    rng = np.random.default_rng(5)
    positions = rng.uniform(8, 38, size=(20, 2))
    canvas, weights = insert_patches((48, 48), np.ones((20, 16, 16), np.complex64), positions)
    assert weights.dtype == np.float32
    assert np.allclose(canvas.real, weights, atol=1e-5)
    assert weights.sum() == pytest.approx(20 * 16 * 16, rel=1e-6)


def test_insert_round_trip_integer_positions():
    obj = random_object(64)
    grid = np.arange(10, 50, 4, dtype=np.float64)
    positions = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    canvas, weights = insert_patches(obj.shape, extract_patches(obj, positions, 16), positions)
    covered = weights > 0
    assert np.allclose(canvas[covered] / weights[covered], obj[covered], atol=1e-5)


def test_insert_round_trip_subpixel_constant():
    obj = np.full((64, 64), 0.5 - 0.25j, np.complex64)
    positions = np.random.default_rng(6).uniform(9, 46, size=(50, 2))
    stitched = stitch_patches(obj.shape, extract_patches(obj, positions, 16), positions)
    covered = insert_patches(obj.shape, np.ones((50, 16, 16), np.complex64), positions)[1] > 0
    assert np.allclose(stitched[covered], 0.5 - 0.25j, atol=1e-5)
    assert np.all(stitched[~covered] == 0)


def test_insert_shape_mismatch():
    with pytest.raises(InputError, match="to match the patches"):
        insert_patches((48, 48), np.ones((3, 16, 16), np.complex64), np.full((2, 2), 20.0))


def test_insert_leaving_canvas():
    with pytest.raises(InputError, match="leaves the object"):
        insert_patches((32, 32), np.ones((1, 16, 16), np.complex64), np.array([[4.0, 16.0]]))


def test_extract_into_out():
    obj = random_object(40)
    positions = np.array([[20.0, 15.0], [21.5, 16.25]])
    out = np.zeros((2, 8, 8), np.complex64)
    returned = extract_patches(obj, positions, 8, out=out)
    assert returned is out
    assert np.array_equal(out, extract_patches(obj, positions, 8))


def test_extract_out_wrong_shape():
    with pytest.raises(InputError, match="out has shape"):
        extract_patches(random_object(40), np.array([[20.0, 15.0]]), 8, out=np.zeros((2, 8, 8), np.complex64))


def test_extract_out_not_contiguous():
    out = np.zeros((1, 8, 16), np.complex64)[:, :, ::2]
    with pytest.raises(InputError, match="C-contiguous"):
        extract_patches(random_object(40), np.array([[20.0, 15.0]]), 8, out=out)
