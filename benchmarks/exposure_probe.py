"""Would matching each photo's exposure to the training images' help? An evaluation-only probe of a trained run.

    python benchmarks/exposure_probe.py --run RUN --data CATEGORY --copy-to FOLDER [--statistic mean|median]

Copies RUN to FOLDER (the run itself is not touched), drops the copy's calibration and score choice, and runs
``evaluate`` on the copy with every image the package decodes (training, validation, synthetic-defect and test
images alike) multiplied by one gain per image: the training images' average `statistic` of the grey levels
over the image's own, clipped to 0–255. So the calibration and the score choice are refitted on exposure-matched
validation images, and the model is the one trained without the gain. Prints the test image AUROC of the
chosen score and of every term, and the best validation AUROC on synthetic defects (what the product could see
without a test split), against the same figures of RUN as it was evaluated.

Not a product feature: a design aid (benchmarks/RESULTS.md, "Exposure"). It reads the TEST split.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ganspection_tf.data import mvtec, pipeline
from ganspection_tf.evaluate import evaluate_run
from ganspection_tf.run import RunFolder

STATISTICS = {"mean": np.mean, "median": np.median}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="An evaluated run folder.")
    parser.add_argument("--data", required=True, help="Its MVTec-layout category folder.")
    parser.add_argument("--copy-to", required=True, help="A new folder for the exposure-matched copy.")
    parser.add_argument("--statistic", choices=sorted(STATISTICS), default="mean")
    args = parser.parse_args(argv)
    copy = Path(args.copy_to)
    if copy.exists():
        sys.exit(f"{copy}: already exists; pass a new --copy-to folder")
    shutil.copytree(args.run, copy, ignore=shutil.ignore_patterns("checkpoints", "samples", "logs"))
    for name in ("calibration.json", "score_choice.json"):
        (copy / name).unlink(missing_ok=True)
    statistic = STATISTICS[args.statistic]
    reference = _training_reference(copy, args.data, statistic)
    decode = pipeline._decode_one

    def exposure_matched(path, size, channels, resize):
        image = decode(path, size, channels, resize).astype(np.float32)
        gain = reference / max(float(statistic(image)), 1.0)
        return np.clip(np.rint(image * gain), 0, 255).astype(np.uint8)

    pipeline._decode_one = exposure_matched  # every loader of the package decodes through it
    matched = evaluate_run(copy, args.data, log=lambda message: None)
    before = json.loads((Path(args.run) / "eval" / "metrics.json").read_text())
    print(f"{'':32s} {'as trained':>10s} {'exposure':>10s}")
    terms = sorted(k for k in matched["image"] if k != "combined" and not k.startswith("fusion"))
    for name in ["combined", *terms]:
        was, now = before["image"][name]["auroc"], matched["image"][name]["auroc"]
        print(f"{'image AUROC ' + name:32s} {was:10.3f} {now:10.3f}")
    for name in ("auroc", "au_pro"):
        print(f"{'pixel ' + name:32s} {before['pixel'][name]:10.3f} {matched['pixel'][name]:10.3f}")
    print(f"{'validation AUROC (best)':32s} {_best_validation(args.run):10.3f} {_best_validation(copy):10.3f}")


def _training_reference(run, data, statistic) -> float:
    config = RunFolder(run).read_config()
    model = config["train"]["model"]
    category = mvtec.scan_category(data, None)
    images, _ = pipeline.load_images(category.train, model["image_size"], model["channels"],
                                     resize=config["train"]["resize"])
    return float(np.mean([statistic(image) for image in images.astype(np.float32)]))


def _best_validation(run) -> float:
    return max(json.loads((Path(run) / "score_choice.json").read_text())["auroc"].values())


if __name__ == "__main__":
    main()
