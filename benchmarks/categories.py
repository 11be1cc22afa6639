"""Accuracy over categories with the defaults, against a learning-free template baseline: one Markdown table.

    python benchmarks/categories.py [--root ../shared/data/mvtec_ad] [--categories bottle,screw,...]
                                    [--minutes 30] [--image-size N] [--inspect-size N] [--out FOLDER]
                                    [--template-only] [--train-options "--gp-every 4 --critic-steps 2"]

Categories: every category folder under --root (default ``../shared/data/mvtec_ad`` next to the repository:
bottle and screw), plus two written by the package's synthetic generator into OUT/synthetic:
``synthetic_unaligned`` (a part at any position, rotation and scale) and ``synthetic_texture`` (a stochastic
surface, no object). For each category:

* the model: ``ganspection-tf train --data CATEGORY --out OUT/runs/CATEGORY --max-minutes M`` with every other
  option at its default (the defaults are the recipe), then ``ganspection-tf evaluate OUT/runs/CATEGORY``; the
  figures are read from the run's ``eval/metrics.json`` and ``status.json``. A run folder whose evaluation is
  already there is reused, not retrained (delete it to train again);
* the template baseline, scored here and not a product score: the mean good TRAINING image (decoded and
  resized like the model's input; ``ganspection_tf/template.py``, the same template the evaluation report
  draws next to the model's reconstructions) is every image's "reconstruction"; the default score
  ``normalized_map_max`` is computed on that error map with the per-pixel statistics of the training images,
  calibrated on the same validation split ``train`` holds out, and evaluated with the same metrics as
  ``evaluate``. It shows what a per-pixel comparison with the average good part achieves without learning.

Printed: image AUROC, pixel AUROC, AU-PRO, F1 at the calibrated threshold, training steps and minutes per row,
each model row's gain in image AUROC over its template row, and the means. --template-only prints the template
rows alone (seconds per category, no training). The table also goes to OUT/categories.md with the command.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from ganspection_tf import artifacts  # noqa: E402
from ganspection_tf.calibration import fit_calibration_from_outputs  # noqa: E402
from ganspection_tf.data import choices, mvtec, pipeline, synthetic  # noqa: E402
from ganspection_tf.evaluate import (  # noqa: E402
    PIXEL_EVAL_SIZE,
    image_metrics,
    pixel_metrics,
    read_mask,
    threshold_metrics,
)
from ganspection_tf.exposure_tolerance import worst_share  # noqa: E402
from ganspection_tf.heatmaps import anomaly_map  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402
from ganspection_tf.template import error_maps as template_error_maps  # noqa: E402
from ganspection_tf.template import mean_good_image  # noqa: E402
from ganspection_tf.training import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "mvtec_ad"
# The synthetic categories: written at 256 px with about as many images as an MVTec category.
SYNTHETIC = {"synthetic_unaligned": "unaligned", "synthetic_texture": "texture"}
SYNTHETIC_SIZES = dict(image_size=256, n_train=200, n_test_good=40, n_test_per_defect=20)
TEMPLATE_SCORE = "normalized_map_max"


def main(argv=None):
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="categories-"))
    categories = find_categories(args.root, args.categories, out / "synthetic")
    rows = []
    for name, folder in categories.items():
        print(f"--- {name}: {folder}", file=sys.stderr, flush=True)
        template = template_row(folder, args.image_size, args.inspect_size)
        rows.append({"category": name, "score": "template", **template})
        if not args.template_only:
            model = model_row(folder, out / "runs" / name, args.minutes, args.image_size, args.inspect_size,
                              shlex.split(args.train_options))
            rows.append({"category": name, "score": "model", **model,
                         "gain": model["image_auroc"] - template["image_auroc"]})
    table = markdown_table(rows)
    command = " ".join(["python", "benchmarks/categories.py", *(sys.argv[1:] if argv is None else argv)])
    print(table)
    artifacts.write_text(out / "categories.md", f"    {command}\n\n{table}\n")
    artifacts.write_json(out / "categories.json", {"command": command, "rows": rows})
    print(f"\nwritten to {out / 'categories.md'}", file=sys.stderr)
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Folder of MVTec-layout categories.")
    parser.add_argument("--categories", default=None,
                        help="Comma-separated names (under --root, or synthetic_unaligned / synthetic_texture); "
                             "default: every category under --root and both synthetic ones.")
    parser.add_argument("--minutes", type=float, default=30.0, help="Training wall-clock budget per category.")
    parser.add_argument("--image-size", type=int, default=None,
                        help="Passed to train (and the template); default: train's own default.")
    parser.add_argument("--inspect-size", type=int, default=None,
                        help="Passed to train (and the template: compared at that size); default: train's own "
                             "default. To measure a candidate default, not a recipe of its own.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Folder for the synthetic data, the runs and the table (default: a new temporary one).")
    parser.add_argument("--template-only", action="store_true", help="Only the template rows: no training.")
    parser.add_argument("--train-options", default="",
                        help="More train options for the model rows, e.g. '--gp-every 4': to measure a candidate "
                             "default (use a new --out per setting: evaluated runs are reused).")
    return parser.parse_args(argv)


def find_categories(root, names, synthetic_folder) -> dict[str, Path]:
    """{name: category folder}: the requested (or all) categories under `root`, then the synthetic ones."""
    if not Path(root).is_dir() and not names:
        print(f"warning: {root} is not a folder: only the synthetic categories (pass --root)", file=sys.stderr)
    available = sorted(p.name for p in Path(root).iterdir() if (p / "train" / "good").is_dir()) if Path(root).is_dir() else []
    wanted = names.split(",") if names else [*available, *SYNTHETIC]
    unknown = [n for n in wanted if n not in available and n not in SYNTHETIC]
    if unknown:
        sys.exit(f"error: unknown categories {unknown}: not under {root} and not one of {list(SYNTHETIC)}")
    found = {}
    for name in wanted:
        if name in SYNTHETIC:
            found[name] = synthetic_category(synthetic_folder, name)
        else:
            found[name] = Path(root) / name
    return found


def synthetic_category(folder, name) -> Path:
    """The synthetic category `name` under `folder`: written once, reused when it is already there."""
    category = Path(folder) / name
    if not (category / "test").is_dir():
        print(f"writing {category} ({SYNTHETIC[name]} mode) …", file=sys.stderr, flush=True)
        synthetic.write_synthetic_category(folder, name=name, mode=SYNTHETIC[name], overwrite=True,
                                           **SYNTHETIC_SIZES)
    return category


# --- the template baseline ----------------------------------------------------------------------------------


def template_row(folder, image_size=None, inspect_size=None) -> dict:
    """Template-baseline metrics of one category (module docstring), like `evaluate` reports them: the split,
    channels, inspected size (unless given) and resize mode that `train` without options would use."""
    started = time.monotonic()
    category = mvtec.scan_category(folder)
    config = TrainConfig.from_flat(data=str(folder), image_size=image_size, inspect_size=inspect_size)
    train_paths, validation_paths = mvtec.split_validation(category.train, config.val_fraction, config.model.seed)
    config, _ = choices.choose(config, train_paths)
    size, channels, resize = config.model.inspected_size, config.model.channels, config.resize
    training, _ = pipeline.load_images(train_paths, size, channels, resize=resize)
    template = mean_good_image(training)
    validation, _ = pipeline.load_images(validation_paths, size, channels, resize=resize)
    calibration = fit_calibration_from_outputs(
        {"error_map": template_error_maps(validation, template)}, [TEMPLATE_SCORE],
        reference_outputs={"error_map": template_error_maps(training, template)}, weights=[1.0],
    )
    test_images, _ = pipeline.load_images([t.path for t in category.test], size, channels, skip_unreadable=False,
                                          resize=resize)
    test_maps = template_error_maps(test_images, template)
    scores = calibration.combine(calibration.term_matrix({"error_map": test_maps}))
    labels = np.array([t.label for t in category.test])
    defects = [t.defect for t in category.test]
    pixel_maps = np.stack([anomaly_map(m, (PIXEL_EVAL_SIZE, PIXEL_EVAL_SIZE)) for m in test_maps])
    masks = np.stack([read_mask(t.mask, PIXEL_EVAL_SIZE, resize) if t.mask else np.zeros((PIXEL_EVAL_SIZE,) * 2, bool)
                      for t in category.test])
    image = image_metrics(labels, defects, {TEMPLATE_SCORE: scores})[TEMPLATE_SCORE]
    pixel = pixel_metrics(masks, pixel_maps)
    return {
        "image_auroc": image["auroc"],
        "pixel_auroc": pixel["auroc"] if pixel else None,
        "au_pro": pixel["au_pro"] if pixel else None,
        "f1": threshold_metrics(labels, scores, calibration.threshold)["f1"],
        "steps": None,  # no training
        "minutes": None,
        "seconds_to_compute": round(time.monotonic() - started, 1),
        "image_size": config.model.image_size,
        "inspect_size": size,
    }


# --- the model --------------------------------------------------------------------------------------------


def model_row(folder, run_dir, minutes, image_size, inspect_size=None, train_options=()) -> dict:
    """Train with the defaults under the wall-clock budget (unless already evaluated), evaluate, read the files."""
    metrics_path = run_dir / "eval" / "metrics.json"
    if metrics_path.is_file():
        print(f"{run_dir}: already evaluated; reusing it (delete the folder to train again)", file=sys.stderr)
    else:
        train = ["train", "--data", str(folder), "--out", str(run_dir), "--max-minutes", f"{minutes:g}"]
        if image_size:
            train += ["--image-size", str(image_size)]
        if inspect_size:
            train += ["--inspect-size", str(inspect_size)]
        train += list(train_options)
        if RunFolder(run_dir).read_status() is None:
            ganspection_tf(*train)
        ganspection_tf("evaluate", str(run_dir))
    metrics = json.loads(metrics_path.read_text())
    status = RunFolder(run_dir).read_status()
    pixel = metrics.get("pixel") or {}
    lighting = metrics.get("exposure_tolerance")  # absent where evaluated before the lighting line existed
    return {
        "image_auroc": metrics["image_auroc"],
        "pixel_auroc": pixel.get("auroc"),
        "au_pro": pixel.get("au_pro"),
        "f1": metrics["threshold"]["f1"],
        "flagged_5": worst_share(lighting) if lighting else None,
        "steps": metrics["model_step"],
        "minutes": status.get("seconds", float("nan")) / 60,
        "image_size": RunFolder(run_dir).read_train_config().model.image_size,
        "inspect_size": RunFolder(run_dir).read_train_config().model.inspected_size,
        "run": str(run_dir),
    }


def ganspection_tf(*args):
    """Runs the CLI of the package this script imports (the checkout, not necessarily an installed copy)."""
    command = [sys.executable, "-m", "ganspection_tf.cli", *args]
    print("$ ganspection-tf " + " ".join(args), file=sys.stderr, flush=True)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, env=environment)
    if result.returncode:
        sys.exit(f"error: 'ganspection-tf {' '.join(args)}' failed with exit status {result.returncode}")


# --- the table ----------------------------------------------------------------------------------------------

COLUMNS = ("category", "score", "image AUROC", "pixel AUROC", "AU-PRO", "F1 @ threshold",
           "good flagged at ±5 % light", "steps", "minutes", "gain (image AUROC)")


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [_cells(row) for row in rows]
    for score in ("template", "model"):
        chosen = [row for row in rows if row["score"] == score]
        if len(chosen) > 1:
            mean = {key: _mean([row.get(key) for row in chosen])
                    for key in ("image_auroc", "pixel_auroc", "au_pro", "f1", "flagged_5", "steps", "minutes", "gain")}
            lines.append(_cells({"category": f"**mean of {len(chosen)}**", "score": score, **mean}))
    return "\n".join(lines)


def _cells(row) -> str:
    gain = row.get("gain")
    values = [
        row["category"], row["score"], _figure(row.get("image_auroc")), _figure(row.get("pixel_auroc")),
        _figure(row.get("au_pro")), _figure(row.get("f1")),
        f"{row['flagged_5']:.0%}" if row.get("flagged_5") is not None else "–",
        f"{row['steps']:.0f}" if row.get("steps") is not None else "–",
        f"{row['minutes']:.1f}" if row.get("minutes") is not None else "–",
        f"{gain:+.3f}" if gain is not None else "–",
    ]
    return "| " + " | ".join(values) + " |"


def _figure(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _mean(values):
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


if __name__ == "__main__":
    sys.exit(main())
