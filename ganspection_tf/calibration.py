"""Turning the score terms into one calibrated anomaly score and a yes/no (numpy only, no TensorFlow).

The camera-side runtime imports this module and must combine the terms exactly like the workstation does.
The terms themselves (which model outputs, what is fitted for them) are the registry in ``terms.py``;
:meth:`Calibration.term_matrix` turns raw model outputs into the term matrix with it, for the workstation and
the camera alike, and :func:`fit_calibration_from_outputs` fits each term's parameters (e.g. the code Gaussian
of ``latent_mahalanobis``, the per-pixel Gaussian of ``normalized_map_max``) on good images.

Combined score of an image with term vector t (in ``Calibration.terms`` order), u = (t − mean) / std:

* ``weighted``:     score = Σ_i weights_i · u_i                 (a dot product)
* ``mahalanobis``:  score = ‖u · whiteningᵀ‖₂                   (a matrix product and a Euclidean norm)

mean and std are measured on the good validation images held out of training (never on test images), so
u_i says "how many validation standard deviations above a typical good part" the term is. The whitening
matrix is the inverse square root of the Ledoit–Wolf shrunk covariance of u, so the Mahalanobis score
discounts terms that move together. It is two-sided: a term far *below* its validation mean counts too.
The default weights (``Term.default_weight``: normalized_map_max alone) and the measurements behind them are in
benchmarks/RESULTS.md ("Score terms").

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
import functools
import math
import statistics
from dataclasses import dataclass

import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.heatmaps import HEATMAP_FULL_SCALE
from ganspection_tf.stats import MIN_SAMPLES, whitening_matrix
from ganspection_tf.terms import (
    BY_NAME,
    DEFAULT_WEIGHTS,
    ERROR_MAP_OUTPUT,
    OUTPUTS_VERSION,
    PARAMETERS,
    STD_FLOOR_ABSOLUTE,
    TERMS,
    all_finite_numbers,
    is_square_matrix,
)

MAX_REFERENCE_IMAGES = 500  # training images whose error maps fit the per-pixel Gaussian (evenly spaced)
METHODS = ("weighted", "mahalanobis")
DEFAULT_MAX_FPR = 0.01
MIN_VALIDATION_IMAGES = MIN_SAMPLES
STD_FLOOR_RELATIVE = 1e-3  # a term constant on validation must not blow up into huge z-scores

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
_OPTIONAL_FIELDS = {"whitening", "model_step", "validation_scores", "outputs_version", *PARAMETERS}


@dataclass
class Calibration:
    """Everything needed to turn raw model outputs into a score and a yes/no, stored as ``calibration.json``.

    `parameters` holds what was fitted for the terms ({field: value}, e.g. ``code_mean`` of
    latent_mahalanobis); the file keeps them as top-level keys, one per field of ``terms.PARAMETERS``.
    """

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
    # The combined scores of the validation images the threshold was chosen on, sorted: another max_fpr's
    # threshold without recalibrating (:meth:`threshold_for`; shipped in edge bundles). None in older files.
    validation_scores: list[float] | None = None
    outputs_version: int | None = None  # terms.OUTPUTS_VERSION when fitted; None in older files (version 1)
    parameters: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        fitted = values.pop("parameters")
        return {**values, **{name: fitted.get(name) for name in PARAMETERS}}

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
        calibration = cls(**{key: values[key] for key in _FIELD_TYPES}, whitening=values.get("whitening"),
                          model_step=values.get("model_step"), validation_scores=values.get("validation_scores"),
                          outputs_version=values.get("outputs_version"),
                          parameters={name: values[name] for name in PARAMETERS if values.get(name) is not None})
        problem = calibration._problem()
        if problem:
            raise _invalid(fix, source, problem)
        return calibration

    def term_matrix(self, outputs: dict) -> np.ndarray:
        """Raw model outputs {name: (N, ...)} → (N, T) float64 terms in ``terms`` order (workstation and camera)."""
        return np.stack([BY_NAME[name].column(outputs, self._fitted) for name in self.terms], axis=1)

    def with_derived(self, outputs: dict) -> dict:
        """The outputs plus what the terms derive from them (``Term.derive``): pass the result to both
        :meth:`term_matrix` and :meth:`pixel_maps` and the nearest-patch search runs once, not twice."""
        for name in self.terms:
            outputs = BY_NAME[name].with_derived(outputs, self._fitted)
        return outputs

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

    @functools.cached_property
    def _fitted(self) -> dict:
        """`parameters` as float arrays, converted once: they are stored as JSON lists, and the terms would
        otherwise convert them again for every scored batch (twice where the heatmap is a term's own map)."""
        return {name: np.asarray(value, np.float64) for name, value in self.parameters.items()}

    def map_term(self) -> str | None:
        """The term whose own pixel map (``Term.pixel_map``) the heatmaps show: the weighted sum's heaviest term,
        when it has one; None (the error map) otherwise, and for the Mahalanobis fusion."""
        if self.method != "weighted":
            return None
        heaviest = self.terms[int(np.argmax(self.weights))]
        return heaviest if BY_NAME[heaviest].pixel_map is not None else None

    def heatmap_needs_error_map(self) -> bool:
        """Whether heatmaps are drawn from the error map (no term's own map): only then does an edge bundle ship
        it, and the encoder and generator behind it (a patch term's scorer is the critic's first layers)."""
        return self.map_term() is None

    def pixel_maps(self, outputs: dict, side: int) -> np.ndarray | None:
        """(N, side, side) maps of where an image is unusual, for heatmaps and pixel metrics: the error map, or
        the map of :meth:`map_term` scaled so that its validation mean (a good image's least familiar place)
        sits at half the heatmap's colour scale, like a clearly visible but not saturated error. None when the
        outputs hold neither (a bundle without heatmaps)."""
        name = self.map_term()
        if name is None:
            return outputs.get(ERROR_MAP_OUTPUT)
        maps = BY_NAME[name].pixel_map(BY_NAME[name].with_derived(outputs, self._fitted), self._fitted, side)
        typical = self.mean[self.terms.index(name)]
        return maps * np.float32(0.5 * HEATMAP_FULL_SCALE / max(typical, STD_FLOOR_ABSOLUTE))

    def threshold_for(self, max_fpr) -> float:
        """The threshold this calibration's rule gives for another `max_fpr`, from its validation scores."""
        return validation_threshold(self.validation_scores, max_fpr)

    def is_anomalous(self, scores) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def restricted_to(self, terms) -> Calibration:
        """The same calibration for a subset of its terms (and only their fitted parameters)."""
        keep = [self.terms.index(name) for name in terms]

        def pick(values):
            return [values[i] for i in keep]

        fields = {name for term in terms for name in BY_NAME[term].parameters}
        return dataclasses.replace(self, terms=list(terms), mean=pick(self.mean), std=pick(self.std),
                                   weights=pick(self.weights),
                                   parameters={k: v for k, v in self.parameters.items() if k in fields})

    def _problem(self) -> str | None:
        count = len(self.terms)
        if count == 0 or not all(isinstance(t, str) for t in self.terms) or len(set(self.terms)) != count:
            return "'terms' must be a non-empty list of distinct names"
        unknown = [t for t in self.terms if t not in TERMS]
        if unknown:
            return f"unknown terms {unknown}; known: {list(TERMS)}"
        for key in ("mean", "std", "weights"):
            vector = getattr(self, key)
            if len(vector) != count or not all_finite_numbers(vector):
                return f"'{key}' must hold {count} finite numbers"
        if min(self.std) <= 0:
            return "'std' must be positive"
        if self.method not in METHODS:
            return f"'method' is {self.method!r}; use one of {list(METHODS)}"
        if self.method == "mahalanobis" and not is_square_matrix(self.whitening, count):
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
                len(self.validation_scores) != self.n_validation or not all_finite_numbers(self.validation_scores)):
            return "'validation_scores' must hold 'n_validation' finite numbers"
        for field in ("model_step", "outputs_version"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                return f"'{field}' must be an integer or null"
        return self._parameters_problem()

    def _parameters_problem(self) -> str | None:
        """Each term's fitted parameters, checked when the term is used or any of them is stored."""
        for term in (BY_NAME[name] for name in TERMS):
            stored = {name: self.parameters.get(name) for name in term.parameters}
            if term.check is None or (term.name not in self.terms and all(v is None for v in stored.values())):
                continue
            problem = term.check(stored)
            if problem:
                return problem
        return None


def fit_calibration(
    term_matrix_val,
    terms=None,
    weights=None,
    method="weighted",
    max_fpr=DEFAULT_MAX_FPR,
    config_hash="",
    model_step=None,
    **parameters,
) -> Calibration:
    """Fits standardisation, fusion and threshold on the terms of good validation images ONLY.

    `weights` is a dict {term: α} (missing terms get 0) or a list in `terms` order; None → the default weights.
    `parameters` are the terms' fitted parameters by calibration field (e.g. ``code_mean=…`` for
    latent_mahalanobis); :func:`fit_calibration_from_outputs` fits them and the honest validation columns.
    """
    terms = list(TERMS if terms is None else terms)  # None: every term (read at call time, not import time)
    matrix = np.asarray(term_matrix_val, dtype=np.float64)
    _check_fit_inputs(matrix, terms, method, max_fpr)
    for name in terms:
        term = BY_NAME[name]
        if any(parameters.get(field) is None for field in term.parameters):
            raise GanspectionError(f"the term {name} needs {term.fitted} ({', '.join(term.parameters)}); "
                                   "fit with fit_calibration_from_outputs")
    mean = matrix.mean(axis=0)
    std = _floored_std(matrix, mean)
    standardized = (matrix - mean) / std
    whitening = whitening_matrix(standardized) if method == "mahalanobis" else None
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
        outputs_version=OUTPUTS_VERSION,
        parameters={name: np.asarray(value, np.float64).tolist() for name, value in parameters.items()
                    if value is not None},
    )
    calibration.validation_scores = sorted(calibration.combine(matrix).tolist())
    calibration.threshold = calibration.threshold_for(max_fpr)
    return calibration


def fit_calibration_from_outputs(outputs: dict, terms=None, reference_outputs=None, **options) -> Calibration:
    """:func:`fit_calibration` from the raw model outputs of the good validation images.

    Each term fits its parameters (``Term.fit``) and gives its honest validation column: e.g. the code Gaussian
    of ``latent_mahalanobis`` on all validation codes with a leave-one-out column, the per-pixel Gaussian of
    ``normalized_map_max`` on ``reference_outputs`` (the good training images) when given, else leave-one-out
    on the validation maps.
    """
    terms = list(TERMS if terms is None else terms)
    parameters, matrix = fitted_columns(outputs, terms, reference_outputs)
    return fit_calibration(matrix, terms, **parameters, **options)


def fitted_columns(outputs: dict, terms, reference_outputs=None) -> tuple[dict, np.ndarray]:
    """(the terms' fitted parameters by calibration field, the (N, T) honest validation term matrix) from the
    raw outputs of good validation images (``Term.fit_on``)."""
    _check_known(terms)
    columns, parameters = [], {}
    for name in terms:
        fitted, column = BY_NAME[name].fit_on(outputs, reference_outputs)
        parameters.update(fitted)
        columns.append(column)
    return parameters, np.stack(columns, axis=1)


def validation_threshold(scores, max_fpr=DEFAULT_MAX_FPR) -> float:
    """The decision threshold for combined validation scores (see the module docstring for the rule)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    allowed_above = math.floor(len(scores) * max_fpr + 1e-9)  # validation images that may lie above
    if allowed_above >= 1:
        return float(scores[len(scores) - 1 - allowed_above])  # the lowest observed score leaving that many
    spread = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    gaussian_tail = float(np.mean(scores)) + statistics.NormalDist().inv_cdf(1.0 - max_fpr) * spread
    return max(float(scores[-1]), gaussian_tail)


def weight_vector(weights, terms=None):
    """Weights as a list in `terms` order (None: every term) from a dict {term: α} (missing → 0), a list, or None
    (the default weights)."""
    terms = TERMS if terms is None else terms
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


# --- helpers ---------------------------------------------------------------------------------------------


def _invalid(fix, source, problem):
    fix = fix or "delete it and run 'ganspection-tf evaluate' on the run folder to recompute it"
    return GanspectionError(f"{source}: invalid calibration ({problem}); {fix}")


def _check_fit_inputs(matrix, terms, method, max_fpr):
    if method not in METHODS:
        raise GanspectionError(f"--method {method}: unknown; choose one of {', '.join(METHODS)}")
    if not 0.0 < max_fpr < 1.0:
        raise GanspectionError(f"--max-fpr {max_fpr}: must be between 0 and 1 (e.g. 0.01)")
    _check_known(terms)
    if matrix.ndim != 2 or matrix.shape[1] != len(terms):
        raise GanspectionError(f"expected validation terms of shape (N, {len(terms)}), got {matrix.shape}")
    if len(matrix) < MIN_VALIDATION_IMAGES:
        raise GanspectionError(
            f"calibration needs at least {MIN_VALIDATION_IMAGES} good validation images, got {len(matrix)}; "
            "retrain with a larger --val-fraction or more training images"
        )
    if not np.all(np.isfinite(matrix)):
        raise GanspectionError("the model produced NaN/Inf score terms on validation images; the run has diverged")


def _check_known(terms):
    unknown = [t for t in terms if t not in TERMS]
    if unknown or not terms:
        raise GanspectionError(f"unknown score terms {unknown}; choose from {', '.join(TERMS)}")


def _floored_std(matrix, mean):
    std = matrix.std(axis=0, ddof=1)
    return np.maximum(std, np.maximum(STD_FLOOR_RELATIVE * np.abs(mean), STD_FLOOR_ABSOLUTE))
