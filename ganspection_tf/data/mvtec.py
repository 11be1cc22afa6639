"""Find the training and test images of one category in an MVTec-AD style folder (no TensorFlow here).

MVTec-AD layout, one folder per category::

    <category>/train/good/*.png                  defect-free training images
    <category>/test/good/*.png                   defect-free test images
    <category>/test/<defect>/<stem>.png          defective test images, one folder per defect type
    <category>/ground_truth/<defect>/<stem>_mask.png   pixel mask of the defect (white = defect)

A plain folder of images is accepted too: it is all training data and there is nothing to evaluate on.

Decisions about imperfect folders (the scan never fails on them; the caller decides):

* a defect image without its mask gets ``mask=None`` and is listed by :meth:`Category.missing_masks`;
  evaluation refuses pixel-level metrics while any are missing, training does not care;
* a mask without its image is listed by :meth:`Category.orphan_masks`; training ignores it, evaluation warns;
* image files lying directly in ``test/`` (outside a defect folder) have no label and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import IMAGE_SUFFIXES, list_images

GOOD = "good"
_MASK_SUFFIX = "_mask"
_SUFFIX_LIST = ", ".join(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class TestImage:
    """One test image; ``defect`` is the name of its test sub-folder, ``"good"`` for defect-free ones."""

    __test__ = False  # the name starts with "Test": keep pytest from trying to collect it as a test class

    path: Path
    defect: str
    mask: Path | None = None

    @property
    def label(self) -> int:
        """0 for a good image, 1 for a defective one."""
        return 0 if self.defect == GOOD else 1


@dataclass
class Category:
    """The images of one category; ``is_mvtec`` is False for a plain folder of good images (``test`` empty)."""

    name: str
    root: Path
    train: list[Path]
    test: list[TestImage]
    is_mvtec: bool

    @property
    def defects(self) -> list[str]:
        """Defect types present in the test set, sorted (``"good"`` excluded)."""
        return sorted({t.defect for t in self.test if t.label == 1})

    def missing_masks(self) -> list[Path]:
        """Defective test images that have no ``ground_truth/<defect>/<stem>_mask.*`` file."""
        return [t.path for t in self.test if t.label == 1 and t.mask is None]

    def orphan_masks(self) -> list[Path]:
        """Files under ``ground_truth/`` that belong to no test image (read from disk on each call)."""
        ground_truth = self.root / "ground_truth"
        if not self.is_mvtec or not ground_truth.is_dir():
            return []
        paired = {t.mask for t in self.test if t.mask is not None}
        return [m for folder in _subfolders(ground_truth) for m in list_images(folder) if m not in paired]


def scan_category(path: Path | str, category: str | None = None) -> Category:
    """Scan a category folder, a dataset root plus ``category``, or a plain folder of good images.

    Raises a one-line GanspectionError when the folder is missing, the category is not in the root (the
    message lists the ones found), the folder holds neither the MVTec layout nor images, or ``train/good``
    is empty.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise GanspectionError(
            f"{root}: is a file, not a folder; point at the folder that holds the images (e.g. {root.parent})"
        )
    if not root.is_dir():
        raise GanspectionError(
            f"{root}: folder does not exist; point at an MVTec category folder (e.g. .../mvtec_ad/bottle) "
            "or at a folder of defect-free images"
        )
    if category is not None:
        root = _category_folder(root, category)
    if _is_category(root):
        return _scan_mvtec(root)
    found = _categories_in(root)
    if found:
        raise GanspectionError(
            f"{root}: is a dataset root holding categories {', '.join(found)}; "
            "pass --category NAME or point at one category folder"
        )
    images = list_images(root)
    if images:
        return Category(name=root.name, root=root, train=images, test=[], is_mvtec=False)
    raise GanspectionError(
        f"{root}: non-MVTec folder without images (no train/good/ inside and no {_SUFFIX_LIST} files); "
        "point at an MVTec category folder or at a folder of defect-free images"
    )


def split_validation(paths: list[Path], fraction: float = 0.15, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Hold out ``fraction`` of the images for validation, the same way on every run with the same seed.

    The sorted list is permuted with ``seed``, so the split does not depend on directory listing order.
    With ``fraction > 0`` and at least 2 images, validation gets at least 1 image and training keeps at
    least 1. Both returned lists are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise GanspectionError(f"validation fraction must be in [0, 1), got {fraction}; pass e.g. --val-fraction 0.15")
    ordered = sorted(Path(p) for p in paths)
    if fraction == 0.0 or len(ordered) < 2:
        return ordered, []
    n_val = min(max(1, round(len(ordered) * fraction)), len(ordered) - 1)
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    val_indices = set(permutation[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_indices]
    val = [p for i, p in enumerate(ordered) if i in val_indices]
    return train, val


# --- helpers ---------------------------------------------------------------------------------------------


def _is_category(folder: Path) -> bool:
    return (folder / "train" / GOOD).is_dir()


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _categories_in(root: Path) -> list[str]:
    return [p.name for p in _subfolders(root) if _is_category(p)]


def _category_folder(root: Path, category: str) -> Path:
    if root.name == category and _is_category(root):
        return root  # pointed at the category folder itself and also named it: accept
    candidate = root / category
    if candidate.is_dir():
        return candidate
    found = ", ".join(_categories_in(root)) or "none"
    raise GanspectionError(
        f"{root}: has no category '{category}' (categories found: {found}); "
        "pass one of those to --category, or drop --category and point at the category folder"
    )


def _scan_mvtec(root: Path) -> Category:
    train_folder = root / "train" / GOOD
    train = list_images(train_folder)
    if not train:
        raise GanspectionError(
            f"{train_folder}: no images ({_SUFFIX_LIST}) in it; put the defect-free training images there"
        )
    return Category(name=root.name, root=root, train=train, test=_scan_test(root), is_mvtec=True)


def _scan_test(root: Path) -> list[TestImage]:
    test_root = root / "test"
    if not test_root.is_dir():
        return []
    test = []
    for folder in _subfolders(test_root):
        masks = {} if folder.name == GOOD else _masks_by_stem(root / "ground_truth" / folder.name)
        test += [TestImage(path=p, defect=folder.name, mask=masks.get(p.stem)) for p in list_images(folder)]
    return test


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    """``{"000": .../000_mask.png}``: the image stem each mask file belongs to."""
    if not folder.is_dir():
        return {}
    return {m.stem[: -len(_MASK_SUFFIX)]: m for m in list_images(folder) if m.stem.endswith(_MASK_SUFFIX)}
