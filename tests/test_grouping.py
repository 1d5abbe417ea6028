"""Tests of gridsize-2 grouping: groups drawn from nearest neighbours, centres and offsets."""

import numpy as np
import pytest

from fly64.errors import InputError
from fly64.physics.grouping import build_groups, group_centres_px, group_offsets_px


def random_positions(n_positions: int = 200, seed: int = 0) -> np.ndarray:
    # Continuous random positions have no distance ties, so "the K nearest" is unambiguous.
    return np.random.default_rng(seed).uniform(0.0, 300.0, size=(n_positions, 2))


def test_build_groups_shape_and_dtype():
    groups = build_groups(random_positions(), neighbor_count=7, group_size=4, seed=123)

    assert groups.shape == (200, 4)
    assert groups.dtype == np.int64


def test_build_groups_members_within_k_nearest():
    positions_xy = random_positions()
    neighbor_count = 7
    groups = build_groups(positions_xy, neighbor_count, group_size=4, seed=123)

    distances_px = np.linalg.norm(positions_xy[:, None, :] - positions_xy[None, :, :], axis=-1)
    k_nearest = np.argsort(distances_px, axis=1)[:, :neighbor_count]
    in_neighbourhood = np.array([np.isin(groups[i], k_nearest[i]).all() for i in range(len(groups))])

    assert in_neighbourhood.all()


def test_build_groups_members_distinct():
    groups = build_groups(random_positions(), neighbor_count=7, group_size=4, seed=123)
    sorted_groups = np.sort(groups, axis=1)

    assert np.all(sorted_groups[:, 1:] != sorted_groups[:, :-1])


def test_build_groups_seeded_determinism():
    positions_xy = random_positions()

    first = build_groups(positions_xy, 7, 4, seed=123)
    second = build_groups(positions_xy, 7, 4, seed=123)
    other_seed = build_groups(positions_xy, 7, 4, seed=124)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_build_groups_draws_vary_across_rows():
    # With K = 7 and C = 4, a fixed choice of neighbour ranks for every row would be a bug.
    positions_xy = random_positions()
    groups = build_groups(positions_xy, 7, 4, seed=123)

    includes_seed = np.any(groups == np.arange(len(groups))[:, None], axis=1)

    assert 0 < includes_seed.sum() < len(groups)


def test_build_groups_group_size_one_is_identity():
    groups = build_groups(random_positions(10), neighbor_count=7, group_size=1, seed=0)

    assert np.array_equal(groups, np.arange(10)[:, None])


def test_build_groups_k_below_c_raises():
    with pytest.raises(InputError, match="neighbor_count"):
        build_groups(random_positions(), neighbor_count=3, group_size=4, seed=0)


def test_build_groups_too_few_positions_raises():
    with pytest.raises(InputError, match="neighbor_count"):
        build_groups(random_positions(6), neighbor_count=7, group_size=4, seed=0)


def test_build_groups_duplicates_keep_seed():
    # Ten copies of one position and K = 7: each group's neighbourhood must still contain its seed.
    positions_xy = np.zeros((10, 2))
    groups = build_groups(positions_xy, neighbor_count=7, group_size=7, seed=0)

    assert np.all(np.any(groups == np.arange(10)[:, None], axis=1))


def test_build_groups_bad_positions_raise():
    with pytest.raises(InputError, match="positions_xy"):
        build_groups(np.zeros((10, 3)), neighbor_count=7, group_size=4, seed=0)


def test_group_offsets_sum_to_zero():
    positions_xy = random_positions()
    groups = build_groups(positions_xy, 7, 4, seed=123)

    offsets_px = group_offsets_px(positions_xy, groups)

    assert offsets_px.shape == (200, 4, 2)
    assert offsets_px.dtype == np.float32
    assert np.allclose(offsets_px.sum(axis=1), 0.0, atol=1e-3)


def test_group_offsets_plus_centres_give_members():
    positions_xy = random_positions()
    groups = build_groups(positions_xy, 7, 4, seed=123)

    centres_px = group_centres_px(positions_xy, groups)
    offsets_px = group_offsets_px(positions_xy, groups)

    assert centres_px.dtype == np.float64
    assert np.allclose(centres_px[:, None, :] + offsets_px, positions_xy[groups], atol=1e-3)


def test_group_centres_out_of_range_raises():
    with pytest.raises(InputError, match="groups"):
        group_centres_px(random_positions(5), np.array([[0, 5]]))
