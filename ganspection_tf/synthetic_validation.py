"""Choosing a run's score on its good validation images and synthetic-defect copies of them (TensorFlow side).

The validation images (held out of training) are decoded at DRAW_SIZE, given synthetic defects
(``defects.py``, COPIES_PER_IMAGE per image, every kind and size), resized to the model's input like any
image, and run through the term model. Every term's values on the good images and on the copies go to
:func:`score_choice.choose_score`. The good values are the ones the calibration standardises with: for
``latent_mahalanobis`` leave-one-out, and a copy of validation image i is measured against the code Gaussian
of the OTHER validation images too, so that a copy is not judged by a Gaussian that contains its own source.

Only the good validation images are read (and the training images' outputs the caller passes): never a test
image. The choice is written to the run folder's ``score_choice.json`` for the evaluation report.
"""

from __future__ import annotations

import numpy as np

from ganspection_tf import artifacts
from ganspection_tf.calibration import fit_calibration_from_outputs
from ganspection_tf.data import pipeline
from ganspection_tf.defects import defective_copies
from ganspection_tf.images import resize_image
from ganspection_tf.run import as_run
from ganspection_tf.score_choice import ScoreChoice, choose_score
from ganspection_tf.terms import (
    CODE_OUTPUT,
    TERMS,
    fit_code_gaussian,
    latent_mahalanobis,
    leave_one_out_mahalanobis,
    leave_one_out_normalized_map_max,
)

DRAW_SIZE = 256  # defects are drawn at this resolution (or the model's, if larger), then resized: thin stays thin
COPIES_PER_IMAGE = 5
DEFECT_SEED = 0


def choose_run_score(run, term_model, validation_outputs, reference_outputs, log=print) -> ScoreChoice:
    """The chosen score of a run (a RunFolder or its path; module docstring), also written to its
    ``score_choice.json``. The copies are drawn on squares made with the run's resize mode, so resizing them
    further is plain."""
    run = as_run(run)
    from ganspection_tf.scoring import compute_terms  # scoring imports this module: a late import breaks the cycle

    _, size, _, channels = term_model.input_shape
    model_inputs, copies = defective_inputs(run.validation_images(), size, channels, run.resize)
    defect_outputs = compute_terms(term_model, model_inputs)
    good_terms, defect_terms = term_values(validation_outputs, reference_outputs, defect_outputs, copies.sources)
    choice = choose_score(good_terms, defect_terms, defect_kinds=copies.kinds)
    artifacts.write_json(run.score_choice_path, choice.to_dict())
    log(f"score chosen on {choice.n_good} good validation images and {choice.n_defective} synthetic-defect copies: "
        f"{choice.reason}")
    return choice


def defective_inputs(validation_paths, size, channels, resize):
    """(uint8 model inputs (M, size, size, channels), their ``DefectiveCopies``): the synthetic-defect copies of the
    validation images, drawn at DRAW_SIZE (or larger) and resized to the model's input."""
    good, _ = pipeline.load_images(validation_paths, max(size, DRAW_SIZE), channels, skip_unreadable=True,
                                   resize=resize)
    copies = defective_copies(good, seed=DEFECT_SEED, copies_per_image=COPIES_PER_IMAGE)
    return np.stack([resize_image(image, size) for image in copies.images]), copies


def term_values(validation_outputs, reference_outputs, defect_outputs, sources) -> tuple[dict, dict]:
    """({term: (N,)} on the good validation images, {term: (M,)} on their copies) as the calibration sees them."""
    fitted = fit_calibration_from_outputs(validation_outputs, TERMS, reference_outputs=reference_outputs)
    good = fitted.term_matrix(validation_outputs)
    defective = fitted.term_matrix(defect_outputs)
    good_terms = {term: good[:, j] for j, term in enumerate(fitted.terms)}
    defect_terms = {term: defective[:, j] for j, term in enumerate(fitted.terms)}
    codes = np.asarray(validation_outputs[CODE_OUTPUT], np.float64)
    good_terms["latent_mahalanobis"] = leave_one_out_mahalanobis(codes)
    defect_terms["latent_mahalanobis"] = _leave_source_out_mahalanobis(codes, defect_outputs[CODE_OUTPUT], sources)
    if reference_outputs is None:  # the per-pixel Gaussian came from the validation maps: leave-one-out too
        good_terms["normalized_map_max"] = leave_one_out_normalized_map_max(validation_outputs["error_map"])
    return good_terms, defect_terms


def _leave_source_out_mahalanobis(codes, copy_codes, sources) -> np.ndarray:
    sources = np.asarray(sources)
    copy_codes = np.asarray(copy_codes, np.float64)
    if len(codes) <= 2:  # too few codes to leave one out (like leave_one_out_mahalanobis)
        return latent_mahalanobis(copy_codes, *fit_code_gaussian(codes))
    distances = np.empty(len(copy_codes))
    for source in np.unique(sources):
        gaussian = fit_code_gaussian(np.delete(codes, source, axis=0))
        distances[sources == source] = latent_mahalanobis(copy_codes[sources == source], *gaussian)
    return distances
