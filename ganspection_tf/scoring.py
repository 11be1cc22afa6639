"""The anomaly score terms of an image, computed in one batched pass of E, G (EMA weights) and D.

For an image x in [-1, 1], z = E(x), x̂ = G(z) (the reconstruction), f(·, z) = the critic's joint features:

* ``latent``          ½‖z‖₂²: the negative log-likelihood of z under the N(0, I) prior, without its constant.
                      Chosen over the distance |‖z‖ − √d| from the shell where N(0, I) codes concentrate after
                      measuring both: the trained encoder's codes sit well inside that shell (‖z‖ ≈ 5.3 for
                      d = 64 on MVTec bottle, 1.4 for d = 8 on the synthetic part) and anomalies lengthen them,
                      i.e. move them TOWARDS the shell, so the shell distance ranked defects as more normal
                      (image AUROC 0.41 on bottle, 0.19 synthetic) where the NLL ranks them right (0.60, 0.81).
* ``cycle``           mean_j (z − E(x̂))_j²: does the reconstruction encode back to the same code?
* ``reconstruction``  mean |x − x̂| over pixels and channels.
* ``critic_feature``  mean |f(x, z) − f(x̂, z)| over the feature units (the reconstruction paired with the same
                      code, so only the image side differs).
* ``critic``          −D(x, z): the critic scores real pairs high, so a low value means "unlike training data".
* ``map_max``         max over pixels of the error map (channel-mean |x − x̂|) smoothed with the Gaussian of
                      ``calibration.anomaly_map`` at model resolution: image-wide means dilute small local defects,
                      the maximum does not.

The term model also outputs ``code`` (z, (B, d)): ``latent_mahalanobis`` is computed from it in numpy with the
code Gaussian of the calibration (``calibration.py``), and the per-pixel ``error_map`` (B, S, S), from which
``normalized_map_max`` (the default score) is computed in numpy with the calibration's per-pixel Gaussian.

Every term grows with abnormality; ``calibration.py`` standardises and combines them. The term model is a
plain functional Keras model (the networks are called as layers; the arithmetic lives in small registered
layers), so it saves with safe_mode and converts to TFLite for the camera.
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ganspection_tf import artifacts, training
from ganspection_tf.calibration import (
    CODE_OUTPUT,
    DEFAULT_MAX_FPR,
    MAX_REFERENCE_IMAGES,
    TERMS,
    Calibration,
    fit_calibration_from_outputs,
    map_sigma,
    outputs_needed,
    weight_vector,
)
from ganspection_tf.data import pipeline
from ganspection_tf.errors import GanspectionError
from ganspection_tf.synthetic_validation import choose_run_score
from ganspection_tf.images import (
    DEFAULT_RESIZE,
    UnreadableImage,
    from_unit_range,
    read_image,
    resize_image,
    to_unit_range,
)

__all__ = [
    "CALIBRATION_FILE",
    "MODEL_OUTPUTS",
    "MODEL_TERMS",
    "TERMS",
    "build_term_model",
    "calibration_outputs",
    "compute_terms",
    "ensure_calibration",
    "reconstruct",
    "reference_terms",
    "score_files",
    "validation_terms",
]

CALIBRATION_FILE = "calibration.json"
MODEL_TERMS = tuple(name for name in outputs_needed(TERMS) if name in TERMS)  # the terms the model outputs
MODEL_OUTPUTS = tuple(outputs_needed(TERMS, with_error_map=True))  # everything compute_terms returns


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


def build_term_model(model) -> keras.Model:
    """Functional model: image (B, S, S, C) float32 in [-1, 1] → {MODEL_TERMS: (B,), "code": (B, d), "error_map"}."""
    encoder, generator, critic = model.scoring_networks()
    image = keras.Input((model.image_size, model.image_size, model.channels), name="image", dtype="float32")
    code = encoder(image)
    reconstruction = generator(code)
    cycled_code = encoder(reconstruction)
    value, features = critic([image, code])
    _, reconstruction_features = critic([reconstruction, code])
    error_map = MeanGap(last_axis_only=True, name="error_map_term")([image, reconstruction])
    smoothed = GaussianSmoothing(map_sigma(model.image_size), name="smoothed_error_map")(error_map)
    # Layer names get a suffix: the critic sub-model is already called "critic" (names must be unique).
    outputs = {
        "latent": GaussianNLL(name="latent_term")(code),
        "cycle": MeanGap(squared=True, name="cycle_term")([code, cycled_code]),
        "reconstruction": MeanGap(name="reconstruction_term")([image, reconstruction]),
        "critic_feature": MeanGap(name="critic_feature_term")([features, reconstruction_features]),
        "critic": NegatedValue(name="critic_term")(value),
        "map_max": SpatialMax(name="map_max_term")(smoothed),
        CODE_OUTPUT: code,
        "error_map": error_map,
    }
    return keras.Model(image, outputs, name="score_terms")


def compute_terms(term_model, images_uint8, batch_size=32) -> dict[str, np.ndarray]:
    """MODEL_OUTPUTS of uint8 images (N, S, S, C), in order, `batch_size` at a time: the model terms (N,),
    "code" (N, d) and "error_map" (N, S, S). ``Calibration.term_matrix`` turns them into the term matrix."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise GanspectionError(f"expected uint8 images of shape (N, S, S, C), got {images.dtype} {images.shape}")
    predict = _predict_function(term_model)
    chunks = [predict(tf.constant(to_unit_range(images[start : start + batch_size])))
              for start in range(0, len(images), batch_size)]
    if not chunks:
        return {name: np.zeros((0, *term_model.output[name].shape[1:]), np.float32) for name in MODEL_OUTPUTS}
    return {name: np.concatenate([chunk[name].numpy() for chunk in chunks]) for name in MODEL_OUTPUTS}


@dataclass
class ScoredImage:
    """One image scored by :func:`score_files`: `error` is set (and the rest None) when it could not be read."""

    path: Path
    score: float | None = None
    terms: dict[str, float] | None = None
    anomalous: bool | None = None
    error_map: np.ndarray | None = None  # (S, S) model resolution
    original_hw: tuple[int, int] | None = None
    original: np.ndarray | None = None  # the decoded image, only with keep_originals=True
    error: UnreadableImage | None = None


def score_files(paths, term_model, calibration, batch_size=32, keep_originals=False, resize=DEFAULT_RESIZE):
    """Yields a :class:`ScoredImage` per path, in order, decoding and scoring `batch_size` files at a time.

    Only one batch of images is in memory at any moment, so memory stays flat however many paths there are.
    Unreadable files are yielded with `error` set rather than raised: the caller decides (the CLI reports
    them and carries on). Images are decoded and resized exactly as for training and evaluation (``resize``: the
    run's mode, ``training.run_resize``).
    """
    _, size, _, channels = term_model.input_shape
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            batch = paths[start : start + batch_size]
            decoded = list(pool.map(lambda path: _decode_or_error(path, channels), batch))
            yield from _score_batch(batch, decoded, term_model, calibration, size, keep_originals, resize)


def _decode_or_error(path, channels):
    try:
        return read_image(path, channels)
    except UnreadableImage as error:
        return error


def _score_batch(batch, decoded, term_model, calibration, size, keep_originals, resize):
    readable = [i for i, item in enumerate(decoded) if not isinstance(item, UnreadableImage)]
    if readable:
        values = compute_terms(term_model, np.stack([resize_image(decoded[i], size, resize) for i in readable]))
        matrix = calibration.term_matrix(values)
        combined = calibration.combine(matrix)
        flagged = calibration.is_anomalous(combined)
    position = {index: k for k, index in enumerate(readable)}
    for i, (path, item) in enumerate(zip(batch, decoded)):
        if isinstance(item, UnreadableImage):
            yield ScoredImage(path=Path(path), error=item)
            continue
        k = position[i]
        yield ScoredImage(
            path=Path(path),
            score=float(combined[k]),
            terms={name: float(matrix[k, j]) for j, name in enumerate(calibration.terms)},
            anomalous=bool(flagged[k]),
            error_map=values["error_map"][k],
            original_hw=item.shape[:2],
            original=item if keep_originals else None,
        )


def reconstruct(model, images_uint8) -> np.ndarray:
    """G(E(x)) with the scoring (EMA) networks, as uint8 images: for pictures, not for scores."""
    encoder, generator, _ = model.scoring_networks()
    reconstruction = generator(encoder(to_unit_range(images_uint8), training=False), training=False)
    return from_unit_range(ops.convert_to_numpy(reconstruction))


def ensure_calibration(run_dir, model=None, log=print, *, term_model=None, method=None, max_fpr=None, weights=None,
                       outputs=None):
    """The run's :class:`Calibration`: ``RUN_DIR/calibration.json`` if it belongs to this model, else a new one.

    A stored file is reused when its config_hash and model step match the run's model and it agrees with any
    `method` / `max_fpr` / `weights` given (None = accept what is stored, or the default for a new fit).
    Otherwise the terms of the good images in ``splits.json["validation"]`` (held out of training) are
    computed and fitted, the per-pixel Gaussian of ``normalized_map_max`` on the error maps of (up to
    MAX_REFERENCE_IMAGES) good training images, and the file is written atomically. Without `weights` (and with
    the weighted method) the score is chosen first on the validation images and synthetic-defect copies of them
    (``synthetic_validation.py``, which writes ``score_choice.json``). This is the only place a
    calibration is made, and it reads no image but those good train/validation images: never a test image.
    `outputs` = :func:`calibration_outputs` already computed by the caller, to spare reading them twice.
    """
    run_dir = Path(run_dir)
    model = model if model is not None else training.load_model(run_dir)
    config_hash = training.read_run_config(run_dir).get("config_hash", "")
    step = model_step(model)
    path = run_dir / CALIBRATION_FILE
    stored = _stored_calibration(path, log)
    if stored is not None and _still_valid(stored, config_hash, step, method, max_fpr, weights):
        return stored
    term_model = term_model if term_model is not None else build_term_model(model)
    if outputs is None:
        outputs = calibration_outputs(run_dir, term_model, log)
    validation, reference = outputs
    if weights is None and method in (None, "weighted"):  # no α given: choose the score from good images only
        weights = choose_run_score(run_dir, term_model, validation_paths(run_dir), validation, reference,
                                   training.run_resize(run_dir), log).weights
    calibration = fit_calibration_from_outputs(
        validation, TERMS, reference_outputs=reference, weights=weights, method=method or "weighted",
        max_fpr=DEFAULT_MAX_FPR if max_fpr is None else max_fpr, config_hash=config_hash, model_step=step,
    )
    artifacts.write_json(path, calibration.to_dict())
    log(
        f"calibrated on {calibration.n_validation} good validation images ({calibration.method}, max FPR "
        f"{calibration.max_fpr:g}): threshold {calibration.threshold:.4g}; written to {path}"
    )
    return calibration


def calibration_outputs(run_dir, term_model, log=print):
    """(validation outputs, training reference outputs or None): everything a calibration is fitted from."""
    return validation_terms(run_dir, term_model, log), reference_terms(run_dir, term_model, log)


def validation_terms(run_dir, term_model, log=print) -> dict[str, np.ndarray]:
    """Raw model outputs (compute_terms) of the run's held-out good validation images (model size and channels)."""
    paths = validation_paths(run_dir)
    _, size, _, channels = term_model.input_shape
    images, skipped = pipeline.load_images(paths, size, channels, skip_unreadable=True,
                                           resize=training.run_resize(run_dir))
    if skipped:
        listed = "; ".join(f"{path} ({reason})" for path, reason in skipped)
        log(f"warning: calibration skipped {len(skipped)} unreadable validation image(s): {listed}")
    return compute_terms(term_model, images)


def reference_terms(run_dir, term_model, log=print) -> dict[str, np.ndarray] | None:
    """Raw model outputs of up to MAX_REFERENCE_IMAGES good TRAINING images (evenly spaced over the split), for
    the per-pixel Gaussian of normalized_map_max; None (with a warning) when none of them is there any more."""
    splits = artifacts.read_json(Path(run_dir) / training.SPLITS_FILE, what="split list")
    folder = _training_folder(splits)
    listed = splits.get("train") or []
    if len(listed) > MAX_REFERENCE_IMAGES:
        listed = [listed[i] for i in np.linspace(0, len(listed) - 1, MAX_REFERENCE_IMAGES).astype(int)]
    paths = [folder / Path(p).name for p in listed if (folder / Path(p).name).is_file()]
    if len(paths) < 2:
        log(f"warning: the training images are not in {folder} any more; normalized_map_max falls back to "
            "per-pixel statistics of the validation images")
        return None
    _, size, _, channels = term_model.input_shape
    images, _ = pipeline.load_images(paths, size, channels, skip_unreadable=True, resize=training.run_resize(run_dir))
    return compute_terms(term_model, images)


def validation_paths(run_dir) -> list[Path]:
    """The validation images of ``splits.json``, found under the recorded (absolute) category root.

    splits.json lists paths as the training command saw them, relative to ITS working folder, while "root"
    is absolute; validation images are always files directly in the training folder, so they are looked up
    there by name, independent of where this command runs.
    """
    splits_path = Path(run_dir) / training.SPLITS_FILE
    splits = artifacts.read_json(splits_path, what="split list")
    listed = splits.get("validation") or []
    if not listed:
        raise GanspectionError(
            f"{splits_path}: no good validation images were held out of training (--val-fraction 0); calibration "
            "needs good images the model never saw: retrain with e.g. --val-fraction 0.15"
        )
    folder = _training_folder(splits)
    return [_locate(Path(p), folder, splits_path) for p in listed]


def _training_folder(splits) -> Path:
    root = Path(splits["root"])
    return root / "train" / "good" if splits.get("is_mvtec") else root


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


def _stored_calibration(path, log):
    if not path.is_file():
        return None
    try:
        return Calibration.from_dict(artifacts.read_json(path, what="calibration"), source=str(path))
    except GanspectionError as error:
        log(f"warning: {error}; recomputing it")
        return None


def _still_valid(stored, config_hash, step, method, max_fpr, weights):
    return (
        stored.config_hash == config_hash
        and stored.model_step == step
        and stored.terms == list(TERMS)
        and stored.validation_scores is not None  # a file from before they were kept: refit, so export ships them
        and (method is None or stored.method == method)
        and (max_fpr is None or stored.max_fpr == max_fpr)
        and (weights is None or stored.weights == weight_vector(weights))
    )


def _locate(listed: Path, folder: Path, splits_path: Path) -> Path:
    if listed.is_absolute() and listed.is_file():
        return listed
    candidate = folder / listed.name
    if candidate.is_file():
        return candidate
    raise GanspectionError(
        f"{splits_path}: validation image {listed} is not in {folder} any more; restore the training images "
        "there (calibration must use the images held out of training)"
    )
