"""The parity gate: the workstation's Keras scores against the staged bundle's LiteRT scores.

The evaluation images (the test split, else the validation split) are scored by ``scoring.KerasScorer`` and by
the bundle through ``edge.EdgeScorer`` (the camera's code path, preprocessing included): the two
implementations of the one scorer contract (``scorer.py``); the export fails when the
image AUROC drops by more than ``AUROC_TOLERANCE``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganspection_tf import edge, scoring
from ganspection_tf.errors import GanspectionError
from ganspection_tf.latency import LATENCY_THREADS
from ganspection_tf.run import as_run

AUROC_TOLERANCE = 0.01


def evaluation_set(run) -> tuple[list[Path], list[int] | None, str]:
    """(paths, labels or None, "test"|"validation"): the test split when the category has one."""
    run = as_run(run)
    category = run.test_category()
    if category is not None and category.test:
        return [t.path for t in category.test], [t.label for t in category.test], "test"
    return run.validation_images(), None, "validation"


def parity_check(bundle_dir, run, term_model, calibration) -> dict:
    """Scores the evaluation images with the Keras scorer and the bundle's LiteRT scorer (one contract,
    ``scorer.Scorer``: the same preprocessing and postprocessing, only ``forward`` differs) and compares them."""
    run = as_run(run)
    paths, labels, kind = evaluation_set(run)
    workstation = scoring.KerasScorer.for_run(run, term_model, calibration)
    images, skipped = workstation.load_images(paths)
    skipped_paths = {Path(path) for path, _ in skipped}
    kept = [i for i, path in enumerate(paths) if Path(path) not in skipped_paths]
    keras_results = workstation.postprocess(workstation.forward(images))
    camera = edge.EdgeScorer(bundle_dir)
    lite_results = [camera.score_file(paths[i]) for i in kept]  # one frame at a time, as on the camera
    kept_labels = None if labels is None else [labels[i] for i in kept]
    report = compare_scores([r.score for r in keras_results], [r.score for r in lite_results], kept_labels,
                            workstation.threshold)
    report.update(
        evaluation=kind, images=len(kept), skipped=sorted(str(p) for p in skipped_paths),
        term_max_abs_diff={t: max(abs(k.terms[t] - lite.terms[t]) for k, lite in zip(keras_results, lite_results))
                           for t in calibration.terms},
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


class ParityGateFailed(GanspectionError):
    """The converted model ranks the labelled test images worse than Keras by more than AUROC_TOLERANCE; `reason`
    is the figures without the advice."""

    def __init__(self, out, reason):
        super().__init__(f"{out}: {reason}; no bundle written. Try --quantize float16 or none, more --calibration "
                         "images, or pass --force to write it anyway")
        self.reason = reason


def apply_gate(report, out, quantize, force, log):
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
        raise ParityGateFailed(out, message)
    report["forced"] = True
    log(f"warning: {message}; writing the bundle anyway (--force)")


def _number(value):
    return "n/a" if value is None else f"{value:.4f}"
