"""The one scorer contract of the workstation (Keras) and the camera (LiteRT), and its one result type.

numpy, OpenCV and the TF-free package modules only: the camera imports it. A scorer is three steps:

1. :meth:`Scorer.preprocess`: uint8 frames of any size → the uint8 ``(N, S, S, C)`` batch the model sees
   (``images.frame_to_rgb`` to the model's channels, ``images.resize_image`` with the run's resize mode, then
   ``images.levelled`` to the run's exposure level: the training pipeline's pixels), S the run's inspected size
   (``inspect_size``; the model cuts an image larger than its networks' input into tiles itself and merges their
   outputs, ``tiles.py``, so both implementations and every caller of the term model see per-image outputs);
2. :meth:`Scorer.forward`: that batch → the raw model outputs ``{name: (N, ...) array}`` (``terms.MODEL_OUTPUTS``
   or the bundle's subset); the only step the implementations write themselves
   (``scoring.KerasScorer``, ``edge.EdgeScorer``);
3. :meth:`Scorer.postprocess`: raw outputs → one :class:`ScoreResult` per image, with the calibration: its term
   matrix (``Calibration.term_matrix``), standardised and combined (``Calibration.combine``), compared with
   the scorer's threshold; the error map is kept for the heatmap (:meth:`ScoreResult.heatmap_at`), or computed
   when first read where the scorer defers it (the camera).

``score``, ``evaluate``, the export parity gate and the camera all go through these steps, so the
postprocessing is written once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ganspection_tf import images
from ganspection_tf.calibration import Calibration
from ganspection_tf.heatmaps import anomaly_map
from ganspection_tf.images import UnreadableImage

__all__ = ["ScoreResult", "Scorer", "Scores"]


@dataclass
class ScoreResult:
    """One scored image or frame. A file that could not be read has `error` set and no score."""

    score: float | None = None
    anomalous: bool | None = None
    terms: dict[str, float] | None = None  # in the calibration's term order
    error_map: np.ndarray | None = None  # (S, S) at the inspected size: the map the heatmaps show, the error map or the
    # map of the term that carries the score (Calibration.pixel_maps); None: a bundle without heatmaps, or not yet
    # computed (`pending_map`: read it through pixel_map())
    resize: str = images.DEFAULT_RESIZE  # the run's resize mode, to map the error map back onto the image
    heatmap: np.ndarray | None = None  # float32 anomaly map at the image's size, when asked for
    latency_ms: float | None = None  # preprocess → postprocess of this image (the camera's single frames)
    path: Path | None = None  # the file it came from (score_files)
    original_hw: tuple[int, int] | None = None  # the decoded image's size
    original: np.ndarray | None = None  # the decoded image, only when the caller keeps it (heatmap overlays)
    error: UnreadableImage | None = None
    pending_map: Callable[[], np.ndarray] | None = field(default=None, repr=False)  # computes error_map when first read

    def pixel_map(self) -> np.ndarray | None:
        """`error_map`, computed now if the scorer left it for later (``Scorer.maps_on_demand``)."""
        if self.error_map is None and self.pending_map is not None:
            self.error_map, self.pending_map = self.pending_map(), None
        return self.error_map

    def heatmap_at(self, height: int, width: int) -> np.ndarray:
        """The anomaly map at an image's size, from this scoring's model outputs (no second inference)."""
        return anomaly_map(self.pixel_map(), (height, width), resize=self.resize)


@dataclass
class Scores:
    """The postprocessed arrays of a batch: term matrix (N, T), combined scores (N,), decisions (N,)."""

    terms: np.ndarray
    combined: np.ndarray
    anomalous: np.ndarray


class Scorer(ABC):
    """preprocess → forward → postprocess with a :class:`Calibration`. Subclasses set the attributes below in
    their ``__init__`` and implement :meth:`forward`."""

    calibration: Calibration
    image_size: int
    channels: int
    resize: str
    exposure_level: float  # images.levelled; 0: off
    threshold: float  # the calibration's, unless the caller chose another (camera/score --threshold, --max-fpr)
    keeps_error_map: bool  # results carry the error map (heatmaps)
    # Each result's map is computed when it is first read (ScoreResult.pixel_map), not with the score: the camera,
    # whose frame scores by a patch term need its few largest patch distances only, a far shorter search than the map's.
    maps_on_demand: bool = False

    def preprocess(self, frames, color_order: str = "rgb") -> np.ndarray:
        """One frame (H, W[, C]) → its uint8 (S, S, C) model image; a sequence of frames (or an (N, H, W, C)
        array) → the uint8 (N, S, S, C) batch. Frames are converted to the model's channels first."""
        if isinstance(frames, np.ndarray) and frames.ndim in (2, 3):
            rgb = images.frame_to_rgb(frames, color_order, channels=self.channels)
            return images.levelled(images.resize_image(rgb, self.image_size, self.resize), self.exposure_level)
        return np.stack([self.preprocess(np.asarray(frame), color_order) for frame in frames]).astype(np.uint8)

    @abstractmethod
    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, S, S, C) → raw model outputs {name: (N, ...) numpy array}."""

    def scores(self, outputs: dict[str, np.ndarray]) -> Scores:
        """Raw outputs → term matrix, combined score and decision for each image (the arrays of postprocess)."""
        matrix = self.calibration.term_matrix(outputs)
        combined = self.calibration.combine(matrix)
        return Scores(matrix, combined, np.asarray(combined) > self.threshold)

    def postprocess(self, outputs: dict[str, np.ndarray]) -> list[ScoreResult]:
        """Raw outputs of N images → N :class:`ScoreResult` (terms, score, decision, error map)."""
        maps_now = self.keeps_error_map and not self.maps_on_demand
        if maps_now:
            outputs = self.calibration.with_derived(outputs)  # what score and map share is computed once
        scored = self.scores(outputs)
        error_maps = self.calibration.pixel_maps(outputs, self.image_size) if maps_now else None
        return [
            ScoreResult(
                score=float(scored.combined[k]),
                anomalous=bool(scored.anomalous[k]),
                terms={name: float(value) for name, value in zip(self.calibration.terms, scored.terms[k])},
                error_map=None if error_maps is None else error_maps[k],
                resize=self.resize,
                pending_map=self._map_of(outputs, k) if self.keeps_error_map and not maps_now else None,
            )
            for k in range(len(scored.combined))
        ]

    def _map_of(self, outputs: dict[str, np.ndarray], k: int) -> Callable[[], np.ndarray]:
        """Computes the error map of image `k` of a batch's outputs when called."""
        image = {name: value[k:k + 1] for name, value in outputs.items()}
        return lambda: self.calibration.pixel_maps(image, self.image_size)[0]

    def score_batch(self, frames, color_order: str = "rgb") -> list[ScoreResult]:
        """The three steps for a sequence of frames."""
        return self.postprocess(self.forward(self.preprocess(frames, color_order)))

    def score(self, frame, color_order: str = "bgr", heatmap: bool = False) -> ScoreResult:
        """Score one frame (BGR from OpenCV by default); ``heatmap=True`` adds the anomaly map at its size.
        ``latency_ms`` covers the three steps (and the heatmap)."""
        started = time.perf_counter()
        self._check_heatmap_request(heatmap)
        (result,) = self.score_batch([frame], color_order)
        if heatmap:
            result.heatmap = result.heatmap_at(*np.asarray(frame).shape[:2])
        result.latency_ms = (time.perf_counter() - started) * 1000.0
        return result

    def score_file(self, path, heatmap: bool = False) -> ScoreResult:
        """Score an image file, decoded like the training images (``images.read_image``, RGB)."""
        result = self.score(images.read_image(path), color_order="rgb", heatmap=heatmap)
        result.path = Path(path)
        return result

    def _check_heatmap_request(self, heatmap: bool) -> None:
        """Raises when a heatmap is asked for and this scorer keeps no error map (edge bundles say why)."""
