"""How long deleting the training data iterator takes, with tf.data's autotuning on and off.

    python benchmarks/iterator_deletion.py [--seconds 70] [--runs 4]

Each run is a process pair started together (autotuning on, and off as `pipeline.make_train_dataset` now
builds it): it reads batches of 170 random 32 px images at a training step's pace (one every 0.2 s) for
--seconds, then times `del iterator`. Prints one row per process ("The pause at the end of training" in
benchmarks/RESULTS.md).
"""

import argparse
import subprocess
import sys
import time

import numpy as np


def child(autotune, seconds):
    import tensorflow as tf

    from ganspection_tf.data import pipeline

    images = np.random.default_rng(0).integers(0, 256, (170, 32, 32, 3), dtype=np.uint8)
    dataset = pipeline.make_train_dataset(images, 16)
    options = tf.data.Options()
    options.autotune.enabled = autotune
    iterator = iter(dataset.with_options(options))
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        next(iterator)
        time.sleep(0.2)
    deleting = time.monotonic()
    del iterator
    print(f"| {'on' if autotune else 'off'} | {seconds:g} | {time.monotonic() - deleting:.2f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=70.0)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child == "on", args.seconds)
        return 0
    print("| autotuning | seconds read | deletion s |\n|---|---|---|", flush=True)
    for _ in range(args.runs):
        pair = [subprocess.Popen([sys.executable, __file__, "--child", mode, "--seconds", str(args.seconds)],
                                 stderr=subprocess.DEVNULL) for mode in ("on", "off")]
        for process in pair:
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
