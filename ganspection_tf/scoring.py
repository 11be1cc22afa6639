"""The term model: the raw model outputs of an image in one batched pass of E, G (EMA weights) and D, and the
run's calibration fitted from them.

The term model (:func:`build_term_model`) outputs ``terms.MODEL_OUTPUTS``: the terms that are model outputs as
they are (``terms.MODEL_TERMS``, each built from its registry ``Graph``), the code z = E(x) (B, d) and the
per-pixel error map (B, S, S); what each term means and how the derived ones are computed from these outputs is
the registry in ``terms.py``. This module gives the networks' named tensors (:func:`term_model_tensors`) and the
layers. It is a plain functional Keras model (the networks are called as layers; the arithmetic lives in small
registered layers), so it saves with safe_mode and converts to TFLite for the camera.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ganspection_tf import tiles
from ganspection_tf.calibration import (
    DEFAULT_MAX_FPR,
    MAX_REFERENCE_IMAGES,
    fit_calibration,
    fitted_columns,
    weight_vector,
)
from ganspection_tf.data import pipeline
from ganspection_tf.errors import GanspectionError
from ganspection_tf.heatmaps import map_sigma
from ganspection_tf.synthetic_validation import choose_run_score
from ganspection_tf.images import (
    DEFAULT_RESIZE,
    UnreadableImage,
    from_unit_range,
    read_image,
    to_unit_range,
)
from ganspection_tf.run import as_run
from ganspection_tf.scorer import ScoreResult, Scorer
from ganspection_tf.models.networks import with_patch_features
from ganspection_tf.terms import (
    BY_NAME,
    CODE_OUTPUT,
    ERROR_MAP_OUTPUT,
    FINE_PATCH_OUTPUT,
    MODEL_OUTPUTS,
    OUTPUTS_VERSION,
    PATCH_OUTPUT,
    TERMS,
    outputs_needed,
)

__all__ = [
    "build_term_model",
    "calibration_outputs",
    "compute_terms",
    "KerasScorer",
    "ensure_calibration",
    "reconstruct",
    "reference_terms",
    "score_files",
    "term_model_for",
    "validation_terms",
]


@keras.saving.register_keras_serializable(package="ganspection_tf")
class MeanGap(layers.Layer):
    """mean(|a − b|) or mean((a − b)²) over all non-batch axes, or over the last axis only (per-pixel maps)."""

    def __init__(self, squared=False, last_axis_only=False, **kwargs):
        super().__init__(**kwargs)
        self.squared, self.last_axis_only = squared, last_axis_only

    def call(self, inputs):
        a, b = inputs
        gap = ops.square(a - b) if self.squared else ops.abs(a - b)
        axes = -1 if self.last_axis_only else list(range(1, len(a.shape)))
        return ops.mean(gap, axis=axes)

    def get_config(self):
        return {**super().get_config(), "squared": self.squared, "last_axis_only": self.last_axis_only}


@keras.saving.register_keras_serializable(package="ganspection_tf")
class GaussianNLL(layers.Layer):
    """½‖z‖₂²: the N(0, I) negative log-likelihood of codes z up to the constant (d/2)·log 2π."""

    def call(self, z):
        return 0.5 * ops.sum(ops.square(z), axis=-1)


@keras.saving.register_keras_serializable(package="ganspection_tf")
class NegatedValue(layers.Layer):
    """(B, 1) critic values → (B,) negated."""

    def call(self, value):
        return -value[:, 0]


@keras.saving.register_keras_serializable(package="ganspection_tf")
class GaussianSmoothing(layers.Layer):
    """(B, S, S) maps → the same maps smoothed with a fixed Gaussian, like cv2.GaussianBlur(BORDER_REFLECT).

    The kernel is cv2's for float images (size round(8σ + 1) | 1, normalised), applied as two separable
    convolutions after symmetric padding (cv2's BORDER_REFLECT repeats the edge pixel, as "symmetric" does).
    The kernel is a constant, not a weight: nothing to train, and sigma alone in the config rebuilds it.
    """

    def __init__(self, sigma=1.0, **kwargs):
        super().__init__(**kwargs)
        self.sigma = float(sigma)

    def gaussian_kernel(self):
        size = round(self.sigma * 8 + 1) | 1
        offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
        weights = np.exp(-np.square(offsets) / (2 * self.sigma**2))
        return (weights / weights.sum()).astype(np.float32)

    def call(self, maps):
        if self.sigma <= 0:
            return maps
        kernel = self.gaussian_kernel()
        radius = len(kernel) // 2
        x = ops.expand_dims(maps, -1)
        x = ops.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="symmetric")
        x = ops.conv(x, ops.convert_to_tensor(kernel.reshape(-1, 1, 1, 1)), padding="valid")
        x = ops.conv(x, ops.convert_to_tensor(kernel.reshape(1, -1, 1, 1)), padding="valid")
        return x[..., 0]

    def get_config(self):
        return {**super().get_config(), "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="ganspection_tf")
class SpatialMax(layers.Layer):
    """(B, S, S) → (B,): the maximum over the pixels."""

    def call(self, maps):
        return ops.max(maps, axis=(1, 2))


@keras.saving.register_keras_serializable(package="ganspection_tf")
class Tiles(layers.Layer):
    """(B, I, I, C) images → (B·T, S, S, C): each image cut into its grid of network-sized tiles (``tiles.cut``)."""

    def __init__(self, per_side=1, **kwargs):
        super().__init__(**kwargs)
        self.per_side = int(per_side)

    def call(self, images):
        return tiles.cut(images, self.per_side, ops)

    def get_config(self):
        return {**super().get_config(), "per_side": self.per_side}


@keras.saving.register_keras_serializable(package="ganspection_tf")
class FromTiles(Tiles):
    """Per-tile outputs → per-image outputs (``tiles.merge``: maps stitched, scalars their maximum, codes side by
    side)."""

    def call(self, values):
        return tiles.merge(values, self.per_side, ops)


# Term-model tensors of the whole image when it is inspected by tiles (the others are per tile, merged at the end).
PER_IMAGE_TENSORS = frozenset({ERROR_MAP_OUTPUT, "smoothed_error_map", FINE_PATCH_OUTPUT})


def build_term_model(model, subpixel=False) -> keras.Model:
    """Functional model: image (B, I, I, C) float32 in [-1, 1] → {MODEL_TERMS: (B,), "code": (B, T·d),
    "error_map": (B, I, I)} (``terms.MODEL_OUTPUTS``), I the model's inspected size, cut into T tiles of its
    image size (``tiles.py``; one tile, the image itself, by default). Each model-output term is its registry
    :class:`~ganspection_tf.terms.Graph` applied to the named tensors of :func:`term_model_tensors`; any other
    output is one of those tensors; what was computed per tile is merged per image (``tiles.merge``).
    `subpixel`: the generator in its LiteRT form (``BiGAN.scoring_networks``), for the export."""
    grid = tiles.tile_grid(model.image_size, model.inspected_size)
    image = keras.Input((grid.image, grid.image, model.channels), name="image", dtype="float32")
    tensors = term_model_tensors(model, image, grid, subpixel)
    outputs = {}
    for name in MODEL_OUTPUTS:
        graph = BY_NAME[name].graph if name in BY_NAME else None
        outputs[name] = _tensor(tensors, name, name) if graph is None else _apply(graph, tensors, name)
        per_tile = not PER_IMAGE_TENSORS.issuperset(graph.inputs if graph is not None else (name,))
        if grid.count > 1 and per_tile:
            outputs[name] = FromTiles(grid.per_side, name=f"{name}_of_image")(outputs[name])
    return keras.Model(image, outputs, name="score_terms")


def term_model_tensors(model, image, grid, subpixel=False) -> dict:
    """The named tensors a term's graph (``terms.Graph``) can be computed from, for the Keras input `image` cut
    into the tiles of `grid` (``tiles.TileGrid``): per tile, except the error maps (stitched per image) and the
    fine patch features (the critic's first stage on the whole image: no seams)."""
    encoder, generator, critic = model.scoring_networks(subpixel)
    critic = with_patch_features(critic, grid.image)
    tile = image if grid.count == 1 else Tiles(grid.per_side, name="tiles")(image)
    code = encoder(tile)
    reconstruction = generator(code)
    cycled_code = encoder(reconstruction)
    critic_value, critic_features, patches, fine_patches = critic([tile, code, image])
    # (the whole image again only because the view takes it: these fine patches are not used)
    _, reconstruction_critic_features, *_ = critic([reconstruction, code, image])
    error_map = MeanGap(last_axis_only=True, name="error_map_term")([tile, reconstruction])
    if grid.count > 1:
        error_map = FromTiles(grid.per_side, name="error_map_of_image")(error_map)
    smoothed = GaussianSmoothing(map_sigma(grid.image), name="smoothed_error_map")(error_map)
    return {"image": tile, CODE_OUTPUT: code, "reconstruction": reconstruction, "cycled_code": cycled_code,
            "critic_value": critic_value, "critic_features": critic_features,
            "reconstruction_critic_features": reconstruction_critic_features, ERROR_MAP_OUTPUT: error_map,
            "smoothed_error_map": smoothed, FINE_PATCH_OUTPUT: fine_patches, PATCH_OUTPUT: patches}


def _apply(graph, tensors, term):
    """The term's layer (registered by this module under its class name) on its input tensors."""
    layer_class = keras.saving.get_registered_object(f"ganspection_tf>{graph.layer}")
    if layer_class is None:
        raise GanspectionError(f"score term {term!r}: no layer {graph.layer!r} registered for the term model")
    inputs = [_tensor(tensors, name, term) for name in graph.inputs]
    # Layer names get a suffix: the critic sub-model is already called "critic" (names must be unique).
    return layer_class(name=f"{term}_term", **dict(graph.options))(inputs[0] if len(inputs) == 1 else inputs)


def _tensor(tensors, name, term):
    if name not in tensors:
        raise GanspectionError(f"score term {term!r} needs the term-model tensor {name!r}; it has {sorted(tensors)}")
    return tensors[name]


def compute_terms(term_model, images_uint8, batch_size=32) -> dict[str, np.ndarray]:
    """The term model's outputs (MODEL_OUTPUTS, or those of a :func:`term_model_for` cut) of uint8 images
    (N, S, S, C), in order, `batch_size` at a time: the model terms (N,), "code" (N, d) and "error_map" (N, S, S).
    ``Calibration.term_matrix`` turns them into the term matrix."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise GanspectionError(f"expected uint8 images of shape (N, S, S, C), got {images.dtype} {images.shape}")
    predict = _predict_function(term_model)
    names = list(term_model.output)
    chunks = [predict(tf.constant(to_unit_range(images[start : start + batch_size])))
              for start in range(0, len(images), batch_size)]
    if not chunks:
        return {name: np.zeros((0, *term_model.output[name].shape[1:]), np.float32) for name in names}
    return {name: np.concatenate([chunk[name].numpy() for chunk in chunks]) for name in names}


def term_model_for(term_model, terms, with_error_map=False) -> keras.Model:
    """The part of the term model that the outputs `terms` need (+ the error map) use: only their layers (e.g.
    no critic pass for normalized_map_max). The scorer an edge bundle holds (``convert.build_scorer``), in Keras."""
    wanted = outputs_needed(terms, with_error_map)
    all_outputs = term_model.output
    missing = [name for name in wanted if name not in all_outputs]
    if missing:
        raise GanspectionError(f"the term model has no outputs {missing}; it provides {sorted(all_outputs)}")
    # A functional model built from the term model's tensors keeps only the layers these outputs depend on.
    return keras.Model(term_model.inputs, {name: all_outputs[name] for name in wanted}, name="score_terms")


ScoredImage = ScoreResult  # the workstation's name for the one result type (``scorer.py``)


class KerasScorer(Scorer):
    """The workstation implementation of the scorer contract (``scorer.Scorer``): the Keras term model."""

    def __init__(self, term_model, calibration, resize=DEFAULT_RESIZE, batch_size=32, exposure_level=0.0):
        self.term_model, self.calibration, self.resize, self.batch_size = term_model, calibration, resize, batch_size
        self.exposure_level = exposure_level
        _, self.image_size, _, self.channels = term_model.input_shape
        self.threshold = float(calibration.threshold)
        self.keeps_error_map = True

    @classmethod
    def for_run(cls, run, term_model, calibration, batch_size=32) -> KerasScorer:
        """The scorer of a run's model: its preprocessing (resize mode, exposure level) read from the run, so no
        caller can leave a setting out."""
        return cls(term_model, calibration, run.resize, batch_size, run.exposure_level)

    def load_images(self, paths, skip_unreadable=True):
        """(uint8 (N, S, S, C) model inputs, skipped (path, reason) pairs) of image files, decoded as this
        scorer preprocesses a frame (``pipeline.load_run_images`` with its size, channels, resize and level)."""
        return pipeline.load_run_images(self, paths, self.image_size, self.channels, skip_unreadable)

    def forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """All MODEL_OUTPUTS of a uint8 (N, S, S, C) batch (:func:`compute_terms`)."""
        return compute_terms(self.term_model, batch, self.batch_size)


def score_files(paths, scorer, keep_originals=False):
    """Yields a :class:`~ganspection_tf.scorer.ScoreResult` per path, in order, decoding and scoring
    ``scorer.batch_size`` files at a time through `scorer` (a :class:`KerasScorer`, ``KerasScorer.for_run``).

    Only one batch of images is in memory at any moment, so memory stays flat however many paths there are.
    Unreadable files are yielded with `error` set rather than raised: the caller decides (the CLI reports
    them and carries on). Images are decoded, resized and levelled exactly as for training and evaluation
    (the scorer's preprocessing).
    """
    batch_size = scorer.batch_size
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            decoded = list(pool.map(lambda path: _decode_or_error(path, scorer.channels), batch))
            yield from _score_batch(batch, decoded, scorer, keep_originals)


def _decode_or_error(path, channels):
    try:
        return read_image(path, channels)
    except UnreadableImage as error:
        return error


def _score_batch(batch, decoded, scorer, keep_originals):
    readable = [item for item in decoded if not isinstance(item, UnreadableImage)]
    scored = iter(scorer.score_batch(readable) if readable else [])
    for path, item in zip(batch, decoded):
        if isinstance(item, UnreadableImage):
            yield ScoreResult(path=Path(path), error=item)
            continue
        result = next(scored)
        result.path, result.original_hw = Path(path), item.shape[:2]
        result.original = item if keep_originals else None
        yield result


def reconstruct(model, images_uint8) -> np.ndarray:
    """G(E(x)) with the scoring (EMA) networks, as uint8 images: for pictures, not for scores. Images larger
    than the model's (inspected by tiles) are reconstructed tile by tile and stitched."""
    images = np.asarray(images_uint8)
    per_side = tiles.tile_grid(model.image_size, images.shape[1], "image size").per_side
    encoder, generator, _ = model.scoring_networks()
    tile_inputs = to_unit_range(tiles.cut(images, per_side))
    reconstruction = generator(encoder(tile_inputs, training=False), training=False)
    return tiles.stitch(from_unit_range(ops.convert_to_numpy(reconstruction)), per_side)


def ensure_calibration(run, model=None, log=print, *, term_model=None, method=None, max_fpr=None, weights=None,
                       outputs=None):
    """The run's :class:`Calibration`: its ``calibration.json`` if that belongs to this model, else a new one.

    `run` is a :class:`~ganspection_tf.run.RunFolder` or its path. A stored file is reused when its config_hash
    and model step match the run's model and it agrees with any `method` / `max_fpr` / `weights` given (None =
    accept what is stored, or the default for a new fit). Otherwise the terms of the good images in
    ``splits.json["validation"]`` (held out of training) are computed and fitted, each term's parameters on
    them or (normalized_map_max's per-pixel Gaussian) on the error maps of up to MAX_REFERENCE_IMAGES good
    training images, and the file is written atomically. Without `weights` (and with the weighted method) the
    score is chosen first on the validation images and synthetic-defect copies of them
    (``synthetic_validation.py``, which writes ``score_choice.json``). This is the only place a calibration is
    made, and it reads no image but those good train/validation images: never a test image. `outputs` =
    :func:`calibration_outputs` already computed by the caller, to spare reading them twice.
    """
    run = as_run(run)
    model = model if model is not None else run.load_model()
    config_hash = run.config_hash
    step = model_step(model)
    stored = run.read_calibration(log)
    tiled = tiles.tile_grid(model.image_size, model.inspected_size).count > 1
    if stored is not None and _still_valid(stored, config_hash, step, method, max_fpr, weights, tiled):
        return stored
    if stored is not None and weights is None and _same_model(stored, config_hash, step):
        # Only the file's format (a release before validation_scores), the outputs its parameters were fitted on
        # or the asked method / max FPR changed: the run keeps the score (terms and weights) it was calibrated
        # with instead of choosing anew.
        if _outputs_changed(stored, tiled):
            log(f"{run.calibration_path} was fitted on the fine patch features of an earlier release (tile by "
                "tile); fitting it again on the whole image's, with the same score")
        weights = dict(zip(stored.terms, stored.weights))
        method = method or stored.method
        max_fpr = stored.max_fpr if max_fpr is None else max_fpr
    term_model = term_model if term_model is not None else build_term_model(model)
    if outputs is None:
        outputs = calibration_outputs(run, term_model, log)
    validation, reference = outputs
    parameters, matrix = columns = fitted_columns(validation, TERMS, reference)  # fitted once: choice and calibration
    if weights is None and method in (None, "weighted"):  # no α given: choose the score from good images only
        weights = choose_run_score(run, term_model, validation, reference, log, columns).weights
    calibration = fit_calibration(
        matrix, TERMS, **parameters, weights=weights, method=method or "weighted",
        max_fpr=DEFAULT_MAX_FPR if max_fpr is None else max_fpr, config_hash=config_hash, model_step=step,
    )
    run.write_calibration(calibration)
    log(
        f"calibrated on {calibration.n_validation} good validation images ({calibration.method}, max FPR "
        f"{calibration.max_fpr:g}): threshold {calibration.threshold:.4g}; written to {run.calibration_path}"
    )
    return calibration


def calibration_outputs(run, term_model, log=print):
    """(validation outputs, training reference outputs or None): everything a calibration is fitted from."""
    return validation_terms(run, term_model, log), reference_terms(run, term_model, log)


def validation_terms(run, term_model, log=print) -> dict[str, np.ndarray]:
    """Raw model outputs (compute_terms) of the run's held-out good validation images (model size and channels)."""
    run = as_run(run)
    paths = run.validation_images()
    _, size, _, channels = term_model.input_shape
    images, skipped = pipeline.load_run_images(run, paths, size, channels)
    if skipped:
        listed = "; ".join(f"{path} ({reason})" for path, reason in skipped)
        log(f"warning: calibration skipped {len(skipped)} unreadable validation image(s): {listed}")
    return compute_terms(term_model, images)


def reference_terms(run, term_model, log=print) -> dict[str, np.ndarray] | None:
    """Raw model outputs of up to MAX_REFERENCE_IMAGES good TRAINING images (evenly spaced over the split), with
    their re-exposed copies when the run trained with the exposure augmentation (``pipeline.with_trained_exposures``),
    for the per-pixel Gaussian of normalized_map_max and the patch bank; None (with a warning) when none of them is
    there any more."""
    run = as_run(run)
    paths = run.training_images(at_most=MAX_REFERENCE_IMAGES)
    if len(paths) < 2:
        log(f"warning: the training images are not in {run.where_images_are()} any more; normalized_map_max "
            "falls back to per-pixel statistics of the validation images")
        return None
    _, size, _, channels = term_model.input_shape
    images, _ = pipeline.load_run_images(run, paths, size, channels)
    augment = pipeline.Augment.from_flags(run.read_train_config().augment)
    return compute_terms(term_model, pipeline.with_trained_exposures(images, augment))


def model_step(model) -> int | None:
    try:
        return int(model.step.numpy())
    except (AttributeError, TypeError, ValueError):
        return None  # a model without optimizers (never compiled): nothing to compare


# --- helpers ---------------------------------------------------------------------------------------------

# One traced function per term model: retracing for every batch (or every call) would cost seconds each.
_PREDICT_FUNCTIONS: weakref.WeakKeyDictionary[keras.Model, tf.types.experimental.GenericFunction] = (
    weakref.WeakKeyDictionary()
)


def _predict_function(term_model):
    if term_model not in _PREDICT_FUNCTIONS:
        spec = tf.TensorSpec([None, *term_model.input_shape[1:]], tf.float32)
        model_ref = weakref.ref(term_model)  # a strong reference in the value would keep the key alive forever
        _PREDICT_FUNCTIONS[term_model] = tf.function(
            lambda images: model_ref()(images, training=False), input_signature=[spec]
        )
    return _PREDICT_FUNCTIONS[term_model]


def _same_model(stored, config_hash, step):
    return stored.config_hash == config_hash and stored.model_step == step and stored.terms == list(TERMS)


def _outputs_changed(stored, tiled):
    """Fitted on model outputs that this release computes otherwise: only those of runs inspected by tiles
    changed (OUTPUTS_VERSION 2), so the files of other runs stay as they are."""
    return tiled and stored.outputs_version != OUTPUTS_VERSION


def _still_valid(stored, config_hash, step, method, max_fpr, weights, tiled):
    return (
        _same_model(stored, config_hash, step)
        and not _outputs_changed(stored, tiled)
        and stored.validation_scores is not None  # a file from before they were kept: refit, so export ships them
        and (method is None or stored.method == method)
        and (max_fpr is None or stored.max_fpr == max_fpr)
        and (weights is None or stored.weights == weight_vector(weights))
    )
