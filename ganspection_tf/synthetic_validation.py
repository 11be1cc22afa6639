"""Choosing a run's score on its good validation images and synthetic-defect copies of them (TensorFlow side).

The validation images (held out of training) are decoded at DRAW_SIZE, given synthetic defects
(``defects.py``, COPIES_PER_IMAGE per image, every kind and size), resized to the model's input like any
image, and run through the term model. Every term's values on the good images and on the copies go to
:func:`score_choice.choose_score`. The good values are the ones the calibration standardises with (e.g. for
``latent_mahalanobis`` leave-one-out), and a copy of validation image i is measured, for the terms that say so
(``Term.leave_source_out``: latent_mahalanobis), with parameters fitted on the OTHER validation images, so that a
copy is not judged by a Gaussian that contains its own source.

Ties are broken towards the candidate with the smallest light shift (``score_choice``): the same terms on the good
validation images re-exposed (``exposure_tolerance.relit_inputs``), measured like the copies (:func:`term_values`).

Only the good validation images are read (and the training images' outputs the caller passes): never a test
image. The choice is written to the run folder's ``score_choice.json`` for the evaluation report.
"""

from __future__ import annotations

import numpy as np

from ganspection_tf import artifacts, exposure_tolerance
from ganspection_tf.calibration import fit_calibration, fitted_columns
from ganspection_tf.data import choices, pipeline
from ganspection_tf.defects import defective_copies
from ganspection_tf.images import levelled, resize_image
from ganspection_tf.run import as_run
from ganspection_tf.score_choice import ScoreChoice, choose_score
from ganspection_tf.terms import BY_NAME, TERMS

DRAW_SIZE = 256  # defects are drawn at this resolution (or the model's, if larger), then resized: thin stays thin
COPIES_PER_IMAGE = 5
DEFECT_SEED = 0


def choose_run_score(run, term_model, validation_outputs, reference_outputs, log=print, columns=None) -> ScoreChoice:
    """The chosen score of a run (a RunFolder or its path; module docstring), also written to its
    ``score_choice.json``. The copies are drawn on squares made with the run's resize mode, so resizing them
    further is plain. `columns`: ``calibration.fitted_columns`` of these outputs, when the caller has them."""
    run = as_run(run)
    good_terms, defect_terms, copies, aligned, relit_terms = choice_inputs(run, term_model, validation_outputs,
                                                                           reference_outputs, columns)
    choice = choose_score(good_terms, defect_terms, defect_kinds=copies.kinds, aligned=aligned,
                          relit_terms=relit_terms)
    artifacts.write_json(run.score_choice_path, choice.to_dict())
    log(f"score chosen on {choice.n_good} good validation images and {choice.n_defective} synthetic-defect copies: "
        f"{choice.reason}")
    return choice


def choice_inputs(run, term_model, validation_outputs, reference_outputs, columns=None):
    """What the choice is made from: ({term: (N,)} on the good validation images, {term: (M,)} on their
    synthetic-defect copies, the copies' ``DefectiveCopies``, whether the training images show aligned parts,
    {term: (K,)} on the good validation images re-exposed)."""
    defect_outputs, copies = copies_outputs(run, term_model)
    relit_outputs, relit_sources = relit_photo_outputs(run, term_model)
    good_terms, defect_terms, relit_terms = term_values(
        validation_outputs, reference_outputs, (defect_outputs, copies.sources), (relit_outputs, relit_sources),
        columns=columns)
    aligned = bool(choices.parts_aligned(run.training_images(), run.resize))
    return good_terms, defect_terms, copies, aligned, relit_terms


def relit_photo_outputs(run, term_model):
    """(raw model outputs of the run's good validation images re-exposed, ``exposure_tolerance.relit_inputs``; the
    index of each one's source image)."""
    from ganspection_tf.scoring import compute_terms  # scoring imports this module: a late import breaks the cycle

    _, size, _, channels = term_model.input_shape
    photos, _, sources = exposure_tolerance.relit_inputs(run.validation_images(), size, channels, run.resize,
                                                         run.exposure_level)
    return compute_terms(term_model, photos), sources


def copies_outputs(run, term_model):
    """(raw model outputs of the synthetic-defect copies of the run's validation images, their
    ``DefectiveCopies``)."""
    from ganspection_tf.scoring import compute_terms  # scoring imports this module: a late import breaks the cycle

    _, size, _, channels = term_model.input_shape
    model_inputs, copies = defective_inputs(run.validation_images(), size, channels, run.resize, run.exposure_level)
    return compute_terms(term_model, model_inputs), copies


def defective_inputs(validation_paths, size, channels, resize, exposure_level=0.0):
    """(uint8 model inputs (M, size, size, channels), their ``DefectiveCopies``): the synthetic-defect copies of the
    validation images, drawn at DRAW_SIZE (or larger), then resized to the model's input and levelled like any
    photo (``images.levelled``: a defect that darkens the part is judged as the camera would see it)."""
    good, _ = pipeline.load_images(validation_paths, max(size, DRAW_SIZE), channels, skip_unreadable=True,
                                   resize=resize)
    copies = defective_copies(good, seed=DEFECT_SEED, copies_per_image=COPIES_PER_IMAGE)
    return np.stack([levelled(resize_image(image, size), exposure_level) for image in copies.images]), copies


def term_values(validation_outputs, reference_outputs, *copy_sets, columns=None) -> tuple[dict, ...]:
    """({term: (N,)} on the good validation images, then {term: (M,)} for each (outputs, sources) of copies of
    them in `copy_sets`) as the calibration sees them, its parameters fitted once: the good values are each term's
    honest validation column (``Term.fit_on``), a copy's values use the fitted parameters, or parameters fitted
    without the copy's source (``Term.leave_source_out``). `columns`: ``fitted_columns`` of these outputs, when
    the caller has them (the patch banks' k-centre is the slow part of a fit)."""
    parameters, good = columns or fitted_columns(validation_outputs, TERMS, reference_outputs)
    fitted = fit_calibration(good, TERMS, **parameters)  # refuses too few or non-finite validation values
    good_terms = {name: good[:, j] for j, name in enumerate(fitted.terms)}
    return (good_terms, *(_copy_values(fitted, validation_outputs, outputs, sources) for outputs, sources in copy_sets))


def _copy_values(fitted, validation_outputs, copy_outputs, sources) -> dict:
    matrix = fitted.term_matrix(copy_outputs)
    values = {}
    for j, name in enumerate(fitted.terms):
        leave_source_out = BY_NAME[name].leave_source_out
        values[name] = (matrix[:, j] if leave_source_out is None
                        else leave_source_out(validation_outputs, copy_outputs, sources))
    return values
