"""Loading images into memory, choosing channels, and the tf.data training/evaluation datasets."""

import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import mvtec_bottle  # noqa: E402

from ganspection_tf.config import EXPOSURE_GAIN_SPREAD, TrainConfig  # noqa: E402
from ganspection_tf.data import choices  # noqa: E402
from ganspection_tf.data.mvtec import scan_category  # noqa: E402
from ganspection_tf.data.pipeline import (  # noqa: E402
    Augment,
    augment_batch,
    load_images,
    make_eval_dataset,
    make_train_dataset,
    with_trained_exposures,
)
from ganspection_tf.data.synthetic import write_synthetic_category  # noqa: E402
from ganspection_tf.errors import GanspectionError  # noqa: E402
from ganspection_tf.images import UnreadableImage, read_image, resize_image  # noqa: E402

SIZE = 16


@pytest.fixture(scope="module")
def categories(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    small = dict(image_size=32, n_train=10, n_test_good=1, n_test_per_defect=1)
    return write_synthetic_category(root, "rgb", **small), write_synthetic_category(root, "gray", channels=1, **small)


@pytest.fixture
def rgb_train(categories):
    return sorted((categories[0] / "train" / "good").glob("*.png"))


def distinct_images(n=6, size=SIZE, channels=3):
    """Images that are each unique under every flip and rotation, so augmented copies can be traced back."""
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def as_unit(images):
    return images.astype(np.float32) / 127.5 - 1.0


# --- load_images / channels ------------------------------------------------------------------------------


def test_load_images_matches_read_and_resize(rgb_train):
    images, skipped = load_images(rgb_train, SIZE, 3)
    assert images.shape == (10, SIZE, SIZE, 3) and images.dtype == np.uint8 and skipped == []
    for i in (0, 9):  # order follows the paths
        np.testing.assert_array_equal(images[i], resize_image(read_image(rgb_train[i], 3), SIZE))


@pytest.mark.parametrize("resize", ["pad", "crop"])
def test_load_images_resizes_with_the_runs_mode(tmp_path, resize):
    wide = np.random.default_rng(1).integers(0, 256, (30, 60, 3), dtype=np.uint8)  # 2:1
    Image.fromarray(wide).save(tmp_path / "wide.png")
    images, _ = load_images([tmp_path / "wide.png"], SIZE, 3, resize=resize)
    np.testing.assert_array_equal(images[0], resize_image(wide, SIZE, resize))
    assert not np.array_equal(images[0], resize_image(wide, SIZE))  # not stretched


def test_load_images_converts_channels(rgb_train):
    assert load_images(rgb_train[:2], SIZE, 1)[0].shape == (2, SIZE, SIZE, 1)


def test_unreadable_files_are_skipped_and_reported(rgb_train, tmp_path):
    folder = tmp_path / "train"
    shutil.copytree(rgb_train[0].parent, folder)
    (folder / "004.png").write_text("not a png")
    paths = sorted(folder.glob("*.png"))
    images, skipped = load_images(paths, SIZE, 3)
    assert len(images) == 9
    assert [p for p, _ in skipped] == [folder / "004.png"] and "cannot identify" in skipped[0][1]
    np.testing.assert_array_equal(images[4], resize_image(read_image(folder / "005.png"), SIZE))
    with pytest.raises(UnreadableImage, match="004.png"):
        load_images(paths, SIZE, 3, skip_unreadable=False)


def test_no_readable_image_names_the_folder(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(GanspectionError, match="none of the 2 images") as caught:
        load_images([tmp_path / "a.png", tmp_path / "b.png"], SIZE, 3)
    assert str(tmp_path) in str(caught.value)


def test_channels_are_chosen_from_the_training_files(categories, rgb_train):
    gray_train = sorted((categories[1] / "train" / "good").glob("*.png"))

    def decide_channels(paths, requested=None):
        settings = TrainConfig.from_flat(data=str(categories[1])).to_dict()
        settings["model"]["channels"] = requested
        return choices.choose(TrainConfig.from_dict(settings), paths)[0].model.channels

    assert decide_channels(gray_train) == 1
    assert decide_channels(rgb_train) == 3
    assert decide_channels(gray_train + rgb_train[:1]) == 3  # one colour image makes it colour
    assert decide_channels(gray_train, requested=3) == 3
    assert decide_channels(rgb_train, requested=1) == 1
    with pytest.raises(GanspectionError, match="channels"):
        decide_channels(rgb_train, requested=2)


# --- Augment ---------------------------------------------------------------------------------------------


def test_augment_flags():
    assert Augment.from_flags("hflip, ROT90") == Augment(hflip=True, rot90=True)
    assert Augment.from_flags("none") == Augment() == Augment.from_flags("")
    assert Augment.from_flags("vflip,hflip").as_flags() == "hflip,vflip"
    assert Augment().as_flags() == "none"
    assert Augment.from_flags("exposure,hflip") == Augment(hflip=True, exposure=True)
    with pytest.raises(GanspectionError, match="'shear'"):
        Augment.from_flags("hflip,shear")


# --- datasets --------------------------------------------------------------------------------------------


def first_batches(dataset, n):
    return [batch.numpy() for batch in dataset.take(n)]


def test_train_batches_have_fixed_shape_dtype_and_range():
    images = distinct_images(n=5)
    batches = first_batches(make_train_dataset(images, batch_size=4), 3)  # 12 images from 5: repeats across epochs
    sources = as_unit(images)
    for batch in batches:
        assert batch.shape == (4, SIZE, SIZE, 3) and batch.dtype == np.float32
        assert batch.min() >= -1.0 and batch.max() <= 1.0
        for image in batch:  # without augmentation every image is a scaled source image
            assert any(np.array_equal(image, source) for source in sources)
    dataset = make_train_dataset(images, batch_size=4)
    assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


def test_train_without_shuffle_keeps_order_and_shuffle_is_seeded():
    images = distinct_images(n=8)
    in_order = first_batches(make_train_dataset(images, 4, shuffle=False), 1)[0]
    np.testing.assert_array_equal(in_order, as_unit(images[:4]))
    run_a = first_batches(make_train_dataset(images, 4, seed=5), 4)
    run_b = first_batches(make_train_dataset(images, 4, seed=5), 4)
    np.testing.assert_array_equal(np.stack(run_a), np.stack(run_b))
    assert not np.array_equal(np.stack(run_a)[:2], np.stack(first_batches(make_train_dataset(images, 4, seed=6), 2)))


def _variants(image, augment):
    """Every image the given augmentation may turn ``image`` into."""
    flips = [image]
    if augment.hflip:
        flips += [f[:, ::-1] for f in flips]
    if augment.vflip:
        flips += [f[::-1] for f in flips]
    turns = range(4) if augment.rot90 else range(1)
    return [np.rot90(f, k) for f in flips for k in turns]


@pytest.mark.parametrize("flags", ["hflip", "vflip", "rot90", "hflip,vflip,rot90"])
def test_augmentation_changes_images_only_by_the_allowed_symmetries(flags):
    augment = Augment.from_flags(flags)
    images = distinct_images(n=4)
    batches = np.concatenate(first_batches(make_train_dataset(images, 4, augment=augment, shuffle=False), 8))
    sources = as_unit(images)
    changed = 0
    for i, image in enumerate(batches):
        source = sources[i % 4]  # unshuffled: the i-th image comes from source i % 4
        assert any(np.array_equal(image, v) for v in _variants(source, augment)), flags
        changed += not np.array_equal(image, source)
    assert 0 < changed < len(batches)  # random per image: some changed, some kept


def test_rot90_uses_every_quarter_turn_per_image():
    images = distinct_images(n=64, size=4, channels=1)
    rotated = augment_batch(tf.constant(images), Augment(rot90=True), tf.constant([1, 2], tf.int64)).numpy()
    turns = [next(k for k in range(4) if np.array_equal(out, np.rot90(src, k))) for src, out in zip(images, rotated)]
    assert set(turns) == {0, 1, 2, 3}


def test_exposure_scales_each_image_by_its_own_gain_within_the_spread_and_keeps_the_flips_streams():
    images = np.full((64, 4, 4, 1), 200, np.uint8)
    images[:, 0, 0] = 10  # a dark pixel: one gain per image moves both pixels by the same factor
    seed = tf.constant([1, 2], tf.int64)
    exposed = augment_batch(tf.constant(images), Augment(exposure=True), seed).numpy().astype(float)
    gains = exposed[:, 1, 1, 0] / 200
    assert np.all(np.abs(gains - 1) <= EXPOSURE_GAIN_SPREAD + 0.5 / 200)
    assert gains.min() < 0.95 and gains.max() > 1.05  # spread over the range, not one gain for the batch
    np.testing.assert_allclose(exposed[:, 0, 0, 0], 10 * gains, atol=0.6)
    np.testing.assert_array_equal(augment_batch(tf.constant(images), Augment(exposure=True), seed).numpy(), exposed)
    turned = distinct_images(n=8, size=4, channels=1)
    both = augment_batch(tf.constant(turned), Augment(rot90=True, exposure=True), seed).numpy()
    alone = augment_batch(tf.constant(turned), Augment(rot90=True), seed).numpy()
    for with_exposure, without in zip(both, alone):  # the same quarter turn per image, then a gain
        assert np.corrcoef(with_exposure.ravel(), without.ravel())[0, 1] > 0.99


def test_references_of_a_run_trained_on_exposures_include_both_ends_of_its_gain_range():
    images = np.full((3, 4, 4, 1), 200, np.uint8)
    assert with_trained_exposures(images, Augment(hflip=True)) is images
    references = with_trained_exposures(images, Augment(exposure=True))
    levels = [round(200 * (1 - EXPOSURE_GAIN_SPREAD)), 200, round(200 * (1 + EXPOSURE_GAIN_SPREAD))]
    assert sorted(references[:, 0, 0, 0].tolist()) == sorted(levels * 3)
    np.testing.assert_array_equal(references[:3], images)  # the plain images first


def test_rot90_refuses_non_square_images():
    with pytest.raises(GanspectionError, match="square"):
        make_train_dataset(np.zeros((4, 8, 6, 1), np.uint8), 2, augment=Augment(rot90=True))


def crop_positions(crop, image):
    """Every (top, left) at which `crop` lies in `image` (all of them, so a crop must be found exactly once)."""
    side, size = image.shape[0], crop.shape[0]
    return [(top, left) for top in range(side - size + 1) for left in range(side - size + 1)
            if np.array_equal(image[top : top + size, left : left + size], crop)]


def test_crops_are_tile_sized_squares_of_their_image_at_random_places_and_seeded():
    """Training on an image inspected at 2× the model's size: each sample is a model-sized square of its source
    image, anywhere in it (not only on the scoring grid), a different place per sample, the same under a seed."""
    images = distinct_images(n=4, size=2 * SIZE)
    dataset = make_train_dataset(images, 4, shuffle=False, seed=3, crop_size=SIZE)
    batches = np.concatenate(first_batches(dataset, 8))
    assert batches.shape == (32, SIZE, SIZE, 3)
    sources = as_unit(images)
    places = []
    for i, crop in enumerate(batches):
        found = crop_positions(crop, sources[i % 4])  # unshuffled: the i-th crop comes from source i % 4
        assert len(found) == 1, i
        places.append(found[0])
    assert len(set(places)) > 16 and any(top % SIZE or left % SIZE for top, left in places)
    again = np.concatenate(first_batches(make_train_dataset(images, 4, shuffle=False, seed=3, crop_size=SIZE), 8))
    np.testing.assert_array_equal(again, batches)
    other = np.concatenate(first_batches(make_train_dataset(images, 4, shuffle=False, seed=4, crop_size=SIZE), 8))
    assert not np.array_equal(other, batches)


def test_a_crop_of_the_whole_image_leaves_the_batches_as_they_were():
    """The default (inspected at the model's size): the same batches, augmentations included, as without crops."""
    images = distinct_images(n=8)
    augment = Augment.from_flags("hflip,rot90")
    plain = first_batches(make_train_dataset(images, 4, augment=augment, seed=5), 4)
    cropped = first_batches(make_train_dataset(images, 4, augment=augment, seed=5, crop_size=SIZE), 4)
    np.testing.assert_array_equal(np.stack(cropped), np.stack(plain))


def test_eval_dataset_keeps_order_and_the_short_last_batch():
    images = distinct_images(n=5)
    batches = first_batches(make_eval_dataset(images, batch_size=2), 10)
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), as_unit(images))


def test_bad_inputs_raise():
    with pytest.raises(GanspectionError, match="uint8"):
        make_train_dataset(np.zeros((4, 8, 8, 3), np.float32), 2)
    with pytest.raises(GanspectionError, match="batch size"):
        make_eval_dataset(distinct_images(), 0)


# --- the real dataset ------------------------------------------------------------------------------------


def test_real_mvtec_bottle_scans_and_loads():
    bottle = mvtec_bottle()
    if bottle is None:
        pytest.skip("MVTec AD bottle not found next to the repository")
    category = scan_category(bottle)
    assert category.is_mvtec and len(category.train) == 209
    assert category.defects == ["broken_large", "broken_small", "contamination"]
    assert category.missing_masks() == []
    assert choices.choose(TrainConfig.from_flat(data=str(bottle)), category.train[:4])[0].model.channels == 3
    images, skipped = load_images(category.train[:4], 32, 3)
    assert images.shape == (4, 32, 32, 3) and skipped == []
    assert 20 < images.mean() < 235 and images.std() > 5  # a real photo, not a blank
