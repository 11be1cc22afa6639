"""Model latency of several edge bundles, measured in turns, so that they share the machine's ups and downs.

    python benchmarks/bundle_latency.py BUNDLE [BUNDLE ...] [--rounds 15] [--runs 50]

On a shared or frequency-scaling machine, bundles timed one after the other (as ``edge_latency.py`` does) can
differ by 2× for nothing but the moment. Here every round times each bundle in turn (``latency.model_latency_ms``:
one LiteRT thread, batch 1, median of --runs invocations), and the table gives, per bundle, the median over the
rounds, its interquartile range, and its speed-up over the first bundle within each round (median of the
rounds' ratios). Model only: no decoding or resizing. Bundles of different code versions compare fairly.
"""

import argparse
from pathlib import Path

import numpy as np

from ganspection_tf import edge
from ganspection_tf.latency import model_latency_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders; the first is the reference")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=50, help="invocations per bundle and round")
    args = parser.parse_args()
    models = [(bundle / edge.MODEL_FILE).read_bytes() for bundle in args.bundles]
    times = np.array([[model_latency_ms(model, runs=args.runs) for model in models] for _ in range(args.rounds)])
    print(f"| bundle | size MB | model p50 ms (median of {args.rounds} rounds) | interquartile range | "
          f"speed-up over {args.bundles[0].name} |")
    print("|---|---|---|---|---|")
    for index, (bundle, model) in enumerate(zip(args.bundles, models)):
        low, high = np.percentile(times[:, index], [25, 75])
        ratio = np.median(times[:, 0] / times[:, index])
        print(f"| {bundle.name} | {len(model) / 1e6:.2f} | {np.median(times[:, index]):.2f} | {low:.2f}–{high:.2f} | "
              f"{ratio:.2f}× |")


if __name__ == "__main__":
    main()
