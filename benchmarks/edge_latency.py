"""Edge latency: Keras fp32 batch-1 scoring vs the TFLite bundles (float32 / float16 / dynamic / int8).

    python benchmarks/edge_latency.py --run RUN_DIR [--data CATEGORY_DIR] [--threads 1,2]

For every variant: per-image p50 latency of the model alone (a preprocessed uint8 image in, terms out) and of
a whole frame (the decoded full-size image: resize, model, combination — what the camera pays), the model size,
and the image AUROC of the combined score on the test split of --data (default: the run's own category).
Keras runs the very scorer the bundles hold (the terms with a non-zero weight and the error map), batch 1, all
cores, and its size is that scorer's fp32 weights (before, it timed and sized every term, the critic included). Prints a markdown table, then the targets (int8 ≥ 4× faster
than Keras, ≤ 1/4 of its size, AUROC within 0.005). Bundles are exported with --force into a temporary folder
(their parity figures are printed), so a failed gate does not stop the benchmark.

Timings are wall-clock on a shared machine: compare variants from the same run of this script only.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ganspection_tf import convert, edge, export, scoring  # noqa: E402
from ganspection_tf.data import mvtec, pipeline  # noqa: E402
from ganspection_tf.images import read_image  # noqa: E402
from ganspection_tf.run import RunFolder  # noqa: E402

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
LABELS = {"none": "TFLite float32", "float16": "TFLite float16", "dynamic": "TFLite dynamic", "int8": "TFLite int8"}
WARMUP = 3


def main(argv=None):
    args = parse_args(argv)
    run = RunFolder(args.run, data_root=args.data)
    model = run.load_model()
    term_model = scoring.build_term_model(model)
    calibration = scoring.ensure_calibration(run, model, log=note, term_model=term_model)
    paths, labels = test_split(run.category_root)
    images, _ = pipeline.load_images(paths, model.image_size, model.channels, skip_unreadable=False,
                                     resize=run.resize)
    frames = [read_image(path) for path in paths]
    note(f"{len(paths)} test images of {run.category_root}, model {model.image_size} px")

    rows = [keras_row(term_model, calibration, images, labels)]
    with tempfile.TemporaryDirectory(prefix="edge-latency-") as folder:
        for quantize in args.quantize:
            bundle = Path(folder) / quantize
            export.export_bundle(args.run, bundle, quantize=quantize, score="combined", force=True, log=note)  # parity
            for threads in args.threads:
                rows.append(lite_row(bundle, quantize, threads, images, frames, labels))
    print(markdown_table(rows))
    print(targets(rows))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="Run folder (work on a copy of a live run).")
    parser.add_argument("--data", type=Path, default=None, help="MVTec category folder with a test split.")
    parser.add_argument("--threads", default="1,2", help="Comma-separated LiteRT thread counts.")
    parser.add_argument("--quantize", default=",".join(QUANTIZATIONS), help="Comma-separated variants.")
    args = parser.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.quantize = args.quantize.split(",")
    return args


def note(message):
    print(message, file=sys.stderr, flush=True)


def test_split(category_dir):
    category = mvtec.scan_category(category_dir)
    if not category.test:
        raise SystemExit(f"{category_dir}: no test split (test/good + test/<defect>); pass --data CATEGORY_DIR")
    return [t.path for t in category.test], np.array([t.label for t in category.test])


# ------------------------------------------------------------------------------------------------ timing


def keras_row(term_model, calibration, images, labels):
    """The same scorer the bundles hold (the terms that count + the error map), in Keras fp32, batch 1."""
    shipped = export.terms_that_count(calibration)
    scorer = convert.build_scorer(term_model, shipped.terms, with_error_map=True)
    predict = tf.function(lambda batch: scorer(batch, training=False))
    latencies, scores = [], []
    for i, image in enumerate(images):
        started = time.perf_counter()
        outputs = {name: value.numpy() for name, value in predict(tf.constant(image[np.newaxis])).items()}
        score = shipped.combine(shipped.term_matrix(outputs))[0]
        if i >= WARMUP or len(images) <= WARMUP:
            latencies.append((time.perf_counter() - started) * 1000)
        scores.append(score)
    return {"variant": "Keras fp32 (batch 1)", "threads": "all", "model_ms": float(np.median(latencies)),
            "frame_ms": None, "bytes": 4 * scorer.count_params(), "auroc": auroc(labels, scores)}


def lite_row(bundle, quantize, threads, images, frames, labels):
    scorer = edge.EdgeScorer(bundle, threads=threads)
    for image in images[:WARMUP]:
        scorer.run_model(image)
    model_ms = []
    for image in images:
        started = time.perf_counter()
        scorer.run_model(image)
        model_ms.append((time.perf_counter() - started) * 1000)
    results = [scorer.score(frame, color_order="rgb") for frame in frames]
    return {"variant": LABELS[quantize], "quantize": quantize, "threads": threads,
            "model_ms": float(np.median(model_ms)), "frame_ms": float(np.median([r.latency_ms for r in results])),
            "bytes": (bundle / edge.MODEL_FILE).stat().st_size, "auroc": auroc(labels, [r.score for r in results])}


def auroc(labels, scores):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


# ------------------------------------------------------------------------------------------------ report


def markdown_table(rows):
    keras = rows[0]
    header = ("| variant | threads | model p50 ms | frame p50 ms | speed-up vs Keras | size MB | size vs Keras | "
              "image AUROC |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        frame = "–" if row["frame_ms"] is None else f"{row['frame_ms']:.2f}"
        lines.append(
            f"| {row['variant']} | {row['threads']} | {row['model_ms']:.2f} | {frame} | "
            f"{keras['model_ms'] / row['model_ms']:.1f}× | {row['bytes'] / 1e6:.2f} | "
            f"{row['bytes'] / keras['bytes']:.2f} | {row['auroc']:.4f} |"
        )
    return "\n".join(lines)


def targets(rows):
    keras = rows[0]
    int8 = [row for row in rows[1:] if row.get("quantize") == "int8"]
    if not int8:
        return ""
    fastest = min(int8, key=lambda row: row["model_ms"])
    speed = keras["model_ms"] / fastest["model_ms"]
    size = int8[0]["bytes"] / keras["bytes"]
    drop = keras["auroc"] - int8[0]["auroc"]
    return "\n".join([
        "",
        f"int8 speed-up {speed:.1f}× (target ≥ 4×): {'met' if speed >= 4 else 'NOT met'}",
        f"int8 size {size:.2f} of Keras fp32 weights (target ≤ 0.25): {'met' if size <= 0.25 else 'NOT met'}",
        (f"int8 AUROC {int8[0]['auroc']:.4f} vs Keras {keras['auroc']:.4f}, drop {drop:+.4f} (target ≤ 0.005): "
         f"{'met' if drop <= 0.005 else 'NOT met'}"),
    ])


if __name__ == "__main__":
    main()
