"""Pixel anomaly maps: the model's per-pixel error map smoothed, upsampled to the photo and drawn over it.

numpy and OpenCV only (the camera draws heatmaps too). The smoothing here is also the one the score terms
``map_max`` (in the graph, ``scoring.GaussianSmoothing``) and ``normalized_map_max`` (``terms.py``) use, so a
heatmap shows exactly what the score measured.
"""

from __future__ import annotations

import cv2
import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import DEFAULT_RESIZE, map_to_image

# Smoothing of the per-pixel error map before upsampling (suppresses single-pixel noise of the generator; a
# defect spans several model pixels). None = MAP_SIGMA_FRACTION of the map side: 1 px at 32, 2 px at 64
# (measured: benchmarks/RESULTS.md, "map smoothing").
DEFAULT_MAP_SIGMA = None
MAP_SIGMA_FRACTION = 1 / 32
# Mean absolute error (images in [-1, 1]; 0.25 = 32 grey levels) shown as the hottest colour in heatmap overlays
# (on MVTec bottle at 64 px defects reach 0.15–0.25, good parts stay below ~0.08): a fixed scale, so
# two overlays can be compared; per-image normalisation would make every good part look defective.
HEATMAP_FULL_SCALE = 0.25


def map_sigma(side) -> float:
    """The default smoothing (in model pixels) for an error map of `side` × `side` pixels."""
    return float(side) * MAP_SIGMA_FRACTION


def smooth_error_maps(error_maps, sigma=DEFAULT_MAP_SIGMA) -> np.ndarray:
    """(N, S, S) per-pixel errors → float32 maps smoothed at model resolution (the smoothing of ``map_max``)."""
    maps = np.asarray(error_maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise GanspectionError(f"expected error maps of shape (N, S, S), got {maps.shape}")
    sigma = map_sigma(maps.shape[1]) if sigma is None else sigma
    if sigma <= 0:
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT) for m in maps])


def anomaly_map(error_map, out_hw, sigma=DEFAULT_MAP_SIGMA, resize=DEFAULT_RESIZE) -> np.ndarray:
    """Per-pixel error at model resolution (S, S) → smoothed float32 map of size out_hw = (height, width).

    Smoothing happens at model resolution (sigma in model pixels; None = :func:`map_sigma` of the side), then
    bilinear upsampling to the original image, undoing the run's ``resize`` mode (``images.map_to_image``), so
    the map lines up with the photo whatever its size and aspect ratio.
    """
    error = np.asarray(error_map, dtype=np.float32)
    if error.ndim == 3 and error.shape[-1] == 1:
        error = error[..., 0]
    if error.ndim != 2:
        raise GanspectionError(f"expected an error map of shape (S, S), got {error.shape}")
    return map_to_image(smooth_error_maps(error[None], sigma)[0], out_hw, resize)


def heatmap_overlay(image_uint8, amap, full_scale=HEATMAP_FULL_SCALE, opacity=0.5) -> np.ndarray:
    """RGB uint8 picture: the image with the anomaly map as a JET colour layer (fixed scale `full_scale`)."""
    image = np.asarray(image_uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    level = np.clip(np.asarray(amap, np.float32) / float(full_scale), 0.0, 1.0)
    colours = cv2.applyColorMap(np.rint(level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
