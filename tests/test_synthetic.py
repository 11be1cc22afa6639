"""The embedded synthetic category: layout, determinism, and defects that are local and match their masks."""

import cv2
import numpy as np
import pytest
from PIL import Image

from ganspection_tf.data.synthetic import (
    DEFECT_TYPES,
    apply_defect,
    generate_good,
    good_and_defect_sites,
    write_synthetic_category,
)
from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import native_channels, read_image

SMALL = dict(image_size=64, n_train=8, n_test_good=3, n_test_per_defect=3)


def _file_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return write_synthetic_category(tmp_path_factory.mktemp("syn"), **SMALL)


def test_layout_and_counts(category):
    assert category.name == "widget"
    assert len(list((category / "train" / "good").glob("*.png"))) == 8
    assert len(list((category / "test" / "good").glob("*.png"))) == 3
    for kind in DEFECT_TYPES:
        images = sorted((category / "test" / kind).glob("*.png"))
        masks = sorted((category / "ground_truth" / kind).glob("*.png"))
        assert [p.stem for p in images] == ["000", "001", "002"]
        assert [p.name for p in masks] == ["000_mask.png", "001_mask.png", "002_mask.png"]


def test_masks_are_binary_gray_and_not_empty(category):
    for mask_path in category.glob("ground_truth/*/*_mask.png"):
        with Image.open(mask_path) as mask:
            assert mask.mode == "L" and mask.size == (64, 64)
            values = np.asarray(mask)
        assert set(np.unique(values)) == {0, 255}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    first = write_synthetic_category(tmp_path / "a", **SMALL)
    second = write_synthetic_category(tmp_path / "b", **SMALL)
    third = write_synthetic_category(tmp_path / "c", seed=1, **SMALL)
    assert _file_bytes(first) == _file_bytes(second)
    assert _file_bytes(first).keys() == _file_bytes(third).keys()
    assert _file_bytes(first)["train/good/000.png"] != _file_bytes(third)["train/good/000.png"]


def test_defect_images_differ_from_good_ones_inside_the_mask(category):
    goods = [read_image(p).astype(np.float32) for p in sorted((category / "train" / "good").glob("*.png"))]
    typical_good = np.median(np.stack(goods), axis=0)
    for image_path in sorted(category.glob("test/*/*.png")):
        if image_path.parent.name == "good":
            continue
        mask_path = category / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png"
        mask = read_image(mask_path)[..., 0] > 0
        difference = np.abs(read_image(image_path).astype(np.float32) - typical_good).mean(axis=2)
        assert difference[mask].mean() > 2 * difference[~mask].mean() + 10, image_path


@pytest.mark.parametrize("kind", DEFECT_TYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_apply_defect_changes_only_masked_pixels_and_visibly(kind, channels):
    rng = np.random.default_rng(7)
    good = generate_good(rng, 96, channels)
    defective, mask = apply_defect(good, kind, rng)
    assert defective.shape == good.shape and defective.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    inside = mask > 0
    np.testing.assert_array_equal(defective[~inside], good[~inside])
    assert np.abs(defective[inside].astype(int) - good[inside]).mean() > 20
    assert inside.mean() < 0.05  # local, not a global change


def test_defect_sizes_follow_the_spec():
    size = 128
    areas = {kind: [] for kind in DEFECT_TYPES}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        for kind in DEFECT_TYPES:
            areas[kind].append((apply_defect(generate_good(rng, size, 1), kind, rng)[1] > 0).sum())

    def disk_area(fraction):  # area of a disk `fraction` of the image size across
        return np.pi * (fraction * size / 2) ** 2

    assert disk_area(0.03) <= min(areas["hole"]) and max(areas["hole"]) <= disk_area(0.09)
    assert disk_area(0.05) <= min(areas["stain"]) and max(areas["stain"]) <= disk_area(0.17)
    # an 8-connected diagonal line covers length/sqrt(2) pixels; at most 2 px thick
    assert 0.2 * size / np.sqrt(2) <= min(areas["scratch"]) and max(areas["scratch"]) <= 0.4 * size * 2 * 2


def test_good_images_vary_but_look_alike():
    rng = np.random.default_rng(0)
    goods = np.stack([generate_good(rng, 64, 3).astype(np.float32) for _ in range(6)])
    pairwise = [np.abs(goods[i] - goods[j]).mean() for i in range(6) for j in range(i + 1, 6)]
    assert min(pairwise) > 1.0  # jitter and noise: no two are the same
    assert max(pairwise) < 40.0  # but they are the same product
    face, background, bore = goods[:, 31:34, 44:47].mean(), goods[:, :6, :6].mean(), goods[:, 30:34, 30:34].mean()
    assert face > background + 60 and bore < background  # bright part, darker background, dark centre bore


def test_gray_category_is_written_as_gray_png(tmp_path):
    category = write_synthetic_category(tmp_path, channels=1, **SMALL)
    first = category / "train" / "good" / "000.png"
    with Image.open(first) as image:
        assert image.mode == "L"
    assert native_channels(first) == 1


def test_existing_folder_is_protected(tmp_path):
    write_synthetic_category(tmp_path, **SMALL)
    with pytest.raises(GanspectionError, match="already exists"):
        write_synthetic_category(tmp_path, **SMALL)
    assert write_synthetic_category(tmp_path, overwrite=True, seed=2, **SMALL).is_dir()
    (tmp_path / "user_data").mkdir()
    (tmp_path / "user_data" / "keep.png").write_bytes(b"precious")
    with pytest.raises(GanspectionError, match="not written by"):
        write_synthetic_category(tmp_path, name="user_data", overwrite=True, **SMALL)
    assert (tmp_path / "user_data" / "keep.png").read_bytes() == b"precious"


def test_bad_arguments_raise():
    with pytest.raises(GanspectionError, match="defect"):
        apply_defect(np.zeros((64, 64, 3), np.uint8), "crack", np.random.default_rng(0))
    with pytest.raises(GanspectionError, match="channels"):
        write_synthetic_category("unused", channels=2)
    with pytest.raises(GanspectionError, match="crack"):
        write_synthetic_category("unused", defects=("crack",))


# --- the unaligned and texture modes ----------------------------------------------------------------------

NEW_MODES = ("unaligned", "texture")


@pytest.mark.parametrize("mode", NEW_MODES)
def test_new_modes_are_deterministic_and_differ_from_aligned(mode, tmp_path):
    first = write_synthetic_category(tmp_path / "a", mode=mode, **SMALL)
    second = write_synthetic_category(tmp_path / "b", mode=mode, **SMALL)
    aligned = write_synthetic_category(tmp_path / "c", **SMALL)
    assert _file_bytes(first) == _file_bytes(second)
    assert _file_bytes(first).keys() == _file_bytes(aligned).keys()
    assert _file_bytes(first)["train/good/000.png"] != _file_bytes(aligned)["train/good/000.png"]


@pytest.mark.parametrize("mode", NEW_MODES)
def test_new_modes_write_a_non_empty_mask_for_every_defect_image(mode, tmp_path):
    category = write_synthetic_category(tmp_path, mode=mode, **SMALL)
    for kind in DEFECT_TYPES:
        for image_path in sorted((category / "test" / kind).glob("*.png")):
            mask = read_image(category / "ground_truth" / kind / f"{image_path.stem}_mask.png")[..., 0]
            assert set(np.unique(mask)) == {0, 255}, image_path


@pytest.mark.parametrize("mode", NEW_MODES)
@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_new_mode_defects_change_only_masked_pixels_and_sit_on_their_sites(mode, kind):
    subtle = mode == "texture"  # as write_synthetic_category draws them
    for seed in range(5):
        good, sites = good_and_defect_sites(np.random.default_rng(seed), 96, 3, mode)
        defective, mask = apply_defect(good, kind, np.random.default_rng(100 + seed), sites=sites, subtle=subtle)
        inside = mask > 0
        np.testing.assert_array_equal(defective[~inside], good[~inside])
        assert np.abs(defective[inside].astype(int) - good[inside]).mean() > (6 if subtle else 20)
        assert (inside & sites).any()  # the defect is centred on a site: on the plate, or inside the texture margin


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_texture_defects_are_subtler_than_the_others(kind):
    for seed in range(5):
        good, sites = good_and_defect_sites(np.random.default_rng(seed), 128, 1, "texture")
        subtle, mask = apply_defect(good, kind, np.random.default_rng(seed), sites=sites, subtle=True)
        loud, same_mask = apply_defect(good, kind, np.random.default_rng(seed), sites=sites)
        np.testing.assert_array_equal(mask, same_mask)  # the same defect, drawn softer
        inside = mask > 0
        change = np.abs(subtle[inside].astype(int) - good[inside]).mean()
        assert change < (0.8 if kind == "stain" else 0.6) * np.abs(loud[inside].astype(int) - good[inside]).mean()
        assert np.percentile(subtle[inside], 50) < np.percentile(good, 99.9) + 20  # about the texture's own peaks


def _part_pose(image):
    """Centroid (x, y) and axis angle in degrees [0, 180) of the bright plate, from image moments."""
    moments = cv2.moments((image.mean(axis=2) > 110).astype(np.uint8), binaryImage=True)
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    angle = 0.5 * np.degrees(np.arctan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"]))
    return cx, cy, angle % 180, moments["m00"]


def test_unaligned_parts_move_rotate_and_change_scale():
    poses = np.array([_part_pose(generate_good(np.random.default_rng(seed), 128, 3, "unaligned"))
                      for seed in range(24)])
    assert poses[:, 0].std() > 8 and poses[:, 1].std() > 8  # pixels, at 128 px
    hist, _ = np.histogram(poses[:, 2], bins=4, range=(0, 180))
    assert (hist > 0).all()  # every quarter of the half-turn occurs
    assert poses[:, 3].max() > 1.4 * poses[:, 3].min()  # areas: scale 0.8-1.15 gives up to 2x


def test_texture_has_no_fixed_object():
    def spatial_structure(mode):
        goods = np.stack([generate_good(np.random.default_rng(seed), 64, 1, mode)[..., 0].astype(np.float32)
                          for seed in range(24)])
        return goods.mean(axis=0).std(), goods[0].std()

    mean_texture, single_texture = spatial_structure("texture")
    mean_aligned, _ = spatial_structure("aligned")
    assert single_texture > 8  # each image has a visible surface
    assert mean_texture < 0.35 * single_texture  # but the average of many has no shape left: nothing is in place
    assert mean_aligned > 5 * mean_texture  # unlike the aligned part


def test_unknown_mode_is_refused():
    with pytest.raises(GanspectionError, match="mode"):
        write_synthetic_category("unused", mode="rotated")
