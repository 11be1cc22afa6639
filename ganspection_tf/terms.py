"""The score terms: the one registry of what an image is measured by (numpy and OpenCV only, no TensorFlow).

Each :class:`Term` says which model outputs it is computed from, how (``compute``), what is fitted for it on
good images (``fit``; stored in the calibration under ``parameters``), whether the camera must keep the encoder
in float for it, and what it means in one line (the evaluation report shows that line). Calibration, export,
the CLI (``score`` columns, ``--weights``, ``export --score``), ``evaluate`` and its report, the score choice and
the camera loop over :data:`REGISTRY`; nothing else lists the terms. Adding a term = one entry here + its test.

A term is either a model output, declared by its :class:`Graph` (a layer of ``scoring.py``, by class name,
applied to named tensors of the term model: ``scoring.build_term_model`` builds the output from it, no graph
line of its own), or computed here in numpy (``compute``) from model outputs (``inputs``: other terms or any named
tensor of the term model, which the term model then outputs too).

For an image x in [-1, 1], z = E(x), x̂ = G(z) (the reconstruction), f(·, z) = the critic's joint features; the
first six terms are outputs of the term model (``scoring.build_term_model``, EMA weights), the last four are
computed here from its ``code``, ``error_map``, ``critic_patches`` and ``critic_fine_patches`` outputs with what the
calibration fitted on good images:

* ``latent``  ½‖z‖₂², the N(0, I) negative log-likelihood of z without its constant. Chosen over the distance
  |‖z‖ − √d| from the shell where N(0, I) codes concentrate: the trained encoder's codes sit well inside that
  shell and anomalies lengthen them, i.e. move them TOWARDS the shell, so the shell distance ranks defects as
  more normal (benchmarks/RESULTS.md, "Score terms").
* ``map_max``  max over pixels of the error map smoothed like a heatmap (``heatmaps.smooth_error_maps``):
  image-wide means dilute small local defects, the maximum does not.
* ``latent_mahalanobis`` = ‖W (z − μ)‖², the squared Mahalanobis distance of the code from a Gaussian fitted to
  the codes of the good validation images (μ their mean, W the inverse square root of their Ledoit–Wolf shrunk
  covariance). Its validation values, which set its standardisation and the threshold, are leave-one-out: each
  validation code is measured against the Gaussian of the OTHER codes. In-sample values sit far too low (30
  codes in 64 dimensions), which would overstate the term's z-score for every new image.
* ``normalized_map_max`` = max over pixels of (e(p) − m(p)) / s(p), e the smoothed error map, m, s the
  per-pixel mean and spread of the smoothed error maps of the good TRAINING images (s floored at half its mean
  over the map). A generator reconstructs some places of a good part worse than others every time (edges,
  rims, highlights); standardising each pixel by what good parts do THERE leaves what is unusual for that
  place. It assumes roughly aligned parts (fixed camera, fixture). Training rather than validation images:
  more maps for a per-pixel spread, and the validation values that set the standardisation and the threshold
  stay out of sample. Without training maps m and s come from the validation maps, each validation value
  leave-one-out. The default score.
* ``patch_distance`` = the mean of the PATCH_SCORE_COUNT largest, over the image's patches, distances from the
  nearest patch of a bank drawn from the good training images (``patch_bank``), in the critic's stage-2 features
  (stride 4 in the image). A local reference at any place: no reconstruction has to be sharp and no part has to
  sit where the others did, so it is a candidate for parts that move and for textures, whose good surface is
  many similar patches. A defect spans several patches, while a good image's single least familiar patch is
  often a stray one: the mean of the few largest ranks the synthetic defects better than the largest alone.
  Without training images the bank comes from the validation images, each validation value leave-one-out. When
  it carries the chosen score, the heatmaps show its map (every patch's distance) instead of the error map.
* ``fine_patch_distance`` = the same in the critic's first stage (stride 2, 4-pixel patches, its own bank): a
  smaller patch is a finer reference, for defects a few pixels wide (a screw's thread) that a 10-pixel patch
  averages away. Which of the two sizes a run scores by is the score choice's, per run. An image inspected by
  tiles gets these features from one pass over the whole image, not tile by tile: a tile's edge patches see the
  zero padding at its border, patches that no good part has anywhere but at the seams, and they crowded the
  bank and the good images' largest distances.

Measurements behind these choices: benchmarks/RESULTS.md ("Score terms" and "Score variants").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ganspection_tf.errors import GanspectionError
from ganspection_tf.heatmaps import smooth_error_maps
from ganspection_tf.patch_search import largest_nearest_distances, nearest_patch_distances
from ganspection_tf.stats import MIN_SAMPLES, whitening_matrix

CODE_OUTPUT, ERROR_MAP_OUTPUT = "code", "error_map"
# The critic's patch features: its second stage (stride 4, per tile; networks.PATCH_STAGE) and its first (stride 2,
# over the whole inspected image; networks.with_patch_features).
PATCH_OUTPUT, FINE_PATCH_OUTPUT = "critic_patches", "critic_fine_patches"
# derived (Term.derive): every patch's distance from its bank
NEAREST_PATCHES, NEAREST_FINE_PATCHES = "nearest_patch_distances", "nearest_fine_patch_distances"
PATCH_BANK_SIZE = 4096  # patch features kept from the good training images (calibration.json, edge metadata)
PATCH_BANK_CANDIDATES = 1_000_000  # the k-centre selection runs on at most this many of their patches (time)
# An image's patch score is the mean of its this many largest patch distances (calibration.json, edge metadata;
# files without it were fitted on the largest alone, which they keep).
PATCH_SCORE_COUNT = 16
# What the model outputs a calibration was fitted on are (calibration.json): 2 = the fine patch features of an image
# inspected by tiles come from the whole image; 1 (files without it) = tile by tile.
OUTPUTS_VERSION = 2
MAP_STD_FLOOR = 0.5  # × the mean per-pixel spread: no pixel counts as more than twice as steady as the average one
STD_FLOOR_ABSOLUTE = 1e-8

Outputs = dict  # {model output name: (N, ...) array}
Parameters = dict  # {calibration field: fitted value} of one term


@dataclass(frozen=True)
class Graph:
    """How the term model computes a model-output term: the Keras layer registered by ``scoring.py`` under
    `layer` (its class name), built with `options`, called on the term model's tensors named `inputs` (one
    tensor, or a list of several): "image", "code", "reconstruction", "cycled_code", "critic_value",
    "critic_features", "reconstruction_critic_features", "error_map", "smoothed_error_map", "critic_patches"."""

    layer: str
    inputs: tuple[str, ...]
    options: tuple[tuple[str, object], ...] = ()  # (keyword, value) pairs: frozen, so the Term stays hashable


def graph(layer, *inputs, **options) -> Graph:
    """``graph("MeanGap", "code", "cycled_code", squared=True)``: a :class:`Graph` written like the layer call."""
    return Graph(layer, tuple(inputs), tuple(sorted(options.items())))


@dataclass(frozen=True)
class Term:
    """One score term. Every term grows with abnormality; the calibration standardises and combines them.
    A model-output term has a `graph`; any other term a `compute` and its `inputs`."""

    name: str
    explanation: str  # one line, for the evaluation report
    graph: Graph | None = None  # a model output: how the term model computes it
    inputs: tuple[str, ...] = ()  # the model outputs `compute` takes; () = the model output of its own name
    compute: Callable[[Outputs, Parameters], np.ndarray] | None = None  # None: the model output itself
    fit: Callable[[Outputs, Outputs | None], tuple[Parameters, np.ndarray]] | None = None  # (params, validation column)
    parameters: tuple[str, ...] = ()  # the calibration fields that hold what `fit` fitted
    fitted: str = ""  # what `parameters` are, in words (error messages)
    check: Callable[[Parameters], str | None] | None = None  # the problem with stored parameters, or None
    default_weight: float = 0.0  # α in the default weighted sum
    float_encoder: bool = False  # int8 noise of the encoder would be amplified: the camera keeps it float
    export_score: str | None = None  # the `export --score` choice that ships this term alone
    pose_dependent: bool = False  # compares each pixel with the good images at the same place: assumes aligned parts
    # Compares the image's patches with good patches from any place: blind to a good patch in the wrong place (a
    # part fitted in the wrong spot), so the score choice offers it only where parts move (not aligned).
    at_any_place: bool = False
    # (fitted parameter, model output) pairs: the parameter has the output's per-image shape (bundle checks).
    shaped_like: tuple[tuple[str, str], ...] = ()
    # (fitted parameter, model output) pairs: the parameter's rows have the output's last dimension (a feature bank).
    rows_like: tuple[tuple[str, str], ...] = ()
    # Its values on synthetic-defect copies of validation images (score choice), each measured with parameters
    # fitted WITHOUT the copy's source image: (validation outputs, copies' outputs, source index per copy) → (M,).
    # None: the parameters fitted on all of them.
    leave_source_out: Callable[[Outputs, Outputs, np.ndarray], np.ndarray] | None = None
    # Its own pixel map, where it is not the error map: (outputs, parameters, side) → (N, side, side), in the
    # term's units, at the inspected size. The heatmaps show it when the term carries the score (Calibration).
    pixel_map: Callable[[Outputs, Parameters, int], np.ndarray] | None = None
    # (name, (outputs, parameters) → array): computed once per batch and shared by `compute` and `pixel_map` when
    # both are wanted (the full nearest-patch search of patch_distance), added to the outputs under that name
    # (with_derived); `compute` uses it when the outputs hold it and does without otherwise.
    derive: tuple[str, Callable[[Outputs, Parameters], np.ndarray]] | None = None

    def __post_init__(self):
        if (self.graph is None) == (self.compute is None):
            raise GanspectionError(f"score term {self.name!r}: give either a graph (a model output) or compute")

    @property
    def model_outputs(self) -> tuple[str, ...]:
        return self.inputs or (self.name,)

    def column(self, outputs: Outputs, parameters: Parameters) -> np.ndarray:
        """(N,) float64 values of the term from raw model outputs and its fitted parameters."""
        if self.compute is None:
            return np.asarray(outputs[self.name], dtype=np.float64).reshape(-1)
        return self.compute(outputs, parameters)

    def with_derived(self, outputs: Outputs, parameters: Parameters) -> Outputs:
        """`outputs` plus what the term derives from them (`derive`), unless they hold it already."""
        if self.derive is None or self.derive[0] in outputs:
            return outputs
        name, function = self.derive
        return {**outputs, name: function(outputs, parameters)}

    def fit_on(self, validation: Outputs, reference: Outputs | None) -> tuple[Parameters, np.ndarray]:
        """(fitted parameters, honest validation column) from the raw outputs of good validation images and,
        when given, of good training images (`reference`)."""
        if self.fit is None:
            return {}, self.column(validation, {})
        return self.fit(validation, reference)


# ------------------------------------------------------------------------------------------ latent_mahalanobis


def fit_code_gaussian(codes) -> tuple[np.ndarray, np.ndarray]:
    """(mean, whitening) of codes (N, d): whitening is the inverse square root of the Ledoit–Wolf covariance."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < MIN_SAMPLES:
        raise GanspectionError(f"the code Gaussian needs at least {MIN_SAMPLES} codes (N, d), got shape {codes.shape}")
    return codes.mean(axis=0), whitening_matrix(codes)


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
    if len(codes) <= MIN_SAMPLES:  # one remaining code has no covariance: fall back to in-sample
        return latent_mahalanobis(codes, *fit_code_gaussian(codes))
    distances = np.empty(len(codes))
    for i in range(len(codes)):
        others = np.delete(codes, i, axis=0)
        distances[i] = latent_mahalanobis(codes[i : i + 1], *fit_code_gaussian(others))[0]
    return distances


def leave_source_out_mahalanobis(validation, copies, sources) -> np.ndarray:
    """latent_mahalanobis of each copy's code against the Gaussian of the validation codes except its source."""
    codes = np.asarray(validation[CODE_OUTPUT], np.float64)
    copy_codes, sources = np.asarray(copies[CODE_OUTPUT], np.float64), np.asarray(sources)
    if len(codes) <= MIN_SAMPLES:  # too few codes to leave one out (like leave_one_out_mahalanobis)
        return latent_mahalanobis(copy_codes, *fit_code_gaussian(codes))
    distances = np.empty(len(copy_codes))
    for source in np.unique(sources):
        gaussian = fit_code_gaussian(np.delete(codes, source, axis=0))
        distances[sources == source] = latent_mahalanobis(copy_codes[sources == source], *gaussian)
    return distances


def _fit_latent_mahalanobis(validation, _reference):
    codes = np.asarray(validation[CODE_OUTPUT], dtype=np.float64)
    mean, whitening = fit_code_gaussian(codes)
    return {"code_mean": mean, "code_whitening": whitening}, leave_one_out_mahalanobis(codes)


def _check_code_gaussian(parameters) -> str | None:
    mean, whitening = parameters["code_mean"], parameters["code_whitening"]
    if not isinstance(mean, list) or not mean or not all_finite_numbers(mean):
        return "'code_mean' must be a non-empty list of finite numbers (term 'latent_mahalanobis')"
    if not is_square_matrix(whitening, len(mean)):
        return (f"'code_whitening' must be a {len(mean)}x{len(mean)} matrix of finite numbers "
                "(term 'latent_mahalanobis')")
    return None


# ------------------------------------------------------------------------------------------ normalized_map_max


def fit_map_gaussian(error_maps) -> tuple[np.ndarray, np.ndarray]:
    """(mean, floored std) per pixel of the smoothed error maps (N, S, S) of good images: the normalized_map_max fit."""
    return _gaussian_of_smoothed(smooth_error_maps(error_maps))


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
    if len(smoothed) <= MIN_SAMPLES:  # one remaining map has no spread: fall back to in-sample
        return _largest_z_scores(smoothed, *_gaussian_of_smoothed(smoothed))
    return np.array([_largest_z_scores(smoothed[i : i + 1], *_gaussian_of_smoothed(np.delete(smoothed, i, axis=0)))[0]
                     for i in range(len(smoothed))])


def _gaussian_of_smoothed(smoothed) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(smoothed, dtype=np.float64)
    if len(maps) < MIN_SAMPLES:
        raise GanspectionError(f"the per-pixel error Gaussian needs at least {MIN_SAMPLES} error maps, got {len(maps)}")
    mean, std = maps.mean(axis=0), maps.std(axis=0, ddof=1)
    floor = max(MAP_STD_FLOOR * float(std.mean()), STD_FLOOR_ABSOLUTE)
    return mean, np.maximum(std, floor)


def _largest_z_scores(smoothed, mean, std) -> np.ndarray:
    return ((smoothed - mean) / std).max(axis=(1, 2))


def _fit_normalized_map_max(validation, reference):
    maps = validation[ERROR_MAP_OUTPUT]
    if reference is None:  # no training maps: the validation maps, each validation value leave-one-out
        mean, std = fit_map_gaussian(maps)
        return {"map_mean": mean, "map_std": std}, leave_one_out_normalized_map_max(maps)
    mean, std = fit_map_gaussian(reference[ERROR_MAP_OUTPUT])
    return {"map_mean": mean, "map_std": std}, normalized_map_max(maps, mean, std)


def _check_map_gaussian(parameters) -> str | None:
    mean, std = parameters["map_mean"], parameters["map_std"]
    for key, matrix in (("map_mean", mean), ("map_std", std)):
        if not isinstance(matrix, list) or not matrix or not is_square_matrix(matrix, len(matrix)):
            return f"'{key}' must be a square matrix of finite numbers (term 'normalized_map_max')"
    if len(mean) != len(std) or min(min(row) for row in std) <= 0:
        return "'map_mean' and 'map_std' must have the same size and 'map_std' must be positive"
    return None


# ------------------------------------------------------------------------------------------ patch_distance


def patch_bank(features, size=PATCH_BANK_SIZE, seed=0, candidates=PATCH_BANK_CANDIDATES) -> np.ndarray:
    """(K ≤ size, F) float32 patch features of good images (N, h, w, F) that cover all of them: greedy k-centre
    (each pick the patch farthest from those already picked, as PatchCore's coreset), on at most `candidates`
    patches drawn at random. Covering rather than sampling keeps the rare good patches
    (a thread's tip, an edge) that a random sample would drop and then flag on every good part."""
    patches = np.asarray(features, np.float32).reshape(-1, np.shape(features)[-1])
    rng = np.random.default_rng(seed)
    if len(patches) > candidates:
        patches = patches[rng.choice(len(patches), candidates, replace=False)]
    if len(patches) <= size:
        return patches
    # |p − c|² = |p|² − 2 p·c + |c|²: one matrix-vector product per pick reads the candidates once (time)
    norms = np.einsum("ij,ij->i", patches, patches)
    picked = [int(rng.integers(len(patches)))]
    farthest = np.empty_like(norms)
    _squared_distances(patches, norms, picked[0], out=farthest)
    distances = np.empty_like(norms)
    for _ in range(size - 1):
        picked.append(int(farthest.argmax()))
        np.minimum(farthest, _squared_distances(patches, norms, picked[-1], out=distances), out=farthest)
    return patches[picked]


def _squared_distances(patches, norms, centre, out) -> np.ndarray:
    np.matmul(patches, patches[centre], out=out)
    out *= -2.0
    out += norms
    out += norms[centre]
    return out


def patch_distance_map(distances, side) -> np.ndarray:
    """(N, side, side) float32: how much farther each patch lies from the bank than the image's median patch
    (`distances`: :func:`nearest_patch_distances`, (N, h, w)), clipped at 0, bilinearly enlarged from the patch
    grid to the inspected size, every patch's value at its centre. Every patch of a good surface sits at some
    distance from the bank; measured from the image's own ordinary level, only what stands out of the image
    shows on its heatmap."""
    above = np.maximum(distances - np.median(distances, axis=(1, 2), keepdims=True), 0.0)
    return np.stack([cv2.resize(grid, (side, side), interpolation=cv2.INTER_LINEAR) for grid in above])


def patch_distance(features, bank, count=PATCH_SCORE_COUNT) -> np.ndarray:
    """(N,) float64: the mean of the `count` largest nearest-neighbour distances over an image's patches (its least
    familiar patches)."""
    return largest_nearest_distances(features, bank, count).mean(axis=1)


def mean_of_largest(distances, count=PATCH_SCORE_COUNT) -> np.ndarray:
    """(N,) float64: the mean of the `count` largest of each image's patch distances (N, h, w)."""
    flat = np.asarray(distances, np.float64).reshape(len(distances), -1)
    return np.partition(flat, flat.shape[1] - count, axis=1)[:, -count:].mean(axis=1)


def _patch_bank_fit(output: str, parameter: str, count_parameter: str):
    """The `fit` of a patch-distance term on the model output `output`, its bank stored as `parameter` (and
    PATCH_SCORE_COUNT as `count_parameter`): a bank of the training images' patches, against which the validation
    images are out of sample; without training images a bank of the validation images, each validation value
    leave-one-out."""

    def fit(validation, reference):
        features = np.asarray(validation[output])
        count = min(PATCH_SCORE_COUNT, int(np.prod(features.shape[1:3])))
        if reference is not None:
            bank = patch_bank(reference[output])
            return {parameter: bank, count_parameter: count}, patch_distance(features, bank, count)
        column = np.array([patch_distance(features[i : i + 1], patch_bank(np.delete(features, i, axis=0)), count)[0]
                           for i in range(len(features))])
        return {parameter: patch_bank(features), count_parameter: count}, column

    return fit


def _patch_bank_check(parameter: str, count_parameter: str, term: str):
    """The `check` of a patch-distance term whose bank is stored as `parameter`, its count as `count_parameter`."""

    def check(parameters) -> str | None:
        bank, count = parameters[parameter], parameters[count_parameter]
        if (not isinstance(bank, list) or not bank or not isinstance(bank[0], list)
                or not all(isinstance(row, list) and len(row) == len(bank[0]) and all_finite_numbers(row)
                           for row in bank)):
            return f"{parameter!r} must be a non-empty matrix of finite numbers (term {term!r})"
        if count is not None and not (all_finite_numbers([count]) and count >= 1 and float(count).is_integer()):
            return f"{count_parameter!r} must be a whole number of patches, at least 1, or absent (term {term!r})"
        return None

    return check


def _stored_count(parameters, count_parameter) -> int:
    """The number of largest patch distances a calibration averages: files without it took the largest alone."""
    count = parameters.get(count_parameter)
    return 1 if count is None else int(count)


def patch_distance_term(name: str, explanation: str, output: str, nearest: str, parameter: str,
                        count_parameter: str) -> Term:
    """A term that compares the image's patches in the model output `output` (B, h, w, F) with a bank of good
    patches from any place (``parameter``), the mean of its ``count_parameter`` largest nearest-neighbour distances;
    its pixel map is every patch's distance (``nearest``, derived once per batch when the map is wanted too; the
    score alone needs the largest distances only, a shorter search)."""

    def compute(outputs, p):
        count = _stored_count(p, count_parameter)
        if nearest in outputs:
            return mean_of_largest(outputs[nearest], count)
        return patch_distance(outputs[output], p[parameter], count)

    return Term(
        name, explanation, inputs=(output,), compute=compute,
        derive=(nearest, lambda outputs, p: nearest_patch_distances(outputs[output], p[parameter])),
        fit=_patch_bank_fit(output, parameter, count_parameter), parameters=(parameter, count_parameter),
        fitted="the bank of good patches and the patch count", rows_like=((parameter, output),),
        check=_patch_bank_check(parameter, count_parameter, name), at_any_place=True,
        pixel_map=lambda outputs, p, side: patch_distance_map(outputs[nearest], side))


# ------------------------------------------------------------------------------------------ the registry

REGISTRY: tuple[Term, ...] = (
    Term("latent", "½‖z‖² of the code z = E(x): its negative log-likelihood under the N(0, I) prior",
         graph=graph("GaussianNLL", CODE_OUTPUT)),
    Term("cycle", "mean (z − E(x̂))² over the code: does the reconstruction x̂ = G(z) encode back to z?",
         graph=graph("MeanGap", CODE_OUTPUT, "cycled_code", squared=True)),
    Term("reconstruction", "mean |x − x̂| over pixels and channels",
         graph=graph("MeanGap", "image", "reconstruction")),
    Term("critic_feature", "mean |f(x, z) − f(x̂, z)| over the critic's features (only the image side differs)",
         graph=graph("MeanGap", "critic_features", "reconstruction_critic_features")),
    Term("critic", "−D(x, z): the critic scores real pairs high, so a high value means unlike the training data",
         graph=graph("NegatedValue", "critic_value"), export_score="critic"),
    Term("map_max", "the maximum of the smoothed per-pixel error map |x − x̂|",
         graph=graph("SpatialMax", "smoothed_error_map")),
    Term("latent_mahalanobis",
         "the squared Mahalanobis distance of the code E(x) from a Gaussian fitted to the codes of the good "
         "validation images",
         inputs=(CODE_OUTPUT,), compute=lambda outputs, p: latent_mahalanobis(outputs[CODE_OUTPUT], p["code_mean"],
                                                                              p["code_whitening"]),
         fit=_fit_latent_mahalanobis, parameters=("code_mean", "code_whitening"), fitted="the code Gaussian",
         check=_check_code_gaussian, float_encoder=True, export_score="latent",
         shaped_like=(("code_mean", CODE_OUTPUT),), leave_source_out=leave_source_out_mahalanobis),
    Term("normalized_map_max",
         "the maximum of the smoothed error map after standardising every pixel by the mean and spread of the good "
         "training images' maps at that pixel",
         inputs=(ERROR_MAP_OUTPUT,), compute=lambda outputs, p: normalized_map_max(outputs[ERROR_MAP_OUTPUT],
                                                                                   p["map_mean"], p["map_std"]),
         fit=_fit_normalized_map_max, parameters=("map_mean", "map_std"), fitted="the per-pixel Gaussian",
         check=_check_map_gaussian, default_weight=1.0, float_encoder=True, pose_dependent=True,
         shaped_like=(("map_mean", ERROR_MAP_OUTPUT),)),
    patch_distance_term(
        "patch_distance", f"the mean distance of the image's {PATCH_SCORE_COUNT} least familiar patches, as the "
        "critic's second stage sees them, from the nearest of the good training images' patches at any place",
        PATCH_OUTPUT, NEAREST_PATCHES, "patch_bank", "patch_score_count"),
    patch_distance_term(
        "fine_patch_distance", "patch_distance in the critic's first stage: the image's 4-pixel patches (stride 2) "
        "against the nearest of the good training images' at any place", FINE_PATCH_OUTPUT, NEAREST_FINE_PATCHES,
        "fine_patch_bank", "fine_patch_score_count"),
)
# `export --score`: one term alone (its export_score name), or "combined" (the calibrated combination).
COMBINED_SCORE = "combined"


def outputs_needed(terms, with_error_map=False, by_name=None) -> list[str]:
    """The model outputs the terms are computed from, in order, without repeats ("code" for latent_mahalanobis,
    "error_map" for normalized_map_max), plus "error_map" for heatmaps when `with_error_map`."""
    by_name = BY_NAME if by_name is None else by_name
    needed = []
    for name in terms:
        for output in by_name[name].model_outputs:
            if output not in needed:
                needed.append(output)
    if with_error_map and ERROR_MAP_OUTPUT not in needed:
        needed.append(ERROR_MAP_OUTPUT)
    return needed


def tables(registry) -> dict:
    """Everything the package reads off a registry, by module constant name (below: of :data:`REGISTRY`)."""
    by_name = {term.name: term for term in registry}
    return dict(
        BY_NAME=by_name,
        TERMS=tuple(by_name),  # the names, in the order of every term matrix and of calibration.json
        DEFAULT_WEIGHTS={term.name: term.default_weight for term in registry},
        PARAMETERS=tuple(name for term in registry for name in term.parameters),  # every fitted calibration field
        SCORES=(*sorted(term.export_score for term in registry if term.export_score), COMBINED_SCORE),
        MODEL_TERMS=tuple(term.name for term in registry if term.graph is not None),  # computed by the term model
        # Everything the term model outputs: its terms, the tensors other terms are computed from, the error map.
        MODEL_OUTPUTS=tuple(outputs_needed(by_name, with_error_map=True, by_name=by_name)),
        # Outputs that need a float encoder on the camera (int8 encoder noise amplified by the fitted whitening or
        # per-pixel spread); the error map of heatmaps is one of them.
        FLOAT_ENCODER_OUTPUTS=frozenset(o for t in registry if t.float_encoder for o in t.model_outputs),
        POSE_DEPENDENT_TERMS=frozenset(term.name for term in registry if term.pose_dependent),
        AT_ANY_PLACE_TERMS=frozenset(term.name for term in registry if term.at_any_place),
    )


_TABLES = tables(REGISTRY)
BY_NAME, TERMS, DEFAULT_WEIGHTS = _TABLES["BY_NAME"], _TABLES["TERMS"], _TABLES["DEFAULT_WEIGHTS"]
PARAMETERS, SCORES = _TABLES["PARAMETERS"], _TABLES["SCORES"]
MODEL_TERMS, MODEL_OUTPUTS = _TABLES["MODEL_TERMS"], _TABLES["MODEL_OUTPUTS"]
FLOAT_ENCODER_OUTPUTS, POSE_DEPENDENT_TERMS = _TABLES["FLOAT_ENCODER_OUTPUTS"], _TABLES["POSE_DEPENDENT_TERMS"]
AT_ANY_PLACE_TERMS = _TABLES["AT_ANY_PLACE_TERMS"]


def term(name) -> Term:
    """The registry entry of `name`; an unknown name is a one-line error listing the known ones."""
    if name not in BY_NAME:
        raise GanspectionError(f"unknown score term {name!r}; choose from {', '.join(TERMS)}")
    return BY_NAME[name]


def export_terms(score) -> tuple[str, ...]:
    """The terms an `export --score` choice ships."""
    if score == COMBINED_SCORE:
        return TERMS
    return tuple(t.name for t in BY_NAME.values() if t.export_score == score)


def all_finite_numbers(vector) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector)


def is_square_matrix(matrix, size) -> bool:
    return (
        isinstance(matrix, list)
        and len(matrix) == size
        and all(isinstance(row, list) and len(row) == size and all_finite_numbers(row) for row in matrix)
    )
