"""The good images int8 and int16x8 conversions calibrate their activation ranges on (``export --calibration``
or the run's training images), augmented to a minimum count and spanning the full uint8 input range."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganspection_tf.data import pipeline
from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import DEFAULT_RESIZE, list_images
from ganspection_tf.run import as_run

MIN_REPRESENTATIVE = 100  # int8 activation ranges from fewer good images are too narrow (and too lucky)
MAX_REPRESENTATIVE = 300  # calibration time grows linearly; ranges stop moving well before this


def representative_images(run, size, channels, calibration_dir=None, log=print, seed=0,
                          resize=DEFAULT_RESIZE, exposure_level=0.0) -> np.ndarray:
    """≥ MIN_REPRESENTATIVE good images for int8 / int16x8 calibration (augmented when the folder has fewer)."""
    if calibration_dir is not None:
        paths, source = list_images(calibration_dir), f"--calibration {calibration_dir}"
        if not paths:
            raise GanspectionError(f"--calibration {calibration_dir}: no images in it; point at good images")
    else:
        paths, source = training_paths(run), "the run's training images"
    images, skipped = pipeline.load_images(paths, size, channels, skip_unreadable=True, resize=resize,
                                           exposure_level=exposure_level)
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s) of {source}")
    rng = np.random.default_rng(seed)
    if len(images) > MAX_REPRESENTATIVE:
        images = images[np.sort(rng.choice(len(images), MAX_REPRESENTATIVE, replace=False))]
    if len(images) < MIN_REPRESENTATIVE:
        log(f"quantisation calibration: {len(images)} images from {source}, augmented to {MIN_REPRESENTATIVE} "
            "with brightness and contrast changes")
        images = augment_to(images, MIN_REPRESENTATIVE, rng)
    return with_full_input_range(images)


def with_full_input_range(images: np.ndarray) -> np.ndarray:
    """The images, one of them with a black and a white pixel in its corner.

    int8 quantises the model input with the range seen during calibration: good images rarely reach 0 and 255,
    so a blown-out or black frame — an anomaly — would be clipped at the input. Two pixels set the input range
    to the full uint8 range (the input resolution stays 2/255, exactly that of uint8) while moving the ranges
    of the layers behind it far less than whole black or white images would.
    """
    images = images.copy()
    images[0, 0, 0] = 0
    images[0, 0, 1] = 255
    return images


def augment_to(images: np.ndarray, count: int, rng) -> np.ndarray:
    """The images plus copies with random brightness and contrast, `count` in total.

    Photometric changes only: flipped and rotated copies show the part in poses the model never learned, which
    widens the int8 activation ranges for nothing (benchmarks/RESULTS.md, "Float islands in int8").
    """
    extra = []
    for _ in range(count - len(images)):
        image = images[rng.integers(len(images))].astype(np.float32)
        mean = image.mean()
        jittered = (image - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.85, 1.15)
        extra.append(np.clip(np.rint(jittered), 0, 255).astype(np.uint8))
    return np.concatenate([images, np.stack(extra)]) if extra else images


def training_paths(run) -> list[Path]:
    """The good training images of the run that are still there; none is a one-line error."""
    run = as_run(run)
    found = run.training_images()
    if not found:
        raise GanspectionError(
            f"{run.splits_path}: none of the training images is in {run.where_images_are()} any more; pass "
            "--calibration DIR with good images for int8 calibration"
        )
    return found
