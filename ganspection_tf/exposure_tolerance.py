"""How much a change of light alone moves a run's decisions: its good validation photos re-exposed (one gain per
photo, ``images.reexposed``), then scored with the run's calibration, and the share of them flagged defective.

A model trained on photos lit alike can call every part defective once the lamp dims by a few percent (per-pixel
statistics of a fixed camera are narrow), and a test split photographed in the same light does not show it.
``evaluate`` reports the figure (it reads good validation images only, no test image). A re-exposed photo is
levelled like any photo of a run trained with ``--exposure-level``, so such a run is measured as its camera sees it.
The score chooser uses the same re-exposed photos to break ties (``score_choice``: the smallest light shift).
"""

from __future__ import annotations

import numpy as np

from ganspection_tf.data import pipeline
from ganspection_tf.images import levelled, reexposed

GAINS = (0.9, 0.95, 1.05, 1.1)
# Above this share of good photos flagged at 5 % less or more light, the report says how to make the run tolerate it.
WARNING_SHARE = 0.2
WARNING_GAINS = (0.95, 1.05)


def flagged_shares(run, term_model, calibration) -> dict[str, float]:
    """{gain as text: share of the run's good validation photos flagged at the calibrated threshold once
    re-exposed by that gain}."""
    from ganspection_tf.scoring import compute_terms  # scoring imports synthetic_validation, which imports this

    _, size, _, channels = term_model.input_shape
    photos, gains, _ = relit_inputs(run.validation_images(), size, channels, run.resize, run.exposure_level)
    scores = calibration.combine(calibration.term_matrix(compute_terms(term_model, photos)))
    flagged = calibration.is_anomalous(scores)
    return {_key(gain): float(np.mean(flagged[gains == gain])) for gain in GAINS}


def relit_inputs(validation_paths, size, channels, resize, exposure_level=0.0):
    """(uint8 model inputs: every validation photo re-exposed at each of GAINS, then levelled like any photo of the
    run; the gain of each; the index of its source photo)."""
    images, _ = pipeline.load_images(validation_paths, size, channels, resize=resize)
    photos = [levelled(reexposed(image, gain), exposure_level) for gain in GAINS for image in images]
    gains = np.repeat(np.asarray(GAINS, np.float64), len(images))
    return np.stack(photos), gains, np.tile(np.arange(len(images)), len(GAINS))


def worst_share(shares) -> float:
    """The larger share flagged at the WARNING_GAINS (5 % less or more light)."""
    return max(shares[_key(gain)] for gain in WARNING_GAINS)


def trained_with_exposure(run) -> bool:
    return pipeline.Augment.from_flags(run.read_train_config().augment).exposure


def describe(shares) -> str:
    listed = ", ".join(f"×{gain} {share:.0%}" for gain, share in shares.items())
    return f"good validation photos flagged once their light is scaled: {listed}"


def warning(shares, trained_with_exposure: bool) -> str | None:
    """A one-line advice when a few percent of light make good parts fail, else None."""
    worst = worst_share(shares)
    if worst <= WARNING_SHARE:
        return None
    fix = ("level the light (--exposure-level) or train on photos taken in the line's own range of light"
           if trained_with_exposure else "train with the exposure augmentation (the default; this run had "
           "--augment without exposure) or level the light (--exposure-level)")
    return f"{worst:.0%} of good photos are flagged when the light changes by 5 %: if the line's lighting drifts, {fix}"


def _key(gain) -> str:
    return f"{gain:g}"
