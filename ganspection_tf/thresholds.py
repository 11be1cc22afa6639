"""The decision threshold in use: the calibrated one, or one chosen when scoring starts, without recalibrating or
re-exporting: ``--threshold T`` as given, or ``--max-fpr F`` from the scores of the good validation images that
the calibration keeps (and an edge bundle ships), by the calibration's own rule
(:func:`calibration.validation_threshold`, small-sample Gaussian extrapolation included).

No TensorFlow: the camera (a bundle's metadata) and ``score`` (a run's calibration) both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ganspection_tf.config import Check
from ganspection_tf.errors import GanspectionError

MAX_FPR = Check(float, "Decide with the threshold for this false-positive rate on the good validation images "
                "(0 < F < 1) instead of the calibrated one.", low=0.0, high=1.0, low_open=True, high_open=True)
THRESHOLD = Check(float, "Decide with this threshold (anomalous when score > T) instead of the calibrated one.")


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str

    def describe(self) -> str:
        return f"threshold {self.value:.6g} ({self.source})"


def for_bundle(metadata, source, threshold=None, max_fpr=None) -> Threshold:
    """The camera's threshold for a bundle's ``BundleMetadata`` (read from `source`, its metadata.json)."""
    return choose(metadata.threshold, metadata.calibration["max_fpr"], metadata.validation_scores, threshold,
                  max_fpr, holder="the bundle's",
                  refused=f"{source}: this bundle ships no validation scores (exported by an earlier release), so "
                          "--max-fpr cannot choose a threshold; re-export it with 'ganspection-tf export RUN_DIR "
                          "--tflite --out BUNDLE_DIR', or pass --threshold T")


def for_calibration(calibration, threshold=None, max_fpr=None) -> Threshold:
    """The workstation's threshold for a run's ``Calibration`` (``scoring.ensure_calibration`` keeps the scores)."""
    return choose(calibration.threshold, calibration.max_fpr, calibration.validation_scores, threshold, max_fpr,
                  holder="the run's",
                  refused="the run's calibration.json keeps no validation scores; delete it and score again")


def choose(own, own_max_fpr, validation_scores, threshold, max_fpr, holder, refused) -> Threshold:
    """`threshold`, or the threshold for `max_fpr` on `validation_scores`, or `own` (calibrated for `own_max_fpr`)
    when neither is given; `refused` is the one-line error when `max_fpr` is given without scores."""
    from ganspection_tf.calibration import validation_threshold  # numpy: not at the CLI's start-up

    if threshold is not None and max_fpr is not None:
        raise GanspectionError(f"--threshold {threshold:g} and --max-fpr {max_fpr:g}: pass only one of them")
    _check("--threshold", threshold, THRESHOLD)
    _check("--max-fpr", max_fpr, MAX_FPR)
    calibrated = f"{holder} calibrated threshold is {own:.6g}, for max FPR {own_max_fpr:g}"
    if threshold is not None:
        return Threshold(float(threshold), f"--threshold; {calibrated}")
    if max_fpr is None:
        return Threshold(float(own), f"{holder} calibrated threshold, for max FPR {own_max_fpr:g}")
    if not validation_scores:
        raise GanspectionError(refused)
    value = validation_threshold(validation_scores, max_fpr)
    return Threshold(value, f"--max-fpr {max_fpr:g} on {holder} {len(validation_scores)} good validation scores; "
                            f"{calibrated}")


def _check(option, value, check):
    problem = None if value is None else check.problem(value)
    if problem:
        raise GanspectionError(f"{option} {value}: {problem}")
