"""Image AUROC of variants of the map-based scores on a trained run: the ablation behind normalized_map_max.

    python benchmarks/score_variants.py --run RUN_DIR [--data CATEGORY_DIR]

Computes the error maps of the run's training, validation and test images once (EMA networks), then scores the
test split with: map_max at two smoothings; normalized_map_max (per-pixel mean and spread of the training
maps) with the spread floored at 0 / ¼ / ½ / 1 × its mean over the map; the mean alone (no division); the
Gaussian fitted on the validation maps instead; each of those averaged over
the 8 flips / quarter turns of the image (test-time augmentation). Prints one markdown row per variant with
the AUROC overall and per defect type. This reads the TEST split to compare variants: use it to understand the
score, not to choose its settings for a new category.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from ganspection_tf import scoring  # noqa: E402
from ganspection_tf.data import mvtec, pipeline  # noqa: E402
from ganspection_tf.heatmaps import map_sigma, smooth_error_maps  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402

FLOORS = (0.0, 0.25, 0.5, 1.0)
DIHEDRAL = 8  # 4 quarter turns × (no flip, horizontal flip)


def main(argv=None):
    args = parse_args(argv)
    run = RunFolder(args.run, data_root=args.data)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    category = mvtec.scan_category(run.category_root)
    paths = {"train": run.training_images(), "validation": run.validation_images(),
             "test": [t.path for t in category.test]}
    maps = {name: error_maps(term_model, found, model.inspected_size, model.channels, run.resize)
            for name, found in paths.items()}
    labels = np.array([t.label for t in category.test])
    defects = [t.defect for t in category.test]
    print(f"run {args.run} (step {scoring.model_step(model)}), {len(labels)} test images\n")
    print("| variant | image AUROC | " + " | ".join(sorted(set(defects) - {mvtec.GOOD})) + " |")
    print("|---|---|" + "---|" * len(set(defects) - {mvtec.GOOD}))
    for name, test_scores in variants(maps):
        print(row(name, test_scores, labels, defects))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="MVTec category folder (default: the run's own)")
    return parser.parse_args(argv)


def error_maps(term_model, paths, size, channels, resize):
    """(8, N, S, S): the error map of every dihedral view of every image, turned back to the image's frame."""
    images, _ = pipeline.load_images(paths, size, channels, resize=resize)
    views = []
    for view in range(DIHEDRAL):
        turned = np.ascontiguousarray(dihedral(images, view))
        views.append(undo_dihedral(scoring.compute_terms(term_model, turned)["error_map"], view))
    return np.stack(views)


def dihedral(batch, view):
    turned = np.rot90(batch, view % 4, axes=(1, 2))
    return turned[:, :, ::-1] if view >= 4 else turned


def undo_dihedral(batch, view):
    unflipped = batch[:, :, ::-1] if view >= 4 else batch
    return np.rot90(unflipped, -(view % 4), axes=(1, 2))


def variants(maps):
    side = maps["test"].shape[-1]
    for views, suffix in ((1, ""), (DIHEDRAL, ", 8-view average")):
        smoothed = {name: smooth_error_maps(m[:views].mean(axis=0)).astype(np.float64) for name, m in maps.items()}
        for sigma in (map_sigma(side), 1.5 * map_sigma(side)):
            yield f"map_max, σ {sigma:g} px{suffix}", smooth_error_maps(maps["test"][:views].mean(axis=0),
                                                                         sigma).max(axis=(1, 2))
        mean, spread = smoothed["train"].mean(axis=0), smoothed["train"].std(axis=0, ddof=1)
        for floor in FLOORS:
            floored = np.maximum(spread, max(floor * spread.mean(), 1e-8))
            yield (f"normalized_map_max, training maps, floor {floor:g} × mean spread{suffix}",
                   ((smoothed["test"] - mean) / floored).max(axis=(1, 2)))
        yield f"training-map mean subtracted, no division{suffix}", (smoothed["test"] - mean).max(axis=(1, 2))
        validation = smoothed["validation"]
        spread_v = validation.std(axis=0, ddof=1)
        floored_v = np.maximum(spread_v, 0.5 * spread_v.mean())
        yield (f"normalized_map_max, validation maps, floor 0.5{suffix}",
               ((smoothed["test"] - validation.mean(axis=0)) / floored_v).max(axis=(1, 2)))


def row(name, scores, labels, defects):
    cells = [f"{roc_auc_score(labels, scores):.3f}"]
    for defect in sorted(set(defects) - {mvtec.GOOD}):
        keep = np.array([d in (defect, mvtec.GOOD) for d in defects])
        cells.append(f"{roc_auc_score(labels[keep], scores[keep]):.3f}")
    return f"| {name} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
