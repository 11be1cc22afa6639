"""The lighting line of the evaluation: good validation photos re-exposed, scored with the run's calibration."""

import os
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ganspection_tf import exposure_tolerance, scoring  # noqa: E402
from ganspection_tf.data import pipeline  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402

PER_PIXEL = {"normalized_map_max": 1.0}  # the per-pixel score: the one a change of light moves most


@pytest.fixture
def calibrated(tiny_run_copy):
    run = RunFolder(tiny_run_copy)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    calibration = scoring.ensure_calibration(run, model, log=lambda *_: None, term_model=term_model,
                                             weights=PER_PIXEL)
    return run, term_model, calibration


def test_much_less_light_fails_good_parts_and_none_fails_none(calibrated, monkeypatch):
    run, term_model, calibration = calibrated
    monkeypatch.setattr(exposure_tolerance, "GAINS", (0.3, 1.0))
    shares = exposure_tolerance.flagged_shares(run, term_model, calibration)
    assert shares["0.3"] == 1.0  # a part photographed at 30 % of the light is "defective" everywhere
    assert shares["1"] <= 0.2  # the photos the threshold was set on (max FPR 0.01, a margin for the rule's floor)


def test_a_levelled_run_sees_the_light_change_levelled_away(calibrated, monkeypatch):
    """A run trained with --exposure-level N brings every photo to N before the networks, as its camera does: the
    measure re-exposes first, then levels, so a dimmer photo reaches the model as the plain one did."""
    run, term_model, calibration = calibrated
    _, size, _, channels = term_model.input_shape
    plain, _ = pipeline.load_images(run.validation_images(), size, channels, resize=run.resize)
    levelled_run = SimpleNamespace(validation_images=run.validation_images, resize=run.resize,
                                   exposure_level=float(np.mean(plain)))
    monkeypatch.setattr(exposure_tolerance, "GAINS", (0.6, 1.0))
    shares = exposure_tolerance.flagged_shares(levelled_run, term_model, calibration)
    assert shares["0.6"] == pytest.approx(shares["1"], abs=0.2)
    assert exposure_tolerance.flagged_shares(run, term_model, calibration)["0.6"] == 1.0


def test_the_advice_comes_only_when_5_percent_fails_good_parts_and_names_what_the_run_lacks(tiny_run_copy):
    assert exposure_tolerance.warning({"0.9": 1.0, "0.95": 0.1, "1.05": 0.2, "1.1": 1.0}, False) is None
    failing = {"0.9": 1.0, "0.95": 1.0, "1.05": 0.1, "1.1": 0.3}
    without = exposure_tolerance.warning(failing, trained_with_exposure=False)
    assert without.startswith("100% of good photos") and "exposure augmentation" in without
    already = exposure_tolerance.warning(failing, trained_with_exposure=True)
    assert "--exposure-level" in already and "augmentation" not in already
    assert exposure_tolerance.trained_with_exposure(RunFolder(tiny_run_copy))  # the default since session 17
