"""Folder scanning (MVTec layout, dataset roots, plain folders) and the validation split."""

import shutil
from pathlib import Path

import pytest

from ganspection_tf.data.mvtec import TestImage, scan_category, split_validation
from ganspection_tf.data.synthetic import write_synthetic_category
from ganspection_tf.errors import GanspectionError

N_TRAIN, N_GOOD, N_PER_DEFECT = 6, 2, 2
DEFECTS = ("hole", "scratch")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    counts = dict(n_train=N_TRAIN, n_test_good=N_GOOD, n_test_per_defect=N_PER_DEFECT)
    write_synthetic_category(root, "widget", image_size=32, defects=DEFECTS, **counts)
    return root


@pytest.fixture
def category_copy(dataset_root, tmp_path):
    """A private copy, for tests that damage the folder."""
    return Path(shutil.copytree(dataset_root / "widget", tmp_path / "widget"))


def test_scan_category_folder(dataset_root):
    category = scan_category(dataset_root / "widget")
    assert category.name == "widget" and category.is_mvtec
    assert [p.name for p in category.train] == [f"{i:03d}.png" for i in range(N_TRAIN)]
    assert len(category.test) == N_GOOD + N_PER_DEFECT * len(DEFECTS)
    assert sorted(t.label for t in category.test) == [0] * N_GOOD + [1] * (N_PER_DEFECT * len(DEFECTS))
    assert category.defects == sorted(DEFECTS)
    assert category.missing_masks() == [] and category.orphan_masks() == []


def test_masks_pair_with_their_images(dataset_root):
    category = scan_category(dataset_root / "widget")
    for image in category.test:
        if image.defect == "good":
            assert image.mask is None and image.label == 0
        else:
            assert image.mask == dataset_root / "widget" / "ground_truth" / image.defect / f"{image.path.stem}_mask.png"
            assert image.path.parent.name == image.defect and image.label == 1


def test_scan_root_plus_category(dataset_root):
    assert scan_category(dataset_root, category="widget").root == dataset_root / "widget"
    # naming the category while pointing at it is accepted too
    assert scan_category(dataset_root / "widget", category="widget").name == "widget"


def test_unknown_category_lists_the_ones_found(dataset_root):
    with pytest.raises(GanspectionError) as caught:
        scan_category(dataset_root, category="bottle")
    message = str(caught.value)
    assert "'bottle'" in message and "widget" in message and str(dataset_root) in message and "\n" not in message


def test_dataset_root_without_category_asks_for_one(dataset_root):
    with pytest.raises(GanspectionError, match="--category"):
        scan_category(dataset_root)


def test_missing_folder(tmp_path):
    with pytest.raises(GanspectionError, match="does not exist") as caught:
        scan_category(tmp_path / "nowhere")
    assert "nowhere" in str(caught.value)


def test_empty_train_good(tmp_path):
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    with pytest.raises(GanspectionError, match="no images") as caught:
        scan_category(tmp_path / "cat")
    assert str(tmp_path / "cat" / "train" / "good") in str(caught.value)


def test_folder_without_images_or_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hi")
    with pytest.raises(GanspectionError, match="non-MVTec folder"):
        scan_category(tmp_path / "stuff")


def test_plain_folder_of_images_is_all_training_data(dataset_root, tmp_path):
    plain = tmp_path / "my_parts"
    shutil.copytree(dataset_root / "widget" / "train" / "good", plain)
    category = scan_category(plain)
    assert not category.is_mvtec and category.name == "my_parts"
    assert len(category.train) == N_TRAIN and category.test == []
    assert category.orphan_masks() == []


def test_missing_and_orphan_masks_are_reported_not_fatal(category_copy):
    (category_copy / "ground_truth" / "hole" / "000_mask.png").unlink()
    orphan = category_copy / "ground_truth" / "scratch" / "099_mask.png"
    shutil.copy(category_copy / "ground_truth" / "scratch" / "000_mask.png", orphan)
    category = scan_category(category_copy)
    assert category.missing_masks() == [category_copy / "test" / "hole" / "000.png"]
    assert category.orphan_masks() == [orphan]
    assert len(category.test) == N_GOOD + N_PER_DEFECT * len(DEFECTS)


def test_test_image_labels():
    assert TestImage(Path("a.png"), "good").label == 0
    assert TestImage(Path("b.png"), "crack", Path("b_mask.png")).label == 1


PATHS = [Path(f"img_{i:03d}.png") for i in range(20)]


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_validation(PATHS, fraction=0.15, seed=3)
    assert (train, val) == split_validation(list(reversed(PATHS)), fraction=0.15, seed=3)
    assert len(val) == 3 and len(train) == 17
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(PATHS)
    assert train == sorted(train) and val == sorted(val)
    assert split_validation(PATHS, fraction=0.15, seed=4)[1] != val


def test_split_edge_cases():
    two_train, two_val = split_validation(PATHS[:2], fraction=0.01)
    assert len(two_train) == 1 and len(two_val) == 1  # at least one validation image
    three_train, three_val = split_validation(PATHS[:3], fraction=0.9)
    assert len(three_train) == 1 and len(three_val) == 2  # at least one training image
    assert split_validation(PATHS[:1], fraction=0.5) == (PATHS[:1], [])
    assert split_validation(PATHS, fraction=0.0) == (PATHS, [])
    with pytest.raises(GanspectionError, match="fraction"):
        split_validation(PATHS, fraction=1.0)
