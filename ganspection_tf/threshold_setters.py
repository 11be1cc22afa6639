"""The good validation images that score highest, by name.

With fewer good validation images than 1 / max FPR (fewer than 100 for a 1 % target), the calibrated threshold is the
highest validation score or a Gaussian tail above it (``calibration.validation_threshold``), so one unusual good
photo (a rare pose, a defective part filed as good) can decide how many defects the threshold finds. ``evaluate``
logs these images and the report lists them, so the user can look at them; ``--max-fpr`` and ``--threshold``
(``score``, ``camera``) choose another point without recalibrating. numpy only.
"""

from __future__ import annotations

import numpy as np

SHOWN = 3


def highest(paths, validation_scores, count=SHOWN) -> list[dict] | None:
    """[{"path", "score"}] of the `count` validation images (`paths`) with the highest combined scores (in the
    order of `paths`), highest first; None when the scores do not match the paths one to one (an unreadable
    validation image was skipped, so no name can be matched to a score)."""
    scores = np.asarray(validation_scores, dtype=np.float64)
    if len(scores) != len(paths):
        return None
    order = np.argsort(-scores, kind="stable")[:count]
    return [{"path": str(paths[index]), "score": float(scores[index])} for index in order]


def describe(entries, threshold, validation_scores=None) -> str:
    """One line for the log and the report: the images, and whether the calibrated `threshold` is the highest of
    the calibration's own record of the validation scores (not the scores recomputed here)."""
    listed = ", ".join(f"{entry['path']} ({entry['score']:.4g})" for entry in entries)
    line = f"good validation images with the highest scores: {listed}"
    if validation_scores and threshold == max(validation_scores):
        line += (f"; the threshold {threshold:.4g} is the highest one's score, so that one photo sets it: look at it "
                 "(a part in an unusual pose, or a defective part among the good ones), or choose another point "
                 "with --max-fpr or --threshold")
    return line
