"""The nearest-patch search: the largest distance of an image equals the full search's, however the bank is ordered."""

import numpy as np
import pytest

from ganspection_tf import patch_search
from ganspection_tf.errors import GanspectionError
from ganspection_tf.terms import patch_bank


def clustered_patches(images, side, seed, features=8):
    """(images, side, side, features): patches around a few centres, like a part's repeated surfaces."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 4.0, (12, features))
    picks = rng.integers(len(centres), size=(images, side, side))
    return (centres[picks] + rng.normal(0.0, 0.5, (images, side, side, features))).astype(np.float32)


@pytest.mark.parametrize("count", [1, 16])
@pytest.mark.parametrize("bank_order", ["k-centre", "shuffled"])
def test_the_largest_distances_are_the_full_searchs_largest(bank_order, count):
    """A k-centre bank (the product's) and the same rows shuffled, whose first rows are poor centres: the upper
    bounds differ, the answer does not. Images with an outlying patch, an image of good patches only."""
    good = clustered_patches(200, 16, seed=0).reshape(-1, 8)
    bank = patch_bank(good, size=600, seed=0)
    if bank_order == "shuffled":
        bank = bank[np.random.default_rng(1).permutation(len(bank))]
    images = clustered_patches(5, 32, seed=2)
    images[1, 3, 4] += 9.0  # one unfamiliar patch
    images[2] += np.random.default_rng(3).normal(0.0, 2.0, images[2].shape).astype(np.float32)  # a noisy surface
    full = -np.sort(-patch_search.nearest_patch_distances(images, bank).reshape(len(images), -1), axis=1)
    np.testing.assert_allclose(patch_search.largest_nearest_distances(images, bank, count), full[:, :count],
                               rtol=1e-5)
    assert np.argmax(full[:2, 0]) == 1


def test_a_bank_smaller_than_its_centres_and_a_patch_on_a_bank_row():
    bank = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    features = np.array([[[[0.0, 0.0], [3.0, 4.0]]], [[[6.0, 8.0], [0.0, 1.0]]]], np.float32)  # (2, 1, 2, 2)
    np.testing.assert_allclose(patch_search.largest_nearest_distances(features, bank), [[0.0], [5.0]], atol=1e-6)


def test_patches_whose_bound_is_loose_do_not_hide_the_farthest_one(monkeypatch):
    """Two centres (0 and 10) and a row at 4.9 in the first one's cell: 300 patches at 5.2 are nearest to the
    second centre, whose cell gives them the loose bound 4.8 (their distance is 0.3); the farthest patch (−3, at
    3 from the first centre) has a tighter bound than all of them and is measured in a later block."""
    monkeypatch.setattr(patch_search, "SEARCH_CENTRES", 2)
    bank = np.array([[0.0, 0.0], [10.0, 0.0], [4.9, 0.0]], np.float32)
    near_first = np.full(patch_search.NEAREST_BLOCK - 1, 0.1)
    positions = np.concatenate([[-3.0], near_first, np.full(300, 5.2)])
    features = np.stack([positions, np.zeros_like(positions)], axis=-1).astype(np.float32)[np.newaxis, np.newaxis]
    assert patch_search.nearest_patch_distances(features, bank).max() == pytest.approx(3.0)
    np.testing.assert_allclose(patch_search.largest_nearest_distances(features, bank), [[3.0]], rtol=1e-6)


def test_the_search_goes_on_until_no_patch_can_be_among_the_largest(monkeypatch):
    """The same bank: the farthest patch (15, at 5 from the second centre) and 255 loose-bound patches at 5.2 fill
    the first block measured; the second largest (−3, at 3 from the first centre) comes in the next one, its bound
    below the largest distance found but above the second: a search that stopped at the largest would give 0.3."""
    monkeypatch.setattr(patch_search, "SEARCH_CENTRES", 2)
    bank = np.array([[0.0, 0.0], [10.0, 0.0], [4.9, 0.0]], np.float32)
    filling = patch_search.NEAREST_BLOCK - 1  # each centre's patches make one block of their own
    positions = np.concatenate([[15.0], np.full(filling, 5.2), [-3.0], np.full(filling, 0.1)])
    features = np.stack([positions, np.zeros_like(positions)], axis=-1).astype(np.float32)[np.newaxis, np.newaxis]
    np.testing.assert_allclose(patch_search.largest_nearest_distances(features, bank, 2), [[5.0, 3.0]], rtol=1e-6)


def test_more_distances_than_patches_is_an_error():
    with pytest.raises(GanspectionError, match="the 5 largest of 4 patch distances"):
        patch_search.largest_nearest_distances(np.zeros((1, 2, 2, 3), np.float32), np.ones((2, 3)), 5)
