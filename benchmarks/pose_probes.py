"""Learning-free probes of a category: how far pose and brightness normalisation and simple references get.

    python benchmarks/pose_probes.py [--data ../shared/data/mvtec_ad/screw] [--size 64]

A design aid for parts that arrive at any pose (issue: accuracy on screw), not a product feature and not a
held-out figure: every row is an image AUROC on the category's TEST split, so anything chosen from this table
was chosen looking at that split (say so in RESULTS.md). Rows, each the max over pixels of a smoothed error map:

* ``template``: |x − mean good training image|, per-pixel z-scored on the training images (the categories
  benchmark's template baseline, without its calibration);
* ``+ brightness``: the same after subtracting each image's median grey level (lighting differs per photo);
* ``+ pose``: the same after turning each part to one canonical pose: the largest dark-on-light (or
  light-on-dark) blob's centroid to the centre and its major axis (image moments) vertical, the heavier end
  down (third moment). Only meaningful for elongated parts on a plain background;
* ``nearest good image``: after pose and brightness, |x − the closest training image| (what a generator that
  reproduces the closest good part would give);
* ``patch nearest neighbour``: after pose and brightness, each P×P patch's distance to the closest training
  patch within one stride of the same place (a raw-pixel PatchCore).
"""

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from ganspection_tf.data import mvtec
from ganspection_tf.evaluate import image_metrics
from ganspection_tf.images import read_image

REPO = Path(__file__).resolve().parents[1]


def canonical_pose(gray: np.ndarray) -> np.ndarray:
    """The image turned so that its main blob is centred, its major axis vertical and its heavier end down."""
    blurred = cv2.GaussianBlur(gray, (0, 0), 3)
    _, foreground = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    if foreground.mean() > 127:  # the part is the lighter side
        foreground = 255 - foreground
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground)
    if count < 2:
        return gray
    blob = (labels == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])).astype(np.uint8)
    moments = cv2.moments(blob, True)
    cx, cy = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    angle = 0.5 * np.degrees(np.arctan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"]))
    rotation = cv2.getRotationMatrix2D((cx, cy), angle - 90, 1.0)
    height, width = gray.shape
    rotation[:, 2] += (width / 2 - cx, height / 2 - cy)
    turned = cv2.warpAffine(gray, rotation, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rows = np.nonzero(cv2.warpAffine(blob, rotation, (width, height), flags=cv2.INTER_NEAREST))[0]
    heavier_end_up = np.mean((rows - rows.mean()) ** 3) < 0
    return cv2.rotate(turned, cv2.ROTATE_180) if heavier_end_up else turned


def load(paths, size, brightness, pose) -> np.ndarray:
    images = []
    for path in paths:
        gray = read_image(path, 1)[..., 0]
        gray = canonical_pose(gray) if pose else gray
        pixels = gray.astype(np.float32)
        pixels -= np.median(pixels) if brightness else 127.5
        images.append(cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA) / 127.5)
    return np.stack(images)


def smoothed(maps, size) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(m, (0, 0), size / 32) for m in maps])


def template_scores(train, test, size) -> np.ndarray:
    template = train.mean(axis=0)
    reference = smoothed(np.abs(train - template), size)
    mean, spread = reference.mean(axis=0), reference.std(axis=0)
    spread = np.maximum(spread, 0.5 * spread.mean())
    return ((smoothed(np.abs(test - template), size) - mean) / spread).reshape(len(test), -1).max(axis=1)


def nearest_image_scores(train, test, size) -> np.ndarray:
    flat_train, flat_test = train.reshape(len(train), -1), test.reshape(len(test), -1)
    distances = (flat_test**2).sum(1)[:, None] - 2 * flat_test @ flat_train.T + (flat_train**2).sum(1)[None]
    nearest = train[distances.argmin(axis=1)]
    return smoothed(np.abs(test - nearest), size).reshape(len(test), -1).max(axis=1)


def patch_scores(train, test, patch, stride) -> np.ndarray:
    def patches(images):
        side = (images.shape[1] - patch) // stride + 1
        return np.stack([[images[:, i * stride:i * stride + patch, j * stride:j * stride + patch].reshape(len(images), -1)
                          for j in range(side)] for i in range(side)])  # (side, side, N, P*P)

    memory, queries = patches(train), patches(test)
    side = memory.shape[0]
    worst = np.zeros(len(test))
    for i in range(side):
        for j in range(side):
            bank = memory[max(0, i - 1):i + 2, max(0, j - 1):j + 2].reshape(-1, patch * patch)
            query = queries[i, j]
            squared = (query**2).sum(1)[:, None] - 2 * query @ bank.T + (bank**2).sum(1)[None]
            worst = np.maximum(worst, np.sqrt(np.maximum(squared.min(axis=1), 0)))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/mvtec_ad/screw")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    category = mvtec.scan_category(args.data)
    labels = np.array([t.label for t in category.test])
    defects = [t.defect for t in category.test]
    test_paths = [t.path for t in category.test]
    rows = {}
    for name, brightness, pose in (("template", False, False), ("+ brightness", True, False), ("+ pose", True, True)):
        train, test = load(category.train, args.size, brightness, pose), load(test_paths, args.size, brightness, pose)
        rows[name] = template_scores(train, test, args.size)
    rows["nearest good image"] = nearest_image_scores(train, test, args.size)
    rows[f"patch nearest neighbour (6 px, stride 3, at {2 * args.size} px)"] = patch_scores(
        load(category.train, 2 * args.size, True, True), load(test_paths, 2 * args.size, True, True), 6, 3)
    print(f"| {category.name}, {args.size} px, learning-free | image AUROC (test split) |\n|---|---|")
    for name, scores in rows.items():
        print(f"| {name} | {image_metrics(labels, defects, {name: scores})[name]['auroc']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
