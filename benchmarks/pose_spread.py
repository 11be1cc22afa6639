"""The pose spread (``ganspection_tf/data/choices.py``) of categories' TRAINING images, as `train` measures it.

    python benchmarks/pose_spread.py [--root ../shared/data/mvtec_ad] [--out FOLDER]

Rows: every category under --root (bottle, screw) and the package's three synthetic modes, written into --out
(default: a new temporary folder) with as many training images as the categories benchmark (200, 256 px) and
with 12 (64 px, the size of the test). Only training images are read: the threshold ``ALIGNED_BELOW`` that
tells aligned parts from parts at any pose was set from this table, and no test split.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from ganspection_tf.config import DEFAULT_RESIZE
from ganspection_tf.data import choices, mvtec, synthetic

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="pose-spread-"))
    folders = {p.name: p for p in sorted(args.root.iterdir()) if (p / "train" / "good").is_dir()} \
        if args.root.is_dir() else {}
    for mode in synthetic.MODES:
        for count, size in ((200, 256), (12, 64)):
            name = f"synthetic {mode}, {count} images"
            folders[name] = synthetic.write_synthetic_category(out, name=f"{mode}-{count}", image_size=size,
                                                               n_train=count, n_test_good=0, n_test_per_defect=0,
                                                               mode=mode, overwrite=True)
    print(f"| category (training images only) | pose spread ({choices.SAMPLE_SIZE} images at most, "
          f"{choices.POSE_SIDE} px gray) | aligned (< {choices.ALIGNED_BELOW}) |\n|---|---|---|")
    for name, folder in folders.items():
        spread = choices.TrainingImages(mvtec.scan_category(folder).train, DEFAULT_RESIZE).pose_spread
        print(f"| {name} | {spread:.3f} | {'yes' if spread < choices.ALIGNED_BELOW else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
