"""Is the encoder's code a better anomaly measure by its nearest good codes than by one Gaussian over them?

    python benchmarks/latent_probes.py --run RUN_DIR [--run RUN_DIR ...] [--test]

For every trained run given, the code z = E(x) of the run's good TRAINING images (the calibration's reference
images, ``scoring.reference_terms``) is the reference, and each image is measured by:
- ``latent_mahalanobis`` (the product's term, its validation values leave-one-out as the calibration has them);
- its distance from the nearest training code, or the mean over the k nearest (Euclidean);
- the same after whitening the codes with the training codes' Gaussian (``stats.whitening_matrix``).
A Gaussian treats the good codes as one cloud; parts at any pose, or several kinds of good part, may give good
codes in several places, which only a nearest-neighbour measure follows.

Printed: the AUROC of the good validation images against their synthetic-defect copies
(``synthetic_validation.choice_inputs``, what the score chooser sees), one column per run and the mean. With
--test, a second table on the run's TEST split: a diagnosis after the fact, nothing may be chosen from it.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ganspection_tf import scoring  # noqa: E402
from ganspection_tf.calibration import fitted_columns  # noqa: E402
from ganspection_tf.data import mvtec, pipeline  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.score_choice import auroc_of  # noqa: E402
from ganspection_tf.stats import whitening_matrix  # noqa: E402
from ganspection_tf.synthetic_validation import copies_outputs, term_values  # noqa: E402
from ganspection_tf.terms import BY_NAME, CODE_OUTPUT, TERMS  # noqa: E402

NEIGHBOURS = (1, 5)


def nearest_code_distance(codes, reference, k):
    """Mean Euclidean distance of each code from its k nearest reference codes."""
    squared = (codes**2).sum(1)[:, None] - 2 * codes @ reference.T + (reference**2).sum(1)[None, :]
    nearest = np.sort(np.maximum(squared, 0.0), axis=1)[:, :k]
    return np.sqrt(nearest).mean(1)


def measures(reference_codes):
    """{row name: codes -> (N,) values}: the nearest-code measures, raw and whitened."""
    whitening = whitening_matrix(reference_codes)
    mean = reference_codes.mean(0)
    white_reference = (reference_codes - mean) @ whitening
    rows = {}
    for k in NEIGHBOURS:
        rows[f"nearest code, k={k}"] = lambda codes, k=k: nearest_code_distance(codes, reference_codes, k)
        rows[f"nearest whitened code, k={k}"] = lambda codes, k=k: nearest_code_distance(
            (codes - mean) @ whitening, white_reference, k)
    return rows


def probe(run_dir, with_test):
    """({row: validation AUROC}, {row: test AUROC} or None) of one run."""
    run = RunFolder(run_dir)
    term_model = scoring.build_term_model(run.load_model())
    validation, reference = scoring.calibration_outputs(run, term_model, log=lambda *_: None)
    defect_outputs, copies = copies_outputs(run, term_model)
    good, defective = term_values(validation, reference, (defect_outputs, copies.sources))
    rows = measures(reference[CODE_OUTPUT])
    product = "latent_mahalanobis (product)"
    on_validation = {product: auroc_of(good["latent_mahalanobis"], defective["latent_mahalanobis"])}
    on_validation |= {name: auroc_of(measure(validation[CODE_OUTPUT]), measure(defect_outputs[CODE_OUTPUT]))
                      for name, measure in rows.items()}
    if not with_test:
        return on_validation, None
    test = mvtec.scan_category(run.category_root).test
    _, size, _, channels = term_model.input_shape
    images, _ = pipeline.load_run_images(run, [t.path for t in test], size, channels, skip_unreadable=False)
    outputs = scoring.compute_terms(term_model, images)
    is_defect = np.array([t.label for t in test]) == 1
    parameters, _ = fitted_columns(validation, TERMS, reference)
    values = {product: BY_NAME["latent_mahalanobis"].compute(outputs, parameters)}
    values |= {name: measure(outputs[CODE_OUTPUT]) for name, measure in rows.items()}
    return on_validation, {name: auroc_of(v[~is_defect], v[is_defect]) for name, v in values.items()}


def table(title, columns):
    names = list(columns)
    print(f"| {title} | " + " | ".join(names) + " | mean |")
    print("|---|" + "---|" * (len(names) + 1))
    for row in next(iter(columns.values())):
        values = [columns[name][row] for name in names]
        print(f"| {row} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a trained run folder (repeat for several)")
    parser.add_argument("--test", action="store_true", help="also the test split's AUROC (diagnosis only)")
    args = parser.parse_args()
    results = {RunFolder(run).path.name: probe(run, args.test) for run in args.run}
    table("code measure (validation AUROC, synthetic defects)", {n: v for n, (v, _) in results.items()})
    if args.test:
        print()
        table("code measure (TEST image AUROC, diagnosis only)", {n: t for n, (_, t) in results.items()})


if __name__ == "__main__":
    main()
