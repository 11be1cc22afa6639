"""The learning-free template: the mean good training image used as every image's "reconstruction".

What a per-pixel comparison with the average good part achieves without learning anything: the categories
benchmark's baseline row (``benchmarks/categories.py``) and the reference column of the evaluation report's
model-versus-template picture (``evaluate.py``), computed here once so that both show the same template.
The training images are decoded and resized like the model's input (``pipeline.load_images`` with the run's
size, channels, resize mode and exposure level). numpy only.
"""

from __future__ import annotations

import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import to_unit_range


def mean_good_image(training_uint8) -> np.ndarray:
    """(S, S, C) float32 in [-1, 1]: the mean of the good training images (N, S, S, C) uint8."""
    return to_unit_range(training_uint8).mean(axis=0)


def error_maps(images_uint8, template) -> np.ndarray:
    """(N, S, S): the channel-mean |x − template| in [-1, 1] units, like the model's error_map output."""
    return np.abs(to_unit_range(images_uint8) - template).mean(axis=-1).astype(np.float32)


def run_template(run, size, channels) -> tuple[np.ndarray | None, int]:
    """(template, number of training images averaged) of a run's training split as the model sees it; (None, 0)
    when none of the run's training images is where it can be found any more."""
    from ganspection_tf.data import pipeline  # TensorFlow: only train-side callers get here

    paths = run.training_images()
    if not paths:
        return None, 0
    try:
        images, _ = pipeline.load_run_images(run, paths, size, channels)
    except GanspectionError:  # none of them readable: a picture is not worth failing the evaluation for
        return None, 0
    return mean_good_image(images), len(images)
