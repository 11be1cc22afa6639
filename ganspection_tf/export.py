"""`ganspection-tf export --tflite`: a trained run → an edge bundle the camera scores with LiteRT alone.

Steps (``export_bundle``):

1. **Scorer.** A functional Keras model, uint8 image (1, S, S, C) → ``x / 127.5 − 1`` → the score terms the
   chosen score needs (+ the per-pixel error map for ``combined``). It is cut out of
   ``scoring.build_term_model`` as a sub-graph, so ``latent`` (latent_mahalanobis: the model outputs the code
   E(x)) carries the encoder only, ``critic`` the encoder and critic, and ``combined`` the networks its non-zero
   terms need (default normalized_map_max: encoder and generator, the error map out). The terms are made from the outputs
   and combined with the run's :class:`~ganspection_tf.calibration.Calibration` in numpy on the camera
   (``edge.py``, ``Calibration.term_matrix``), never in the graph.
2. **Conversion** with ``tf.lite.TFLiteConverter.from_keras_model`` (never a bare ``tf.Module``: it converts
   Keras 3 models weightless; :func:`check_weights_present` refuses such a file). ``int8`` is calibrated on
   ≥ 100 good images and keeps a few small "float islands" (see :func:`float_island_layers`).
3. **Bundle** ``model.tflite`` + ``metadata.json`` (+ ``parity.json``), written into a hidden staging folder
   beside ``--out`` and renamed into place only after the parity gate passed: never a half-written bundle.
4. **Parity gate.** The evaluation images (the test split, else the validation split) are scored by the Keras
   term model (the workstation's scores) and by the staged bundle through ``edge.EdgeScorer`` (the camera's
   code path, preprocessing included); the export fails when the image AUROC drops by more than 0.01.

Why float islands in int8: full-integer quantisation clips every tensor at the range it saw on the
representative (good) images. For the score terms — scalars per image — that means every anomaly beyond the
good range gets the same capped value (measured: −D(x, z) of four far-off images all came out 0.0, the maximum
of the good images). The score arithmetic, the layers that produce the networks' outputs (code, image, critic
value and features) and the layer norms therefore stay float; every other convolution and dense layer is int8.
Measured on MVTec bottle (64 px, width 32, step 750): float islands ρ 0.997 vs Keras, 3.0 ms, 8.3 MB; int8
everywhere but the score arithmetic and the critic value ρ 0.996, 4.3 ms (int8 layer norms are slow), 6.0 MB.
(Those figures predate the map_max + latent_mahalanobis default.) When the scorer outputs the code (the term
latent_mahalanobis) or the error map (normalized_map_max, the default, and heatmaps) the WHOLE encoder stays
float: the whitening divides by the code's smallest validation spreads, and normalized_map_max divides the error
map by its smallest per-pixel spreads, so both amplify int8 noise of the code. Measured on the tiny synthetic
test run (tests/edge_support.py) with an int8 encoder against a float one: max |Δ latent_mahalanobis| 7.5 vs
1.8, image AUROC drop 0.013 (fails the 0.01 gate) vs 0.003; with normalized_map_max Spearman ρ 0.950 (below the
0.98 the tests ask) vs passing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import ganspection_tf
from ganspection_tf import artifacts, console, edge, ownership, scoring, training
from ganspection_tf.bundle_metadata import BundleMetadata, Preprocessing
from ganspection_tf.calibration import (
    CODE_OUTPUT,
    ERROR_MAP_OUTPUT,
    TERMS,
    Calibration,
    fit_calibration_from_outputs,
    outputs_needed,
)
from ganspection_tf.data import mvtec, pipeline
from ganspection_tf.errors import GanspectionError
from ganspection_tf.images import DEFAULT_RESIZE, list_images

# --score latent ships latent_mahalanobis, not the N(0, I) NLL "latent": image AUROC on MVTec bottle (64 px)
# 0.91 / 0.89 at steps 500 / 750 against 0.60 for the NLL.
SCORE_TERMS = {"latent": ("latent_mahalanobis",), "critic": ("critic",), "combined": TERMS}
MIN_REPRESENTATIVE = 100  # int8 activation ranges from fewer good images are too narrow (and too lucky)
MAX_REPRESENTATIVE = 300  # calibration time grows linearly; ranges stop moving well before this
AUROC_TOLERANCE = 0.01
# Lower bound on the bytes a converted model must hold per weight; a weightless conversion is far below it.
BYTES_PER_WEIGHT = {"none": 4, "float16": 2, "dynamic": 1, "int8": 1}
WEIGHT_BYTES_SLACK = 0.9
RESCALE_LAYER = "to_unit_range"
LATENCY_THREADS, LATENCY_WARMUP, LATENCY_RUNS = 1, 3, 10
SLOW_FACTOR = 2.0  # --quantize dynamic warns when it is this many times slower than float32


def export_bundle(run_dir, out, quantize="int8", score="combined", calibration_dir=None, force=False, log=print,
                  overwrite=False):
    """Export `run_dir` to the bundle folder `out`; returns the parity report (also in ``out/parity.json``).

    `out` may be new, empty or an earlier bundle (replaced); a folder holding anything else is refused unless
    `overwrite`, which writes the bundle's files beside the others and never touches those.
    """
    run_dir, out = Path(run_dir), Path(out)
    _check_choice("--quantize", quantize, edge.QUANTIZATIONS)
    _check_choice("--score", score, edge.SCORES)
    ownership.refuse_foreign(out, "bundle", overwrite)
    model = training.load_model(run_dir)
    term_model = scoring.build_term_model(model)
    calibration = score_calibration(run_dir, model, term_model, score, log)
    scorer = build_scorer(term_model, calibration.terms, with_error_map=score == "combined")

    representative = None
    if quantize == "int8":
        representative = representative_images(run_dir, model.image_size, model.channels, calibration_dir, log,
                                               resize=training.run_resize(run_dir))
    log(f"converting the {score} scorer ({scorer.count_params():,} weights) to TFLite ({quantize}) …")
    tflite_model, float_layers = convert(scorer, quantize, representative)
    check_weights_present(tflite_model, scorer.count_params(), quantize)

    metadata = bundle_metadata(run_dir, model, scorer, calibration, score, quantize, tflite_model,
                               int8_float_layers=float_layers,
                               representative_images=0 if representative is None else len(representative))
    with _staging_folder(out) as staging:
        artifacts.write_bytes(staging / edge.MODEL_FILE, tflite_model)
        artifacts.write_json(staging / edge.METADATA_FILE, metadata.to_dict())
        report = parity_check(staging, run_dir, term_model, calibration)
        report.update(quantization=quantize, score=score, tflite_bytes=len(tflite_model),
                      latency_ms=model_latency_ms(tflite_model))
        log(describe_parity(report))
        if quantize == "dynamic":
            _warn_if_slow(report, scorer, log)
        _apply_gate(report, out, quantize, force, log)
        artifacts.write_json(staging / edge.PARITY_FILE, report)
        ownership.write_marker(staging, "bundle")
        _publish(staging, out)
    log(f"edge bundle written to {out} ({len(tflite_model) / 1024:.0f} KiB model)")
    return report


# ------------------------------------------------------------------------------------------------ scorer


def build_scorer(term_model: keras.Model, terms, with_error_map=False) -> keras.Model:
    """uint8 (B, S, S, C) → the outputs `terms` need ({term: (B,)}, "code" (B, d)) (+ "error_map" (B, S, S)),
    only the layers those outputs need."""
    wanted = outputs_needed(terms, with_error_map)
    all_outputs = term_model.output
    missing = [name for name in wanted if name not in all_outputs]
    if missing:
        raise GanspectionError(f"the term model has no outputs {missing}; it provides {sorted(all_outputs)}")
    # A functional model built from the term model's tensors keeps only the layers these outputs depend on.
    needed = keras.Model(term_model.inputs, {name: all_outputs[name] for name in wanted}, name="score_terms")
    _, size, _, channels = term_model.input_shape
    image = keras.Input((size, size, channels), dtype="uint8", name=edge.INPUT_NAME)
    unit = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=RESCALE_LAYER)(image)
    return keras.Model(image, needed(unit), name="scorer")


def score_calibration(run_dir, model, term_model, score, log=print) -> Calibration:
    """The run's calibration for ``combined``; for one-term scores, that term standardised on the same images."""
    calibration = scoring.ensure_calibration(run_dir, model, log=log, term_model=term_model)
    if score == "combined":
        return terms_that_count(calibration)
    (term,) = SCORE_TERMS[score]
    values = scoring.validation_terms(run_dir, term_model, log)
    return fit_calibration_from_outputs(
        values, terms=[term], weights=[1.0], method="weighted", max_fpr=calibration.max_fpr,
        config_hash=calibration.config_hash, model_step=calibration.model_step,
    )


def terms_that_count(calibration: Calibration) -> Calibration:
    """The calibration restricted to the terms that change the score, giving exactly the same scores.

    With the weighted method a zero-weight term adds exactly 0, so the camera need not compute it: the default
    weights (normalized_map_max) spare the critic passes and the second encoder pass of the cycle
    term. The Mahalanobis method mixes every term, so it keeps them all.
    """
    if calibration.method != "weighted":
        return calibration
    keep = [i for i, weight in enumerate(calibration.weights) if weight != 0]

    def pick(values):
        return [values[i] for i in keep]

    terms = pick(calibration.terms)
    uses_code, uses_map = "latent_mahalanobis" in terms, "normalized_map_max" in terms
    return dataclasses.replace(calibration, terms=terms, mean=pick(calibration.mean),
                               std=pick(calibration.std), weights=pick(calibration.weights),
                               code_mean=calibration.code_mean if uses_code else None,
                               code_whitening=calibration.code_whitening if uses_code else None,
                               map_mean=calibration.map_mean if uses_map else None,
                               map_std=calibration.map_std if uses_map else None)


def networks(model: keras.Model) -> list[keras.Model]:
    """The innermost sub-models (encoder, generator, critic) a scorer or term model is made of."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            inner = networks(layer)
            found += inner if inner else [layer]
    return found


def float_island_layers(model: keras.Model) -> tuple[set[str], set[str]]:
    """(names of all network layers, names of those int8 keeps in float).

    Float: normalisations, and the layers whose output leaves their network (the encoder's code, the
    generator's image, the critic's value and features). Those outputs are what the score terms are computed
    from, so int8 would cap them at the representative range (the critic value is a scalar per image) and
    round the reconstruction to 256 levels; the layers are small. Normalisations would need an int8 RSQRT.
    When the model outputs the code (latent_mahalanobis) or the error map (normalized_map_max, heatmaps), the
    whole encoder is float (module docstring).
    """
    norms = (keras.layers.LayerNormalization, keras.layers.GroupNormalization)
    outputs = model.output if isinstance(model.output, dict) else {}
    float_encoder = CODE_OUTPUT in outputs or ERROR_MAP_OUTPUT in outputs
    names, islands = set(), set()
    for network in networks(model):
        float_network = float_encoder and network.name.endswith("encoder")
        for layer in network.layers:
            names.add(layer.name)
            is_output = any(layer.output is output for output in network.outputs)
            if (isinstance(layer, norms) or is_output or float_network) and not isinstance(
                layer, keras.layers.InputLayer
            ):
                islands.add(layer.name)
    return names, islands


# ------------------------------------------------------------------------------------------------ conversion


def convert(scorer: keras.Model, quantize: str, representative=None) -> tuple[bytes, list[str]]:
    """TFLite flatbuffer of `scorer`, and (int8 only) the layers kept in float."""
    converter = tf.lite.TFLiteConverter.from_keras_model(scorer)
    if quantize == "none":
        return _quietly(converter.convert), []
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize != "int8":
        return _quietly(converter.convert), []
    converter.representative_dataset = lambda: ([image[np.newaxis]] for image in representative)
    return _quietly(lambda: _int8_with_float_islands(converter, scorer))


def _int8_with_float_islands(converter, scorer):
    """Calibrate once, then quantise everything to int8 except the float islands (public debugger API)."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset
    )
    layers, islands = float_island_layers(scorer)
    denylisted = [name for name in _op_output_names(debugger.calibrated_model)
                  if _keep_in_float(name, layers, islands)]
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylisted,
                                                                     fully_quantize=False)
    return debugger.get_nondebug_quantized_model(), sorted(islands)


def _op_output_names(tflite_model: bytes) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite_model)
    tensors = {detail["index"]: detail["name"] for detail in interpreter.get_tensor_details()}
    return [tensors[index] for op in interpreter._get_ops_details() for index in op["outputs"]]


def _keep_in_float(tensor_name: str, layers, islands) -> bool:
    """Float: ops of the float-island layers and the score arithmetic outside the networks (not the rescale)."""
    layer = _owning_layer(tensor_name, layers)
    if layer is not None:
        return layer in islands
    return RESCALE_LAYER not in tensor_name and not tensor_name.endswith("/Cast")


def _owning_layer(tensor_name: str, layers) -> str | None:
    """The innermost network layer an op belongs to, from its TF name scope ("…/crit_norm1_1/moments/mean").

    Fused ops carry several names joined by ';' — the last one is the op's own; TF appends "_1" to scopes.
    """
    for part in reversed(tensor_name.split(";")[-1].split("/")):
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layers:
                return candidate
    return None


def check_weights_present(tflite_model: bytes, weight_count: int, quantize: str) -> None:
    """Refuses a converted model too small to hold the scorer's weights (a weightless conversion)."""
    minimum = int(WEIGHT_BYTES_SLACK * BYTES_PER_WEIGHT[quantize] * weight_count)
    if len(tflite_model) < minimum:
        raise GanspectionError(
            f"the converted {quantize} model is {len(tflite_model):,} bytes, but the scorer's {weight_count:,} "
            f"weights need at least {minimum:,}: the weights were lost in conversion; this is a bug, please report it"
        )


def _quietly(function):
    with console.native_output_captured(), contextlib.redirect_stdout(sys.__stdout__):
        return function()


# ------------------------------------------------------------------------------------------------ data


def representative_images(run_dir, size, channels, calibration_dir=None, log=print, seed=0,
                          resize=DEFAULT_RESIZE) -> np.ndarray:
    """≥ MIN_REPRESENTATIVE good images for int8 calibration (augmented when the folder has fewer)."""
    if calibration_dir is not None:
        paths, source = list_images(calibration_dir), f"--calibration {calibration_dir}"
        if not paths:
            raise GanspectionError(f"--calibration {calibration_dir}: no images in it; point at good images")
    else:
        paths, source = training_paths(run_dir), "the run's training images"
    images, skipped = pipeline.load_images(paths, size, channels, skip_unreadable=True, resize=resize)
    if skipped:
        log(f"warning: skipped {len(skipped)} unreadable image(s) of {source}")
    rng = np.random.default_rng(seed)
    if len(images) > MAX_REPRESENTATIVE:
        images = images[np.sort(rng.choice(len(images), MAX_REPRESENTATIVE, replace=False))]
    if len(images) < MIN_REPRESENTATIVE:
        log(f"int8 calibration: {len(images)} images from {source}, augmented to {MIN_REPRESENTATIVE} "
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
    widens the int8 activation ranges for nothing (measured on the synthetic category, Spearman ρ of int8 vs
    Keras scores: 0.935 with flips and quarter turns, 0.969 with brightness only, 0.961 with plain repeats).
    """
    extra = []
    for _ in range(count - len(images)):
        image = images[rng.integers(len(images))].astype(np.float32)
        mean = image.mean()
        jittered = (image - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.85, 1.15)
        extra.append(np.clip(np.rint(jittered), 0, 255).astype(np.uint8))
    return np.concatenate([images, np.stack(extra)]) if extra else images


def training_paths(run_dir) -> list[Path]:
    """The good training images of ``splits.json``, found like scoring.validation_paths finds validation ones."""
    splits_path = Path(run_dir) / training.SPLITS_FILE
    splits = artifacts.read_json(splits_path, what="split list")
    root = Path(splits.get("root", ""))
    folder = root / "train" / "good" if splits.get("is_mvtec") else root
    found = []
    for listed in map(Path, splits.get("train") or []):
        candidate = listed if listed.is_absolute() else folder / listed.name
        if candidate.is_file():
            found.append(candidate)
    if not found:
        raise GanspectionError(
            f"{splits_path}: none of the training images is in {folder} any more; pass --calibration DIR "
            "with good images for int8 calibration"
        )
    return found


def evaluation_set(run_dir) -> tuple[list[Path], list[int] | None, str]:
    """(paths, labels or None, "test"|"validation"): the test split when the category has one."""
    splits = artifacts.read_json(Path(run_dir) / training.SPLITS_FILE, what="split list")
    root = Path(splits.get("root", ""))
    if splits.get("is_mvtec") and root.is_dir():
        category = mvtec.scan_category(root)
        if category.test:
            return [t.path for t in category.test], [t.label for t in category.test], "test"
    return scoring.validation_paths(run_dir), None, "validation"


# ------------------------------------------------------------------------------------------------ parity


def parity_check(bundle_dir, run_dir, term_model, calibration) -> dict:
    """Scores the evaluation images with Keras and with the bundle (edge runtime) and compares them."""
    paths, labels, kind = evaluation_set(run_dir)
    _, size, _, channels = term_model.input_shape
    images, skipped = pipeline.load_images(paths, size, channels, skip_unreadable=True,
                                           resize=training.run_resize(run_dir))
    skipped_paths = {Path(path) for path, _ in skipped}
    kept = [i for i, path in enumerate(paths) if Path(path) not in skipped_paths]
    keras_terms = calibration.term_matrix(scoring.compute_terms(term_model, images))
    scorer = edge.EdgeScorer(bundle_dir)
    lite_results = [scorer.score_file(paths[i]) for i in kept]
    lite_terms = np.array([[r.terms[t] for t in calibration.terms] for r in lite_results], dtype=np.float64)
    kept_labels = None if labels is None else [labels[i] for i in kept]
    report = compare_scores(calibration.combine(keras_terms), calibration.combine(lite_terms), kept_labels,
                            calibration.threshold)
    report.update(
        evaluation=kind, images=len(kept), skipped=sorted(str(p) for p in skipped_paths),
        term_max_abs_diff={t: float(np.max(np.abs(keras_terms[:, j] - lite_terms[:, j])))
                           for j, t in enumerate(calibration.terms)},
        latency_ms_p50=float(np.median([r.latency_ms for r in lite_results])),
    )
    return report


def compare_scores(keras_scores, lite_scores, labels=None, threshold=None) -> dict:
    """max |Δ|, Spearman ρ, decision agreement and (with both classes labelled) the AUROC of each."""
    from scipy.stats import spearmanr

    keras_scores, lite_scores = np.asarray(keras_scores, np.float64), np.asarray(lite_scores, np.float64)
    difference = np.abs(keras_scores - lite_scores)
    constant = np.ptp(keras_scores) == 0 or np.ptp(lite_scores) == 0
    report = {
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "spearman": None if constant else float(spearmanr(keras_scores, lite_scores).statistic),
        "auroc_keras": None,
        "auroc_tflite": None,
        "auroc_drop": None,
    }
    if threshold is not None:
        report["decision_agreement"] = float(np.mean((keras_scores > threshold) == (lite_scores > threshold)))
    if labels is not None and len(set(labels)) == 2:
        from sklearn.metrics import roc_auc_score

        report["auroc_keras"] = float(roc_auc_score(labels, keras_scores))
        report["auroc_tflite"] = float(roc_auc_score(labels, lite_scores))
        report["auroc_drop"] = report["auroc_keras"] - report["auroc_tflite"]
    return report


def describe_parity(report) -> str:
    text = (f"parity on {report['images']} {report['evaluation']} images: max |Δscore| "
            f"{report['max_abs_diff']:.4g}, Spearman ρ {_number(report['spearman'])}")
    if report["auroc_keras"] is not None:
        text += f", image AUROC Keras {report['auroc_keras']:.4f} → TFLite {report['auroc_tflite']:.4f}"
    text += f", decisions agree on {100 * report.get('decision_agreement', float('nan')):.1f} %"
    if report.get("latency_ms") is not None:
        text += f"; model {report['latency_ms']:.3g} ms per image (this CPU, {LATENCY_THREADS} thread)"
    return text


# ------------------------------------------------------------------------------------------------ latency


def model_latency_ms(tflite_model: bytes, runs=LATENCY_RUNS) -> float:
    """Median milliseconds per image of a converted scorer alone on this CPU, one LiteRT thread, batch 1.

    The input is a mid-gray image: none of the variants has data-dependent control flow. A few warm-up runs
    come first (the first invocation allocates and packs weights).
    """
    from ai_edge_litert.interpreter import Interpreter

    with console.native_output_captured():
        interpreter = Interpreter(model_content=tflite_model, num_threads=LATENCY_THREADS)
        interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner()
    details = runner.get_input_details()[edge.INPUT_NAME]
    image = np.full(details["shape"], 128, dtype=np.uint8)
    timings = []
    for run in range(LATENCY_WARMUP + runs):
        started = time.perf_counter()
        runner(**{edge.INPUT_NAME: image})
        if run >= LATENCY_WARMUP:
            timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(timings))


def _warn_if_slow(report, scorer, log):
    """--quantize dynamic has no fast kernels in LiteRT on x86: measure it against float32 and say so."""
    float_ms = model_latency_ms(convert(scorer, "none")[0])
    report["latency_ms_float32"] = float_ms
    ratio = report["latency_ms"] / float_ms
    if ratio > SLOW_FACTOR:
        log(f"warning: --quantize dynamic runs {report['latency_ms']:.3g} ms per image on this CPU, {ratio:.0f}× "
            f"slower than the float32 export of the same model ({float_ms:.3g} ms; LiteRT has no fast "
            "dynamic-range kernels here). Use --quantize int8 (fastest), float16 or none, unless the camera's "
            "CPU is measured to run it fast (benchmarks/edge_latency.py)")


def _apply_gate(report, out, quantize, force, log):
    drop = report["auroc_drop"]
    report.update(tolerance=AUROC_TOLERANCE, forced=False)
    report["passed"] = drop is None or drop <= AUROC_TOLERANCE
    if drop is None:
        log("parity gate: no labelled test images (both classes), so only the figures above were compared")
    if report["passed"]:
        return
    message = (f"parity gate failed: image AUROC drops from {report['auroc_keras']:.4f} (Keras) to "
               f"{report['auroc_tflite']:.4f} (TFLite {quantize}), more than {AUROC_TOLERANCE}")
    if not force:
        raise GanspectionError(f"{out}: {message}; no bundle written. Try --quantize float16 or none, more "
                               "--calibration images, or pass --force to write it anyway")
    report["forced"] = True
    log(f"warning: {message}; writing the bundle anyway (--force)")


def _number(value):
    return "n/a" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------------------------------ bundle


def bundle_metadata(
    run_dir, model, scorer, calibration, score, quantize, tflite_model, **details
) -> BundleMetadata:
    """The bundle's metadata; `details` (figures for people, not read by the scorer) are recorded as given."""
    config = training.read_run_config(run_dir)
    outputs = list(scorer.output)
    return BundleMetadata(
        preprocessing=Preprocessing(image_size=int(model.image_size), channels=int(model.channels),
                                    aspect=training.run_resize(run_dir)),
        score=score,
        terms=list(calibration.terms),
        outputs=outputs,
        heatmap=edge.ERROR_MAP_OUTPUT in outputs,
        # The validation scores go beside the calibration, where earlier camera releases ignore them.
        calibration={key: value for key, value in calibration.to_dict().items() if key != "validation_scores"},
        threshold=calibration.threshold,
        validation_scores=calibration.validation_scores,
        quantization=quantize,
        package_version=ganspection_tf.__version__,
        config_hash=config.get("config_hash", ""),
        model_sha256=hashlib.sha256(tflite_model).hexdigest(),
        details=dict(
            tensorflow_version=tf.__version__,
            model_step=scoring.model_step(model),
            run_dir=str(Path(run_dir).resolve()),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            model_bytes=len(tflite_model),
            scorer_weights=int(scorer.count_params()),
            **details,
        ),
    )


def _check_choice(option, value, choices):
    if value not in choices:
        raise GanspectionError(f"{option} {value}: unknown; choose one of {', '.join(choices)}")


@contextlib.contextmanager
def _staging_folder(out: Path):
    artifacts.ensure_writable_folder(out.parent if str(out.parent) else Path("."))
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published bundle is an ordinary folder
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out: Path):
    """Rename the finished bundle into place; an earlier bundle at `out` is swapped out, then deleted.

    A folder that also holds foreign files (allowed by --overwrite, checked before) keeps them: only the
    bundle's own files are replaced there, one atomic rename each.
    """
    if ownership.foreign_entries(out, "bundle"):
        ownership.refuse_foreign(out, "bundle", overwrite=True)  # still no clash with a file the user owns
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        return
    retired = None
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / out.name)
    try:
        os.replace(staging, out)
    except OSError:
        if retired is not None:
            os.replace(retired / out.name, out)
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
