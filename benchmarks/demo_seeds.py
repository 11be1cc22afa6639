"""The demo's recipe (``ganspection_tf/demo.py``) measured on synthetic seeds other than the demo's own.

    python benchmarks/demo_seeds.py [--seeds 1,2,3] [--variant NAME='{"setting": value, ...}' ...] [--out FOLDER]

The demo's own test split (seed 0) is what a newcomer sees, so no setting of the demo may be chosen from it; this
script trains the recipe (and each --variant: TrainConfig settings by their flat names, or "train_images") on
categories drawn the same way with other seeds, and prints per-seed test image AUROC, the mean, and the training
seconds. Each run takes about as long as the demo's training (about 2 minutes on 2 cores); run nothing else
meanwhile.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ganspection_tf import demo
from ganspection_tf.evaluate import evaluate_run
from ganspection_tf.training import train


def parse_variant(text):
    name, _, settings = text.partition("=")
    try:
        return name, json.loads(settings or "{}")
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: the settings after '=' must be a JSON object "
                                         f"({error})") from None


def run_once(out, seed, settings):
    settings = dict(settings)
    data = demo.write_category(out / "data", seed=seed, train_images=settings.pop("train_images", None))
    started = time.perf_counter()
    run = train(demo.config(data, **settings), out / "run", verbose=0, overwrite=True, log=lambda *_: None)
    seconds = time.perf_counter() - started
    metrics = evaluate_run(run, log=lambda *_: None)
    chosen = (metrics["score_choice"] or {}).get("name", "?")
    return {"auroc": metrics["image_auroc"], "seconds": seconds, "chosen": chosen}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", type=lambda text: [int(s) for s in text.split(",")])
    parser.add_argument("--variant", action="append", type=parse_variant, default=[])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if demo.SEED in args.seeds:
        parser.error(f"seed {demo.SEED} is the demo's own category: its test split may not choose the recipe")
    out = args.out or Path(tempfile.mkdtemp(prefix="demo-seeds-"))
    variants = [("recipe", {})] + args.variant
    seeds = " | ".join(f"seed {seed}" for seed in args.seeds)
    print(f"| variant | {seeds} | mean image AUROC | mean training s | chosen scores |")
    print("|---" * (len(args.seeds) + 4) + "|")
    for name, settings in variants:
        rows = [run_once(out / f"{name}-{seed}", seed, settings) for seed in args.seeds]
        aurocs = " | ".join(f"{row['auroc']:.3f}" for row in rows)
        print(f"| {name} {json.dumps(settings) if settings else ''} | {aurocs} | "
              f"{np.mean([row['auroc'] for row in rows]):.3f} | {np.mean([row['seconds'] for row in rows]):.0f} | "
              f"{', '.join(sorted({row['chosen'] for row in rows}))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
