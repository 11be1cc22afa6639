"""Does the score chooser's pick hold on validation images it did not choose on? Good validation images only.

    python benchmarks/choice_holdout.py --run RUN_DIR [--run RUN_DIR ...] [--extra map_max+patch_distance,...]
                                        [--repeats 300]

For every trained run: the chooser's own data (``synthetic_validation``: every term on the good validation images
and on their synthetic-defect copies), then, --repeats times, the validation images split at random into two
halves (a copy goes with its source image): the chooser (``score_choice.choose_score``, the run's pose rule)
picks on one half, and its pick's AUROC is measured on the other. Printed per run, for the default candidates and
for the default candidates plus the --extra ones (equal weights on standardised terms): the pick on all images
with its AUROC, and the mean held-out AUROC of the picks made on halves (± its standard error). A candidate set
whose picks hold better on the other half chooses better for images it has not seen. No test image is read.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ganspection_tf import scoring  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.score_choice import Candidate, choose_score, default_candidates  # noqa: E402
from ganspection_tf.synthetic_validation import choice_inputs  # noqa: E402


def chooser_data(run_dir):
    """({term: good values}, {term: copies' values}, copies' source indices, aligned) of one run."""
    run = RunFolder(run_dir)
    term_model = scoring.build_term_model(run.load_model())
    validation, reference = scoring.calibration_outputs(run, term_model, log=lambda *_: None)
    good, defective, copies, aligned, _ = choice_inputs(run, term_model, validation, reference)
    return good, defective, np.asarray(copies.sources), aligned


def candidate_sets(terms, extra):
    defaults = default_candidates(terms)
    pairs = [Candidate(" + ".join(names), {name: 1.0 for name in names}) for names in extra
             if all(name in terms for name in names)]
    return {"default candidates": defaults, "+ " + ", ".join(c.name for c in pairs): defaults + pairs}


def held_out(candidates, good, defective, sources, aligned, repeats, seed=0):
    """Mean and standard error of the held-out AUROC of the chooser's picks on random halves."""
    rng = np.random.default_rng(seed)
    count = len(next(iter(good.values())))
    by_name = {c.name: c for c in candidates}
    values = []
    for _ in range(repeats):
        order = rng.permutation(count)
        halves = [(order[: count // 2], np.isin(sources, order[: count // 2])),
                  (order[count // 2:], np.isin(sources, order[count // 2:]))]
        (pick_good, pick_copies), (check_good, check_copies) = halves
        pick = choose_score(_rows(good, pick_good), _rows(defective, pick_copies), candidates, aligned=aligned)
        check = choose_score(_rows(good, check_good), _rows(defective, check_copies), [by_name[pick.name]])
        values.append(check.auroc[pick.name])
    return float(np.mean(values)), float(np.std(values) / np.sqrt(repeats))


def _rows(values, index):
    return {name: column[index] for name, column in values.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, help="A trained run folder (repeatable).")
    parser.add_argument("--extra", default="map_max+patch_distance,normalized_map_max+patch_distance",
                        help="Comma-separated candidates to add, terms joined by '+'.")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    extra = [tuple(name.strip() for name in item.split("+")) for item in args.extra.split(",") if item.strip()]
    print("| run | candidates | pick on all validation images (AUROC) | held-out AUROC of picks on halves |")
    print("|---|---|---|---|")
    for run_dir in args.run:
        good, defective, sources, aligned = chooser_data(run_dir)
        for label, candidates in candidate_sets(list(good), extra).items():
            full = choose_score(good, defective, candidates, aligned=aligned)
            mean, error = held_out(candidates, good, defective, sources, aligned, args.repeats)
            print(f"| {os.path.basename(os.path.normpath(run_dir))} | {label} | {full.name} "
                  f"({full.auroc[full.name]:.3f}) | {mean:.3f} ± {error:.3f} |", flush=True)


if __name__ == "__main__":
    main()
