"""How the patch bank's size and the patches it is chosen from move the patch terms, on good images only.

    python benchmarks/patch_banks.py --run RUN_DIR [--run RUN_DIR ...] [--seeds 3]

For every trained run given and both patch terms (``patch_distance``: the critic's second stage;
``fine_patch_distance``: its first), banks are fitted as the calibration fits them (``terms.patch_bank`` on the
run's reference outputs: training images and their re-exposed copies) at every size in SIZES, from at most each
number of CANDIDATES patches, once per seed (the seed draws the candidates and the first pick). Printed per bank:
the AUROC of the good validation images against their synthetic-defect copies (the score chooser's copies), mean
and range over the seeds, and the share of the good validation photos re-exposed by 0.9 and by 1.1 that score
above the 95th percentile of the good ones (5 % when light does not matter). No test image is read.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ganspection_tf import exposure_tolerance, scoring, synthetic_validation, terms  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.score_choice import auroc_of  # noqa: E402

SIZES = (1024, 4096)
CANDIDATES = (50_000, 1_000_000)
OUTPUTS = {"patch_distance": terms.PATCH_OUTPUT, "fine_patch_distance": terms.FINE_PATCH_OUTPUT}
LIGHT_GAINS = (0.9, 1.1)


def run_outputs(run):
    """{split: {patch output: features}} for the reference, good validation, defect-copy and re-exposed images,
    and the gain of each re-exposed photo."""
    term_model = scoring.build_term_model(run.load_model())
    validation, reference = scoring.calibration_outputs(run, term_model)
    defective, _ = synthetic_validation.copies_outputs(run, term_model)
    relit, _ = synthetic_validation.relit_photo_outputs(run, term_model)
    gains = np.repeat(np.asarray(exposure_tolerance.GAINS), len(validation[terms.PATCH_OUTPUT]))
    splits = {"reference": reference, "good": validation, "defective": defective, "relit": relit}
    return {split: {output: outputs[output] for output in OUTPUTS.values()} for split, outputs in splits.items()}, gains


def bank_figures(outputs, gains, output, size, candidates, seed):
    """(validation AUROC, {gain: share of re-exposed good photos above the good ones' 95th percentile}, seconds)."""
    started = time.perf_counter()
    bank = terms.patch_bank(outputs["reference"][output], size=size, seed=seed, candidates=candidates)
    seconds = time.perf_counter() - started
    good, defective, relit = (terms.patch_distance(outputs[split][output], bank)
                              for split in ("good", "defective", "relit"))
    above = np.quantile(good, 0.95)
    light = {gain: float(np.mean(relit[gains == gain] > above)) for gain in LIGHT_GAINS}
    return auroc_of(good, defective), light, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="a trained run folder (repeat for several)")
    parser.add_argument("--seeds", type=int, default=3, help="banks fitted per size and number of candidates")
    args = parser.parse_args()
    print("| run | term | bank | candidates | validation AUROC, mean (range) | above q95 at ×0.9 / ×1.1 | fit |")
    print("|---|---|---|---|---|---|---|")
    for run in map(RunFolder, args.run):
        outputs, gains = run_outputs(run)
        for term, output in OUTPUTS.items():
            for size in SIZES:
                for candidates in CANDIDATES:
                    figures = [bank_figures(outputs, gains, output, size, candidates, seed) for seed in range(args.seeds)]
                    aurocs = [auroc for auroc, _, _ in figures]
                    light = " / ".join(f"{np.mean([shares[gain] for _, shares, _ in figures]):.0%}" for gain in LIGHT_GAINS)
                    print(f"| {run.path.name} | {term} | {size} | {candidates:,} | {np.mean(aurocs):.3f} "
                          f"({min(aurocs):.3f}–{max(aurocs):.3f}) | {light} | {np.mean([s for *_, s in figures]):.0f} s |",
                          flush=True)


if __name__ == "__main__":
    main()
