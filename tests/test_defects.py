"""Synthetic defects on copies of good images: local, masked, deterministic, in every size, never touching the input."""

import cv2
import numpy as np
import pytest

from ganspection_tf.data.synthetic import generate_good, good_and_defect_sites
from ganspection_tf.defects import KINDS, SIZES, defective_copies, draw_defect, foreground_sites
from ganspection_tf.errors import GanspectionError


def _goods(count=4, side=128, channels=3, mode="aligned"):
    return np.stack([generate_good(np.random.default_rng(seed), side, channels, mode) for seed in range(count)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_kind_changes_only_masked_pixels_and_visibly(kind, channels):
    goods = _goods(channels=channels)
    before = goods.copy()
    for seed in range(4):
        defective, mask = draw_defect(goods[0], kind, np.random.default_rng(seed), "medium", donor=goods[1])
        assert defective.shape == goods[0].shape and defective.dtype == np.uint8
        assert mask.shape == (128, 128) and mask.dtype == bool and mask.any()
        np.testing.assert_array_equal(defective[~mask], goods[0][~mask])
        assert np.abs(defective[mask].astype(int) - goods[0][mask]).mean() > 4, (kind, seed)
        assert mask.mean() < 0.1  # local, not a global change
    np.testing.assert_array_equal(goods, before)  # drawn on copies


def test_the_same_seed_draws_the_same_defect_and_another_seed_does_not():
    goods = _goods()
    first = defective_copies(goods, seed=3)
    second = defective_copies(goods, seed=3)
    third = defective_copies(goods, seed=4)
    assert first.images.tobytes() == second.images.tobytes() and first.masks.tobytes() == second.masks.tobytes()
    assert first.images.tobytes() != third.images.tobytes()


def test_sizes_grow_from_small_to_large():
    good = _goods(count=1, side=256)[0]
    areas = {size: np.median([draw_defect(good, "shift", np.random.default_rng(s), size)[1].sum() for s in range(8)])
             for size in SIZES}
    assert areas["small"] < areas["medium"] < areas["large"]
    assert areas["small"] < 0.005 * 256 * 256  # a small defect is small: under 0.5 % of the image


def test_a_small_scratch_at_256_px_is_one_pixel_thin():
    good = _goods(count=1, side=256)[0]
    for seed in range(6):
        _, mask = draw_defect(good, "scratch", np.random.default_rng(seed), "small")
        rows, cols = np.nonzero(mask)
        length = np.hypot(np.ptp(rows), np.ptp(cols))
        assert length >= 0.03 * 256 * 3 * 0.9  # SCRATCH_LENGTH extents long
        assert mask.sum() <= 1.05 * (max(np.ptp(rows), np.ptp(cols)) + 1)  # one pixel per step of an 8-connected line


def test_a_patch_is_cut_from_the_donor_somewhere_else():
    goods = _goods()
    defective, mask = draw_defect(goods[0], "patch", np.random.default_rng(1), "large", donor=goods[2])
    rows, cols = np.nonzero(mask)
    pasted = defective[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = pasted.shape[:2]
    matches = [(top, left) for top in range(128 - height + 1) for left in range(128 - width + 1)
               if np.array_equal(goods[2][top : top + height, left : left + width], pasted)]
    assert matches and all(max(abs(t - rows.min()), abs(l - cols.min())) >= height for t, l in matches)


def test_defective_copies_deal_every_kind_and_size_over_the_images():
    goods = _goods(count=8, side=64)
    copies = defective_copies(goods, seed=0, copies_per_image=2)
    assert copies.images.shape == (16, 64, 64, 3) and copies.masks.shape == (16, 64, 64)
    assert copies.sources == [i for i in range(8) for _ in range(2)]
    assert set(zip(copies.kinds, copies.sizes)) == {(k, s) for k in KINDS for s in SIZES}
    assert all(mask.any() for mask in copies.masks)


def test_defects_land_on_the_part_not_the_background():
    good, plate = good_and_defect_sites(np.random.default_rng(5), 128, 3, "unaligned")
    sites = foreground_sites(good)
    whole_plate = cv2.dilate(plate.astype(np.uint8), np.ones((19, 19), np.uint8)) > 0  # plate: its inner 60 %
    assert (sites & plate).sum() > 0.9 * plate.sum() and (sites & ~whole_plate).sum() < 0.05 * sites.sum()
    for seed in range(5):
        _, mask = draw_defect(good, "shift", np.random.default_rng(seed), "small")
        assert (mask & whole_plate).any() and (mask & ~whole_plate).sum() < mask.sum() / 2


def test_a_surface_filling_the_frame_is_all_sites():
    texture = generate_good(np.random.default_rng(0), 64, 3, "texture")
    sites = foreground_sites(texture)
    assert sites[10:54, 10:54].all() and not sites[:5].any()


def test_bad_arguments_raise():
    good = _goods(count=1, side=64)[0]
    with pytest.raises(GanspectionError, match="crack"):
        draw_defect(good, "crack", np.random.default_rng(0))
    with pytest.raises(GanspectionError, match="huge"):
        draw_defect(good, "blob", np.random.default_rng(0), "huge")
    with pytest.raises(GanspectionError, match="uint8"):
        draw_defect(good.astype(np.float32), "blob", np.random.default_rng(0))
