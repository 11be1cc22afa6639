"""`ganspection-tf export --tflite`: a trained run → an edge bundle the camera scores with LiteRT alone.

``export_bundle`` runs the steps, each in its own module: the scorer cut and its conversion (``convert.py``,
int8 calibrated on ``representative.py``'s images), the bundle written into a staging folder
(``bundle_writer.py``), the parity gate against Keras (``parity.py``) with the latency line (``latency.py``),
then, only when the gate passed, the rename into place (never a half-written bundle).
"""

from __future__ import annotations

from pathlib import Path

from ganspection_tf import artifacts, edge, ownership, scoring
from ganspection_tf.bundle_writer import bundle_metadata, publish, staging_folder
from ganspection_tf.calibration import Calibration, fit_calibration_from_outputs
from ganspection_tf.convert import (CALIBRATED, build_scorer, check_runs, check_weights_present, convert,
                                    weights_needed)
from ganspection_tf.errors import GanspectionError
from ganspection_tf.int8_acceptance import Int8Acceptance
from ganspection_tf.latency import model_latency_ms
from ganspection_tf.parity import apply_gate, describe_parity, parity_check
from ganspection_tf.representative import representative_images
from ganspection_tf.run import RunFolder
from ganspection_tf.terms import COMBINED_SCORE, SCORES, export_terms

SLOW_FACTOR = 2.0  # --quantize dynamic warns when it is this many times slower than float32
# int8 ships only when it makes the bundle (model and metadata) at least this much smaller than float32: its
# rounding costs accuracy, worth paying for a smaller, faster model, not for a patch scorer's one convolution
# beside its bank of good patches (benchmarks/RESULTS.md).
MIN_INT8_SAVING = 0.1


def export_bundle(run_dir, out, quantize="int8", score="combined", calibration_dir=None, force=False, log=print,
                  overwrite=False):
    """Export `run_dir` to the bundle folder `out`; returns the parity report (also in ``out/parity.json``).

    `out` may be new, empty or an earlier bundle (replaced); a folder holding anything else is refused unless
    `overwrite`, which writes the bundle's files beside the others and never touches those.
    """
    run, out = RunFolder(run_dir), Path(out)
    _check_choice("--quantize", quantize, edge.QUANTIZATIONS)
    _check_choice("--score", score, SCORES)
    ownership.refuse_foreign(out, "bundle", overwrite)
    model = run.load_model()
    term_model = scoring.build_term_model(model, subpixel=True)  # the generator as LiteRT runs it fastest
    calibration = score_calibration(run, model, term_model, score, log)
    heatmaps = score == COMBINED_SCORE and calibration.heatmap_needs_error_map()
    scorer = build_scorer(term_model, calibration.terms, with_error_map=heatmaps)

    representative = None
    if quantize in CALIBRATED:
        representative = representative_images(run, model.inspected_size, model.channels, calibration_dir, log,
                                               resize=run.resize, exposure_level=run.exposure_level)
    weight_count = weights_needed(scorer)  # traced once: the size check and the metadata
    log(f"converting the {score} scorer ({weight_count:,} weights) to TFLite ({quantize}) …")
    acceptance = Int8Acceptance.for_run(run, scorer, calibration) if quantize == "int8" else None
    tflite_model, float_layers, tried = convert(scorer, quantize, representative, acceptance, log)
    requested = quantize

    def metadata_for(quantization, model_bytes, layers):
        return bundle_metadata(run, model, scorer, calibration, score, quantization, model_bytes, weight_count,
                               int8_float_layers=layers, int8_candidates=tried, requested_quantization=requested,
                               representative_images=0 if representative is None else len(representative))

    metadata = metadata_for(quantize, tflite_model, float_layers)
    if quantize == "int8":
        float32_model, _, _ = convert(scorer, "none")
        saving = int8_saving(metadata, tflite_model, float32_model)
        saved = f"int8 saves {max(saving, 0.0):.1%} of the float32 bundle's bytes"
        if saving < MIN_INT8_SAVING:
            log(f"{saved} (under {MIN_INT8_SAVING:.0%}): exporting float32 (--quantize none) instead, which scores "
                "exactly like Keras")
            quantize, tflite_model = "none", float32_model
            metadata = metadata_for(quantize, tflite_model, [])
        else:
            log(saved)
    check_weights_present(tflite_model, weight_count, quantize)
    check_runs(tflite_model, quantize)

    with staging_folder(out) as staging:
        artifacts.write_bytes(staging / edge.MODEL_FILE, tflite_model)
        artifacts.write_json(staging / edge.METADATA_FILE, metadata.to_dict())
        report = parity_check(staging, run, term_model, calibration)
        report.update(quantization=quantize, score=score, tflite_bytes=len(tflite_model),
                      latency_ms=model_latency_ms(tflite_model))
        log(describe_parity(report))
        if quantize == "dynamic":
            _warn_if_slow(report, scorer, log)
        apply_gate(report, out, quantize, force, log)
        artifacts.write_json(staging / edge.PARITY_FILE, report)
        ownership.write_marker(staging, "bundle")
        publish(staging, out)
    log(f"edge bundle written to {out} ({len(tflite_model) / 1024:.0f} KiB model)")
    return report


def int8_saving(int8_metadata, int8_model: bytes, float32_model: bytes) -> float:
    """The share of the float32 bundle's bytes (model and metadata) that the int8 bundle saves."""
    metadata_bytes = len(artifacts.json_text(int8_metadata.to_dict()).encode())
    return (len(float32_model) - len(int8_model)) / (len(float32_model) + metadata_bytes)


def score_calibration(run, model, term_model, score, log=print) -> Calibration:
    """The run's calibration for ``combined``; for one-term scores, that term standardised on the same images."""
    calibration = scoring.ensure_calibration(run, model, log=log, term_model=term_model)
    if score == COMBINED_SCORE:
        return terms_that_count(calibration)
    (term,) = export_terms(score)
    values = scoring.validation_terms(run, term_model, log)
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
    return calibration.restricted_to([t for t, weight in zip(calibration.terms, calibration.weights) if weight != 0])


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


def _check_choice(option, value, choices):
    if value not in choices:
        raise GanspectionError(f"{option} {value}: unknown; choose one of {', '.join(choices)}")
